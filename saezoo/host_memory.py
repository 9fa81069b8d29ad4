"""Keep freed host memory in the process instead of handing it back to the kernel.

A training step on the CPU allocates and frees several ``[batch, width]`` tensors (64 MB
each at batch 4096 and width 4096). glibc serves every block over 32 MB with a fresh
``mmap`` and unmaps it on free, so each such tensor costs 16k page faults and the kernel
zeroing 64 MB before torch writes a single value: an elementwise pass over fresh memory
takes twice as long as one over reused memory. torch has no caching allocator for the CPU
(the PyTorch performance guide suggests preloading jemalloc or tcmalloc instead, which a
``pip install`` cannot do), so saezoo tells glibc to serve large blocks from its heap
and never trim it: freed blocks are reused by the next step.

Measured on the 2-core benchmark machine: ``benchmarks/architectures.py`` (same run) flat
7,134 -> 9,190 tokens/s, gated 3,918 -> 5,710; ``saezoo train hsae`` 2 min 59 s -> 2 min
38 s.

The cost: freed memory stays with the process until it exits instead of going back to
the kernel, so the resident size stays at its peak, and the peak itself grows a little
(``saezoo train hsae``: 1.72 GiB against 1.66 GiB; the peers benchmark's flat run: 1.46
GiB against 1.25). ``SAEZOO_KEEP_FREED_MEMORY=0`` turns this off. On anything but glibc
(macOS, musl) it does nothing.

:func:`check_fits` is the other side of host memory: a request that cannot fit (``eval
--tokens`` in the billions) is refused in one line before torch tries to allocate it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from pathlib import Path

from saezoo.errors import UsageError

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_done = False


def keep_freed_memory() -> bool:
    """Configure glibc malloc as described above, once per process; True if it applied."""
    global _done
    if _done:
        return True
    if os.environ.get("SAEZOO_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success. No mmap-served blocks at all (the mmap threshold cannot
    # be raised past 32 MB), and a trim threshold no heap reaches.
    _done = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done


def check_fits(n_bytes: int, what: str, available: int | None = None) -> None:
    """Refuse ``what`` when its ``n_bytes`` exceed the memory ``available`` (by default the
    host's: ``MemAvailable`` in /proc/meminfo); where that is unknown (not Linux), nothing
    is checked."""
    if available is None:
        try:
            fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
            available = int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError, IndexError):
            return
    if n_bytes > available:
        raise UsageError(
            f"{what} needs at least {n_bytes / 2**30:,.1f} GiB of memory, {available / 2**30:,.1f} GiB is available; "
            "ask for less"
        )
