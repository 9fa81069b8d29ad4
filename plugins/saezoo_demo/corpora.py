"""The embedded corpora: English text that needs no hub.

``python-docs``: Python's own documentation, from every Python installation — the
``pydoc_data`` topics plus the docstrings of a fixed list of standard-library modules. About
1.4 MB; the exact text follows the running Python version.

``austen``: Jane Austen's six novels, one document per chapter (about 4 MB), converted from
Debian's ``r-cran-janeaustenr`` package by ``bash scripts/fetch_assets.sh``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from collections.abc import Iterator

from saezoo.errors import UsageError
from saezoo_demo.assets import FETCH_COMMAND, austen_path

# Pure-Python (or import-safe) modules with substantial docstrings; a module this Python lacks
# is skipped. Changing the list changes the corpus.
STDLIB_MODULES = """
_pydecimal _pyio abc argparse ast asyncio.base_events asyncio.events asyncio.futures
asyncio.locks asyncio.queues asyncio.streams asyncio.tasks base64 bdb bisect calendar cmd code
codecs codeop collections colorsys compileall concurrent.futures configparser contextlib copy
csv dataclasses datetime difflib dis doctest email.message email.utils enum filecmp fileinput
fnmatch fractions ftplib functools getopt gettext glob graphlib gzip heapq hmac html html.parser
http.client http.cookiejar http.server imaplib importlib.metadata importlib.resources inspect
ipaddress json json.decoder json.encoder linecache locale logging logging.handlers lzma mailbox
mimetypes netrc numbers operator optparse os pathlib pdb pickle pickletools pkgutil platform
plistlib poplib pprint profile pstats py_compile pyclbr pydoc queue quopri random re reprlib
rlcompleter runpy sched secrets selectors shelve shlex shutil smtplib socket socketserver ssl
stat statistics string struct subprocess symtable sysconfig tabnanny tarfile tempfile textwrap
threading timeit tokenize trace traceback types typing unittest.case unittest.mock
urllib.parse urllib.request uuid warnings wave weakref wsgiref.handlers wsgiref.simple_server
xml.dom.minidom xml.etree.ElementTree xmlrpc.client xmlrpc.server zipfile zipimport zoneinfo
""".split()


def python_docs() -> list[str]:
    """Documents in a fixed order: each pydoc topic, then per module its docstring and one
    document per class (with its methods' docstrings) or function. Repeated docstrings appear once."""
    from pydoc_data.topics import topics

    documents = [topics[name] for name in sorted(topics)]
    seen: set[str] = set()

    def doc(obj: object) -> str | None:
        text = getattr(obj, "__doc__", None)
        if not isinstance(text, str) or not text.strip():
            return None
        text = inspect.cleandoc(text)
        if text in seen:
            return None
        seen.add(text)
        return text

    def add(parts: list[str | None]) -> None:
        text = "\n\n".join(p for p in parts if p)
        if text:
            documents.append(text)

    # Deprecated aliases (typing.io, ...) warn when touched; the corpus must not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in STDLIB_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            add([doc(module)])
            for _, obj in sorted(vars(module).items()):
                if getattr(obj, "__module__", None) != module.__name__:
                    continue  # re-exported from elsewhere
                if inspect.isfunction(obj):
                    add([doc(obj)])
                elif inspect.isclass(obj):
                    members = [v for _, v in sorted(vars(obj).items()) if _is_documented_member(v)]
                    add([doc(obj)] + [doc(v) for v in members])
    return documents


def _is_documented_member(value: object) -> bool:
    return inspect.isfunction(value) or isinstance(value, (property, classmethod, staticmethod))


def austen() -> Iterator[str]:
    """The six novels, one document per chapter, in the order of the R package's data."""
    path = austen_path()
    if not path.is_file():
        raise UsageError(f"the austen corpus is not fetched yet ({path} is missing); run: {FETCH_COMMAND}")
    books = json.loads(path.read_text())["books"]
    for chapters in books.values():
        yield from chapters
