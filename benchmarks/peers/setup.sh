#!/usr/bin/env bash
# Install the peer SAE libraries into their own virtual environment (benchmarks/peers/.venv).
# They are never dependencies of saezoo: the benchmark drives saezoo with the system python
# and each peer with this venv's python.
#
#   bash benchmarks/peers/setup.sh            # create or update the venv
#   PEERS_PYTHON=python3.11 bash ...          # pick the interpreter the venv is made from
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
py="${PEERS_PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" || exit 1
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# pip warns once per package about local index folders that lack it; keep real errors.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }

# torch first, pinned, so no peer's requirement range pulls another build (the CPU wheel
# lies on local disk here; elsewhere pip fetches it from the index).
quiet "${pip[@]}" "torch==$TORCH_VERSION" || { echo "setup: torch==$TORCH_VERSION did not install" >&2; exit 1; }
keep_torch=("torch==$TORCH_VERSION")

status=0
install_peer() {  # name, pip args...
    local name="$1"; shift
    echo "setup: installing $name" >&2
    if ! quiet "${pip[@]}" "$@" "${keep_torch[@]}"; then
        echo "setup: $name did not install (see the pip error above); the benchmark will skip it" >&2
        status=1
    fi
}

install_peer sae-lens sae-lens
install_peer eai-sparsify eai-sparsify
# dictionary_learning pins torchvision; its trainers never import it, and a torchvision
# built for another torch breaks `import torch` users, so it is removed after the install.
install_peer dictionary-learning dictionary-learning
"$venv/bin/python" -m pip uninstall --quiet --yes torchvision >/dev/null 2>&1 || true

"$venv/bin/python" - <<'PY'
import importlib, torch
print(f"torch {torch.__version__}")
for mod, dist in [("sae_lens", "sae-lens"), ("sparsify", "eai-sparsify"), ("dictionary_learning", "dictionary-learning")]:
    try:
        importlib.import_module(mod)
        from importlib.metadata import version
        print(f"{dist} {version(dist)}: ok")
    except Exception as exc:  # noqa: BLE001 - report every failure and go on
        print(f"{dist}: import failed: {type(exc).__name__}: {exc}")
PY
exit $status
