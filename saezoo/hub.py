"""Registry weights on the Hugging Face Hub: ``hf://OWNER/REPO[@REVISION]/FILE``, fetched by
``huggingface_hub`` into its cache.

The client honours ``HF_ENDPOINT`` (another hub, or a server on 127.0.0.1 speaking the hub's
file layout), ``HF_HUB_CACHE`` / ``HF_HOME`` (where the cache is) and ``HF_HUB_OFFLINE``.
Checking a file against its manifest is the registry's business (``saezoo.catalog``); this
module finds, fetches and, when the check fails, removes it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from saezoo.errors import UsageError

URL_PATTERN = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w.-]+))?/(?P<filename>[\w./-]+)")


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str = "main"


def parse_url(url: str) -> HubFile:
    """``hf://owner/repo[@revision]/path/in/repo`` -> HubFile; anything else is refused."""
    match = URL_PATTERN.fullmatch(url)
    if match is None or ".." in match["filename"].split("/"):
        raise UsageError(f"weights url {url!r}: expected hf://OWNER/REPO[@REVISION]/FILE")
    return HubFile(match["repo"], match["filename"], match["revision"] or "main")


def cached(url: str) -> Path | None:
    """The cache's copy of ``url``, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    f = parse_url(url)
    path = try_to_load_from_cache(f.repo_id, f.filename, revision=f.revision)
    return Path(path) if isinstance(path, str) else None  # else None, or the marker of a file absent upstream


def download(url: str, name: str) -> Path:
    """Fetch ``url`` into the cache (or find it there); ``name`` is the registry entry, which
    the error names with the way to rebuild it when no copy is reachable."""
    from huggingface_hub import hf_hub_download

    f = parse_url(url)
    client_log = logging.getLogger("huggingface_hub")
    level = client_log.level
    client_log.setLevel(logging.ERROR)  # its retries warn one line each; the error below says it once
    try:
        return Path(hf_hub_download(f.repo_id, f.filename, revision=f.revision))
    except (OSError, ValueError) as exc:  # the client's HTTP, offline and not-found errors are OSErrors
        reason = " ".join(str(exc).split()).split(". ")[0]
        reason = reason if len(reason) <= 160 else reason[:160] + "..."
        raise UsageError(
            f"registry entry {name!r}: cannot fetch {url} ({type(exc).__name__}: {reason}); with no copy reachable, "
            f"rebuild it: saezoo registry reproduce {name}"
        ) from None
    finally:
        client_log.setLevel(level)


def remove(path: Path) -> None:
    """Delete a cached file: its snapshot link, the blob it points to, and the snapshot
    folder when that leaves it empty (so a bad copy is never found in the cache again)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path and blob.parent.name == "blobs":
        blob.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
