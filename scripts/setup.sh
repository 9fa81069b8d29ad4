#!/usr/bin/env bash
# Installs saezoo, its test tools and the embedded default assets. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# torch first, pinned: on these machines 2.13.0 is a CPU build on local disk; a bare
# `torch` requirement would pull a multi-GB CUDA build. On a GPU machine install the
# CUDA build of your choice before running this script.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
# The dev extra: pytest and its plugins, hypothesis, playwright, and ruff (.ci/run lints with it).
python3 -m pip install -q -e '.[demo,dev]'
# The browser test (tests/test_browse.py) drives Debian's chromium through playwright (in the
# dev extra). Playwright is never asked to download a browser of its own.
if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
fi
python3 -m pip install -q -e examples/saezoo-example-plugin
bash scripts/fetch_assets.sh
