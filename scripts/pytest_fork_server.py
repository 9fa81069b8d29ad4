"""A test runner for mutation testing that pays for `import torch` once, not once per mutant.

    python3 scripts/pytest_fork_server.py serve SOCKET &        # imports the heavy libraries
    python3 scripts/pytest_fork_server.py run SOCKET PYTEST ARGS # exit code of pytest ARGS

``serve`` imports torch, pytest and the other third-party libraries saezoo needs, but not
saezoo itself; each ``run`` forks it and the child runs pytest in-process, so saezoo (with
whatever mutant mutmut just wrote to disk) is imported fresh in every child. Starting
Python and importing torch takes seconds on a loaded 2-core machine; a fork takes
milliseconds. Tests that start subprocesses still start them as usual.
"""

from __future__ import annotations

import os
import socket
import sys


def serve(path: str) -> None:
    # Heavy third-party imports, shared by every forked child. No torch op runs here, so
    # no thread pool exists yet that a fork could break.
    import numpy  # noqa: F401
    import pluggy  # noqa: F401
    import pytest
    import rich  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401
    import typer  # noqa: F401

    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn:
            request = b""
            while not request.endswith(b"\0\0"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            args = [a.decode() for a in request[:-2].split(b"\0")] if request.endswith(b"\0\0") else []
            if not args:
                continue
            if args[1:] == ["stop"]:
                return
            pid = os.fork()
            if pid == 0:
                os.setsid()  # its own process group: a timeout ends the tests' subprocesses too
                # The client's working directory is the copy being mutated.
                os.chdir(args[0])
                out = os.open(os.path.join(args[0], ".pytest-run.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(out, 1)
                os.dup2(out, 2)
                code = pytest.main(args[1:])
                os._exit(int(code))
            try:
                conn.sendall(str(_wait(pid, conn)).encode())
            except OSError:
                pass  # the client is gone


def _wait(pid: int, conn: socket.socket) -> int:
    """The child's exit code; if the client goes away first (mutmut's timeout), kill it."""
    import select
    import signal

    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable and not conn.recv(1, socket.MSG_PEEK):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 1


def run(path: str, args: list[str]) -> int:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(b"\0".join(a.encode() for a in [os.getcwd(), *args]) + b"\0\0")
    reply = b""
    while chunk := client.recv(64):
        reply += chunk
    code = int(reply or b"1")
    return code if code >= 0 else 1  # killed by a signal: a failure


if __name__ == "__main__":
    command, sock, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    if command == "serve":
        serve(sock)
    elif command == "stop":
        run(sock, ["stop"])
    else:
        sys.exit(run(sock, rest))
