"""The machine's cores, shared by the saezoo processes that compute on it.

torch gives every process one thread per core. Two runs at once on a 2-core machine then run
four threads on two cores, and torch's OpenMP threads, which wait for each other at the end of
every parallel region, spend their turns waiting for a thread that is not running: on the
2-core benchmark machine two runs at once took 4.6x as long as one after the other, and 0.69x
when they share the cores as below (benchmarks/shared_cores.py, benchmarks/README.md).

So each command that computes (``train``, ``compare``, ``eval``, ``browse``, and ``registry``,
whose ``reproduce`` trains) registers itself while it runs: a file per process under
``<cache>/running`` (``$SAEZOO_CACHE``, else ``~/.cache/saezoo``), locked for the life of the
process, so one that was killed counts for nothing. Every few seconds while it harvests,
trains or evaluates it takes an equal share of the threads torch gives a process alone (one
per core, or per physical core on some machines): ``threads // n`` for ``n`` processes (at
least one), and all of them again once it is alone. A process whose threads the user chose
(``OMP_NUM_THREADS``) keeps them, and says once on stderr, once it computes, that the threads
of all are more than the cores.
Processes that use another cache directory, or another machine's, do not see each other.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from saezoo.activations.cache import cache_root

# How often a running process looks at the others: a few directory reads and lock tests.
REFRESH_SECONDS = 5.0


def cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Share:
    """This process's entry in the register, and the threads it takes."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.prefix = f"{socket.gethostname()}-"
        self.chosen = "OMP_NUM_THREADS" in os.environ  # the user's threads: never changed
        self.alone = torch.get_num_threads()  # torch's own choice for a process by itself
        self.warned = False
        self.checked = -REFRESH_SECONDS  # the first refresh() looks
        directory.mkdir(parents=True, exist_ok=True)
        # Locked before it is visible under its final name: a file that another process can
        # lock is one whose process has died, and is removed (see others()).
        staging = directory / f".{self.prefix}{os.getpid()}"
        self.file = open(staging, "w")  # held open, and locked, for the life of the process
        fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = directory / f"{self.prefix}{os.getpid()}"
        self.write(torch.get_num_threads())
        os.replace(staging, self.path)

    def write(self, threads: int) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(threads))
        self.file.flush()

    def others(self) -> list[int]:
        """The threads of each other live process in the register; dead ones' files removed,
        staged ones too (a process killed between staging and renaming its file)."""
        found = []
        for path in [*self.directory.glob(f"{self.prefix}*"), *self.directory.glob(f".{self.prefix}*")]:
            if path == self.path:
                continue
            try:
                with open(path) as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:  # its process holds it: alive
                        if not path.name.startswith("."):  # a staged one counts once renamed
                            found.append(int(f.read().strip() or 1))
                        continue
                    path.unlink(missing_ok=True)  # nobody holds it: its process is gone
            except (OSError, ValueError):
                continue  # gone between listing and opening, or half written
        return found

    def take(self) -> list[int]:
        """Take this process's share of the threads now; returns the others' threads."""
        others = self.others()
        if not self.chosen:
            threads = max(1, self.alone // (len(others) + 1))
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        self.write(torch.get_num_threads())
        return others

    def refresh(self) -> None:
        """:meth:`take`, at most every REFRESH_SECONDS; and, once, the warning above. Only
        while computing (a command that stops at bad input says one line, not two), and only
        for threads the user chose: a process that was not told adapts by itself."""
        now = time.monotonic()
        if now - self.checked < REFRESH_SECONDS:
            return
        self.checked = now
        others = self.take()
        mine = torch.get_num_threads()
        if self.chosen and others and mine + sum(others) > cores() and not self.warned:
            self.warned = True
            print(
                f"saezoo: warning: {len(others)} other saezoo process(es) compute on this machine with "
                f"{sum(others)} thread(s), and this one with {mine} (OMP_NUM_THREADS), on {cores()} cores: "
                "each runs slower than it would alone; give each OMP_NUM_THREADS so that they add up "
                "to the cores",
                file=sys.stderr,
            )

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        self.file.close()


_share: Share | None = None


@contextmanager
def sharing() -> Iterator[None]:
    """Register this process for as long as the block runs, and take its share of the cores."""
    global _share
    if _share is not None:  # nested: the outer entry holds
        yield
        return
    try:
        _share = Share(cache_root() / "running")
    except OSError:  # a read-only or full cache: computing matters more than sharing
        yield
        return
    try:
        _share.take()
        yield
    finally:
        _share.close()
        _share = None


def refresh() -> None:
    """Take this process's share again if the others have changed (every REFRESH_SECONDS at
    most); nothing outside :func:`sharing`. Call it from the main thread: torch's thread count
    is the calling thread's."""
    if _share is not None:
        _share.refresh()
