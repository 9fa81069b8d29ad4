"""glibc is told to keep freed memory (saezoo/host_memory.py), unless the user says not to."""

import os
import platform
import subprocess
import sys

import pytest

# In a fresh process: apply the setting (twice: the second call must be a no-op), then ask
# glibc itself (mallinfo) where a 64 MiB tensor was served from and what a free gave back.
PROBE = r"""
import ctypes
from saezoo.host_memory import keep_freed_memory
import torch

libc = ctypes.CDLL("libc.so.6")
size_t = ctypes.c_size_t if hasattr(libc, "mallinfo2") else ctypes.c_int
class Info(ctypes.Structure):
    _fields_ = [(n, size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                      "uordblks", "fordblks", "keepcost")]
info = libc.mallinfo2 if hasattr(libc, "mallinfo2") else libc.mallinfo
info.restype = Info
applied = (keep_freed_memory(), keep_freed_memory())
x = torch.ones(64 << 20, dtype=torch.uint8)
held = info()
del x
freed = info()
print(*applied, held.hblkhd >> 20, freed.arena >> 20, freed.fordblks >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
@pytest.mark.parametrize("turned_off", [False, True])
def test_keep_freed_memory_serves_large_blocks_from_the_heap(turned_off):
    environ = {k: v for k, v in os.environ.items() if k != "SAEZOO_KEEP_FREED_MEMORY"}
    if turned_off:
        environ["SAEZOO_KEEP_FREED_MEMORY"] = "0"
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True)
    first, second, mmapped_mib, arena_mib, free_in_heap_mib = out.stdout.split()
    if turned_off:
        assert (first, second) == ("False", "False")
        # glibc's default: the block is its own mmap, unmapped again on free.
        assert int(mmapped_mib) >= 64, out.stdout
        assert int(free_in_heap_mib) < 64, out.stdout
    else:
        assert (first, second) == ("True", "True")
        # No mmap-served block, and the freed 64 MiB stays in the heap for the next step.
        assert int(mmapped_mib) < 64, out.stdout
        assert int(arena_mib) >= 64 and int(free_in_heap_mib) >= 64, out.stdout
