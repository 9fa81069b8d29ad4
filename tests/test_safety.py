"""Weights are read through safetensors only: nothing a user hands saezoo is unpickled."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"\b(pickle|cPickle|dill|joblib)\b|torch\.load\(|weights_only\s*=\s*False|np\.load\(.*allow_pickle")


def test_no_unpickling_anywhere():
    offenders = []
    for folder in ("saezoo", "plugins", "examples", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if ".venv" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if FORBIDDEN.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
