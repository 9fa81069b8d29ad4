#!/usr/bin/env bash
# Mutation testing (mutmut 2) of the modules whose failures are silent: a mutant that the
# tests let pass is a bug the suite would not see. See docs/testing.md.
#
#   bash scripts/mutation.sh MODULE [PYTEST ARGS...]
#
# MODULE is hierarchy, distributed, checkpoint, train-resume (the resume path of
# saezoo/trainer.py) or evaluate; without PYTEST ARGS each runs the tests that exercise it
# (the table below). The run works on a copy of the working tree (MUTATION_SOURCE, default
# this checkout) under MUTATION_WORKDIR, so the checkout itself is never mutated and stays
# usable meanwhile. It prints mutmut's counts and the diff of every surviving mutant.
set -euo pipefail

module=${1:?usage: scripts/mutation.sh hierarchy|distributed|checkpoint|train-resume|evaluate [PYTEST ARGS...]}
shift
if ! command -v mutmut >/dev/null; then
  echo "scripts/mutation.sh: mutmut is not installed; run: python3 -m pip install mutmut==2.5.1" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
rev=${MUTATION_REV:-}
workdir=${MUTATION_WORKDIR:-${TMPDIR:-/tmp}/saezoo-mutation}

# Fast in-process tests first: with -x the first failure ends a mutant's run.
case "$module" in
  hierarchy)    file=saezoo/hierarchy.py
                tests=(tests/test_hierarchy.py) ;;
  distributed)  file=saezoo/distributed.py
                tests=(tests/test_distributed.py::test_single_process_is_a_no_op
                       tests/test_distributed.py::test_ranks_train_on_disjoint_shards_with_averaged_gradients
                       tests/test_distributed.py::test_two_processes_match_one) ;;
  checkpoint)   file=saezoo/checkpoint.py
                tests=(tests/test_contract.py::test_save_load_round_trip tests/test_checkpoint_atomic.py
                       tests/test_resume.py::test_resume_continues_from_the_checkpointed_step
                       tests/test_resume.py::test_sigterm_saves_and_says_how_to_resume)
                for row in corrupt-weights truncated-weights bad-checkpoint-version bad-cfg-field shape-mismatch \
                           resume-without-state missing-run out-has-run disk-full; do
                  tests+=("tests/test_errors.py::test_error_row[$row]")
                done ;;
  train-resume) file=saezoo/trainer.py
                tests=(tests/test_resume.py::test_resume_continues_from_the_checkpointed_step
                       tests/test_resume.py::test_sigterm_saves_and_says_how_to_resume) ;;
  evaluate)     file=saezoo/evaluation.py
                tests=(tests/test_metrics.py tests/test_properties.py tests/test_hierarchy.py) ;;
  *) echo "scripts/mutation.sh: unknown module '$module'" >&2; exit 2 ;;
esac
if [ $# -gt 0 ]; then tests=("$@"); fi

copy=$workdir/$module
rm -rf "$copy"
mkdir -p "$copy"
if [ -n "$rev" ]; then
  git -C "$repo" archive "$rev" | tar -xf - -C "$copy"
  what="$rev ($(git -C "$repo" rev-parse --short "$rev"))"
else
  # Tracked and untracked-but-not-ignored files: what `git status` would commit.
  (cd "$repo" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$copy"
  what="the working tree at $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD || echo ' with uncommitted changes')"
fi
cd "$copy"
# Drop tests the copied tree lacks (an older commit's suite may not have every test).
present=()
for t in "${tests[@]}"; do
  path=${t%%::*} name=${t#*::}
  name=${name%%[*}
  if [ ! -e "$path" ]; then continue; fi
  if [ "$name" != "$t" ] && ! grep -q "def $name(" "$path"; then continue; fi
  present+=("$t")
done
export PYTHONPATH=$copy:$copy/plugins

extra=()
if [ "$module" = train-resume ]; then
  # Only the resume path: Trainee.resume, Trainee.save_checkpoint (what resume reads) and
  # the lines of train_many that pick the start step and the data position.
  python3 - "$file" > resume.patch <<'EOF'
import ast, sys
path = sys.argv[1]
lines = open(path).read().splitlines()
tree = ast.parse("\n".join(lines))
chosen = set()
for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and node.name in ("resume", "save_checkpoint"):
        chosen.update(range(node.lineno, node.end_lineno + 1))
    if isinstance(node, ast.FunctionDef) and node.name == "train_many":
        for i in range(node.lineno, node.end_lineno + 1):
            text = lines[i - 1]
            if "resume" in text or "start=start" in text or "start = " in text or "t.step == step" in text:
                chosen.add(i)
# A diff from a file without the chosen lines to the file: mutmut mutates the "added" ones.
print(f"--- a/{path}\n+++ b/{path}")
for i in sorted(chosen):
    print(f"@@ -{i - 1},0 +{i},1 @@\n+{lines[i - 1]}")
EOF
  extra=(--use-patch-file resume.patch)
fi

# The runner forks a process that has imported torch already (scripts/pytest_fork_server.py).
sock=$copy/.pytest-fork.sock
python3 "$repo/scripts/pytest_fork_server.py" serve "$sock" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
while [ ! -S "$sock" ]; do sleep 0.5; done
runner="python3 $repo/scripts/pytest_fork_server.py run $sock -x -q -n 0 -p no:cacheprovider ${present[*]@Q}"
echo "mutating $file of $what"
echo "tests: $runner"
start=$(date +%s)
# -m/-b: a mutant's tests time out after 3x the clean run + 60 s (the CPU is shared).
options=(--paths-to-mutate "$file" --tests-dir tests --runner "$runner" --no-progress --simple-output -m 3 -b 60 "${extra[@]}")
if [ -z "${MUTATION_SAMPLE:-}" ]; then
  mutmut run "${options[@]}" || true
else
  # A random sample of MUTATION_SAMPLE mutants (seed MUTATION_SEED, default 0): the same
  # source gives the same sample, so runs before and after a test change are paired.
  python3 - "$file" "$MUTATION_SAMPLE" "${MUTATION_SEED:-0}" "${extra[1]:-}" <<'PY'
import random, sqlite3, sys
from types import SimpleNamespace
from mutmut import add_mutations_by_file, mutations_by_type, read_patch_data
from mutmut.cache import update_line_numbers
file, n, seed, patch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
update_line_numbers(file)
config = SimpleNamespace(covered_lines_by_filename=read_patch_data(patch) if patch else None, coverage_data=None,
                         mutation_types_to_apply=set(mutations_by_type))
add_mutations_by_file({}, file, [], config)
ids = [row[0] for row in sqlite3.connect(".mutmut-cache").execute("select id from Mutant order by id")]
with open("sample.txt", "w") as f:
    f.write(" ".join(map(str, sorted(random.Random(seed).sample(ids, min(n, len(ids)))))))
PY
  echo "sample of $(wc -w < sample.txt) of $(sqlite3 .mutmut-cache 'select count(*) from Mutant') mutants: $(cat sample.txt)"
  for id in $(cat sample.txt); do mutmut run "${options[@]}" "$id" >> mutmut.log 2>&1 || true; done
fi
echo "wall: $(( $(date +%s) - start )) s"
mutmut results || true
for status in killed timeout suspicious survived skipped untested; do
  ids=$(mutmut result-ids "$status" 2>/dev/null || true)
  echo "$status: $(echo $ids | wc -w)"
done
for id in $(mutmut result-ids survived 2>/dev/null || true); do
  echo "--- survivor $id"
  mutmut show "$id"
done
