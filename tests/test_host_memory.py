"""glibc is told to keep freed memory (saezoo/host_memory.py), unless the user says not to."""

import os
import platform
import subprocess
import sys

import pytest

CALL = "from saezoo.host_memory import keep_freed_memory; print(keep_freed_memory(), keep_freed_memory())"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
@pytest.mark.parametrize("env, expected", [({}, "True True"), ({"SAEZOO_KEEP_FREED_MEMORY": "0"}, "False False")])
def test_keep_freed_memory_applies_once_unless_turned_off(env, expected):
    environ = {k: v for k, v in os.environ.items() if k != "SAEZOO_KEEP_FREED_MEMORY"}
    out = subprocess.run([sys.executable, "-c", CALL], env={**environ, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
