"""A server on 127.0.0.1 that speaks the Hugging Face Hub's file layout, for the real
``huggingface_hub`` client pointed at it with ``HF_ENDPOINT``.

``hf_hub_download`` asks ``HEAD /{repo_id}/resolve/{revision}/{filename}`` for the file's
metadata (the commit in ``X-Repo-Commit``, the ``ETag`` naming the blob in the cache, the
size in ``Content-Length``), then GETs the same path. An LFS file's ETag on the hub is the
sha256 of its content, which is what this server sends.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """``files``: {(repo_id, filename): content}; served at every revision. ``requests``
    records (method, path) of every request."""

    def __init__(self, files: dict[tuple[str, str], bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                server.requests.append((self.command, self.path))
                content = server.lookup(self.path)
                if content is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def lookup(self, path: str) -> bytes | None:
        repo, sep, rest = path.partition("/resolve/")
        if not sep:
            return None
        _revision, _, filename = rest.partition("/")
        return self.files.get((repo.lstrip("/"), filename.split("?")[0]))

    def __enter__(self) -> HubServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
