"""Every row of docs/errors.md, through the real CLI in a subprocess: exit 2, one line on
stderr naming the problem, no traceback, no temporary file left behind."""

from __future__ import annotations

import json
import re
import resource
import signal
import textwrap
from pathlib import Path

import pytest

from activations_helpers import corpus, make_model, write_jsonl
from helpers import FAST_SETS, assert_one_line_error, fast_train_args, run_cli

ROOT = Path(__file__).resolve().parents[1]
SYN = ["--source", "synthetic", "--steps", "5", "-q", *[a for s in FAST_SETS for a in ("--set", s)]]

PLUGINS = {
    "broken": """
        from saezoo import hookimpl

        @hookimpl
        def register_architectures(register):
            raise RuntimeError("boom")
    """,
    "misnamed": """
        from saezoo import hookimpl

        @hookimpl
        def register_architectures(registrar):
            pass
    """,
    "dup": """
        from saezoo import hookimpl
        from saezoo_flat.sae import FlatSAE

        @hookimpl
        def register_architectures(register):
            register("flat", FlatSAE)
    """,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny local model, a corpus file, a trained synthetic run and plugin folders."""
    root = tmp_path_factory.mktemp("errors")
    model = make_model(root / "model", "llama", layers=2)
    data = write_jsonl(root / "corpus.jsonl", corpus(60))
    # A vocabulary of numbers: its only word token is the helpers' outlier word.
    numbers = [" ".join(str((i * 7 + j) % 50) for j in range(40)) for i in range(60)]
    make_model(root / "numbers", "llama", layers=2, docs=numbers)
    write_jsonl(root / "numbers.jsonl", numbers)
    run = root / "run"
    proc = run_cli(*fast_train_args("flat", run, 5))
    assert proc.returncode == 0, proc.stderr
    for name, source in PLUGINS.items():
        (root / f"plugins-{name}").mkdir()
        (root / f"plugins-{name}" / f"{name}.py").write_text(textwrap.dedent(source))
    (root / "bad.toml").write_text("[train\nlr = 1\n")
    return {"root": root, "model": str(model), "data": str(data), "run": run}


def copy_run(env, name: str) -> Path:
    import shutil

    target = env["root"] / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(env["run"], target)
    return target


def edit_cfg(run: Path, change) -> None:
    cfg = json.loads((run / "cfg.json").read_text())
    change(cfg)
    (run / "cfg.json").write_text(json.dumps(cfg))


def case(env, row: str):
    """(argv, extra environment, expected fragments) of one row."""
    r, m, d = env["root"], env["model"], env["data"]
    model = ["--model", m, "--dataset", d, "--steps", "2", "-q", "--set", "train.batch_size=64", "--set", "train.eval_tokens=64"]
    if row == "unknown-architecture":
        return ["train", "flta", *SYN], {}, ["unknown architecture 'flta'", "did you mean 'flat'"]
    if row == "unknown-preset":
        return ["train", "hsae", "--preset", "papr", *SYN], {}, ["unknown preset", "'paper'"]
    if row == "unknown-curriculum":
        return ["train", "flat", "--curriculum", "warmup", *SYN], {}, ["unknown curriculum 'warmup'", "available:"]
    if row == "incompatible-curriculum":
        return ["train", "flat", "--curriculum", "k-anneal", *SYN, "--out", str(r / "ic")], {}, ["'k-anneal'", "'flat' does not accept"]
    if row == "unknown-model":
        return ["train", "flat", "--model", str(r / "no-such-model"), "--dataset", d, "--out", str(r / "um"), "-q"], {}, ["no-such-model"]
    if row == "unknown-hook":
        return ["train", "flat", *model, "--hook", "model.layers.99", "--out", str(r / "uh")], {}, ["model.layers.99", "model.layers.1"]
    if row == "absorption-no-words":
        numbers = ["--model", str(r / "numbers"), "--dataset", str(r / "numbers.jsonl"), *model[4:]]
        return ["train", "flat", *numbers, "--out", str(r / "nw")], {}, ["first-letter absorption", "1 word token", "train.absorption_words=0"]
    if row == "unknown-dataset":
        return ["train", "flat", *model[:2], "--dataset", str(r / "no-such.txt"), "--out", str(r / "ud"), "-q"], {}, ["no-such.txt"]
    if row == "missing-asset":
        return ["train", "flat", *model[:2], "--dataset", "austen", "--out", str(r / "ma"), "-q"], {"SAEZOO_CACHE": str(r / "empty-cache")}, ["scripts/fetch_assets.sh"]
    if row == "unknown-set-key":
        return ["train", "flat", *SYN, "--set", "l1_coef=2"], {}, ["unknown setting 'sae.l1_coef'", "did you mean sae.l1_coefficient"]
    if row == "bad-set-value":
        return ["train", "flat", *SYN, "--set", "train.steps=many"], {}, ["train.steps: 'many' is not an integer"]
    if row == "bad-set-syntax":
        return ["train", "flat", *SYN, "--set", "lr"], {}, ["expected key=value"]
    if row == "shared-set-per-variant":
        return ["compare", "flat", "topk", *SYN, "--set", "flat.train.steps=5"], {}, ["train.steps defines the shared stream"]
    if row == "negative-coefficient":
        return ["train", "flat", *SYN, "--set", "l1_coefficient=-1", "--out", str(r / "nc")], {}, ["l1_coefficient must be >= 0"]
    if row == "tree-widths":
        return ["train", "hsae", *SYN, "--set", "tier_expansion=[2,3]", "--out", str(r / "tw")], {}, ["whole multiple", "[128, 192]"]
    if row == "k-too-large":
        return ["train", "topk", *SYN, "--set", "k=100000", "--out", str(r / "kt")], {}, ["100000", "width"]
    if row == "bad-synthetic-tree":
        return ["train", "flat", *SYN, "--set", "data.synthetic.branching=[8,0]", "--out", str(r / "bst")], {}, ["branching must be a non-empty list of positive integers"]
    if row == "bad-lr":
        return ["train", "flat", *SYN, "--set", "train.lr=0"], {}, ["train.lr must be > 0"]
    if row == "bad-config-file":
        return ["train", "flat", *SYN, "--config", str(r / "bad.toml")], {}, ["invalid TOML"]
    if row == "missing-config-file":
        return ["train", "flat", *SYN, "--config", str(r / "nope.toml")], {}, ["nope.toml: no such file"]
    if row == "steps-and-tokens":
        return ["train", "flat", "--steps", "5", "--tokens", "5"], {}, ["--steps or --tokens"]
    if row == "unknown-option":
        return ["train", "flat", "--bogus"], {}, ["No such option", "--bogus"]
    if row == "no-cuda":
        return ["train", "flat", *SYN, "--device", "cuda", "--out", str(r / "nocuda")], {}, ["CUDA is not available"]
    if row == "out-not-writable":
        return ["train", "flat", *SYN, "--out", "/etc/hostname/run"], {}, ["/etc/hostname/run", "cannot create"]
    if row == "out-has-run":
        return ["train", "flat", *SYN, "--out", str(env["run"])], {}, ["already holds a run", "--resume"]
    if row == "disk-full":
        return ["train", "flat", *SYN, "--out", str(r / "full")], {"_FSIZE": "1"}, ["no space left", "cannot write"]
    if row == "missing-run":
        return ["eval", str(r / "nope")], {}, ["no such run directory"]
    if row == "corrupt-weights":
        run = copy_run(env, "corrupt")
        data = bytearray((run / "sae.safetensors").read_bytes())
        data[-8:] = b"\x01" * 8
        (run / "sae.safetensors").write_bytes(bytes(data))
        return ["eval", str(run)], {}, ["checksum mismatch"]
    if row == "truncated-weights":
        run = copy_run(env, "truncated")
        (run / "sae.safetensors").write_bytes((run / "sae.safetensors").read_bytes()[:200])
        return ["eval", str(run)], {}, ["corrupt or truncated"]
    if row == "bad-checkpoint-version":
        run = copy_run(env, "version")
        edit_cfg(run, lambda c: c.update(format_version=99))
        return ["eval", str(run)], {}, ["checkpoint format 99 is not supported"]
    if row == "bad-cfg-field":
        run = copy_run(env, "cfgfield")
        edit_cfg(run, lambda c: c["sae"].update(bogus=1))
        return ["eval", str(run)], {}, ["unknown setting 'sae.bogus'"]
    if row == "shape-mismatch":
        run = copy_run(env, "shape")
        edit_cfg(run, lambda c: c["sae"].update(expansion_factor=c["sae"]["expansion_factor"] * 2))
        return ["eval", str(run)], {}, ["has shape", "the config implies"]
    if row == "resume-without-state":
        run = copy_run(env, "nostate")
        import shutil

        shutil.rmtree(run / "state")
        return ["train", "--resume", str(run), "-q"], {}, ["no trainer state"]
    if row == "plugin-raises":
        return ["--plugins-dir", str(r / "plugins-broken"), "list"], {}, ["'broken' failed in register_architectures", "boom"]
    if row == "plugin-misnamed-hook":
        return ["--plugins-dir", str(r / "plugins-misnamed"), "list"], {}, ["'misnamed' is invalid", "registrar"]
    if row == "duplicate-name":
        return ["--plugins-dir", str(r / "plugins-dup"), "list"], {}, ["'flat' is registered by two plugins", "'saezoo_flat'", "'dup'"]
    if row == "plugins-dir-missing":
        return ["--plugins-dir", str(r / "nope"), "list"], {}, ["not a directory"]
    if row == "unknown-registry-entry":
        return ["registry", "show", "nope"], {}, ["unknown registry entry 'nope'"]
    if row == "unknown-kind":
        return ["list", "gizmos"], {}, ["unknown kind 'gizmos'"]
    raise KeyError(row)


def documented_rows() -> list[str]:
    text = (ROOT / "docs" / "errors.md").read_text()
    return re.findall(r"^\| ([a-z0-9-]+) \|", text, flags=re.M)[1:] if False else [
        row for row in re.findall(r"^\| ([a-z][a-z0-9-]*) \|", text, flags=re.M) if row != "id"
    ]


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.parametrize("row", documented_rows())
def test_error_row(env, row):
    args, extra_env, needles = case(env, row)
    if extra_env.pop("_FSIZE", None):
        import os
        import subprocess
        import sys

        proc = subprocess.run(
            [sys.executable, "-m", "saezoo.cli", *args], capture_output=True, text=True,
            env={**os.environ, **extra_env}, preexec_fn=_limit_file_size, timeout=300,
        )
    else:
        proc = run_cli(*args, env=extra_env)
    assert_one_line_error(proc, *needles)
    leftovers = [p for p in env["root"].rglob("*.tmp")]
    assert not leftovers, f"half-written files left: {leftovers}"


def test_every_row_has_a_case(env):
    rows = documented_rows()
    assert len(rows) == len(set(rows)) >= 30
    for row in rows:
        case(env, row)  # raises KeyError for an undocumented case
