"""Weights are read through safetensors only: nothing a user hands saezoo is unpickled."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Calls that unpickle; merely naming the pickle module (the python-docs corpus reads its
# docstring) is harmless.
FORBIDDEN = re.compile(r"\b(pickle|cPickle|dill|joblib)\.(load|loads)\(|Unpickler|torch\.load\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True")


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
