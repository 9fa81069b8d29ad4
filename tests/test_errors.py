"""Every row of docs/errors.md, through the real CLI in a subprocess: exit 2, one line on
stderr naming the problem, no traceback, no temporary file left behind."""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import signal
import textwrap
from pathlib import Path

import pytest

from activations_helpers import corpus, make_model, write_jsonl
from helpers import FAST_SETS, assert_one_line_error, fast_train_args, run_cli
from hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
SYN = ["--source", "synthetic", "--steps", "5", "-q", *[a for s in FAST_SETS for a in ("--set", s)]]

PLUGINS = {
    "broken": """
        from saezoo import hookimpl

        @hookimpl
        def register_architectures(register):
            raise RuntimeError("boom")
    """,
    "misnamed": """
        from saezoo import hookimpl

        @hookimpl
        def register_architectures(registrar):
            pass
    """,
    "misspelled": """
        from saezoo import hookimpl
        from saezoo_flat.sae import FlatSAE

        @hookimpl
        def register_architecture(register):
            register("my-flat", FlatSAE)
    """,
    "nodefault": """
        from dataclasses import dataclass

        from saezoo import hookimpl
        from saezoo_flat.sae import FlatSAE

        @dataclass
        class NoDefaultConfig:
            width: int
            \"\"\"Latents.\"\"\"

        class NoDefault(FlatSAE):
            Config = NoDefaultConfig

        @hookimpl
        def register_architectures(register):
            register("no-default", NoDefault)
    """,
    "undeclared": """
        from saezoo import hookimpl
        from saezoo_flat.sae import FlatSAE

        class Undeclared(FlatSAE):
            def __init__(self, d_in, cfg):
                super().__init__(d_in, cfg)
                self.extra = cfg.l2_coefficient

        @hookimpl
        def register_architectures(register):
            register("undeclared", Undeclared)
    """,
    "dup": """
        from saezoo import hookimpl
        from saezoo_flat.sae import FlatSAE

        @hookimpl
        def register_architectures(register):
            register("flat", FlatSAE)
    """,
    "holdk": """
        from dataclasses import dataclass

        from saezoo import Curriculum, hookimpl

        @dataclass
        class HoldKConfig:
            k: int = 8
            \"\"\"The k held.\"\"\"

        class HoldK(Curriculum):
            \"\"\"Hold k.\"\"\"

            Config = HoldKConfig
            knobs = frozenset({"k"})

            def knobs_at(self, step, stats):
                return {"k": self.cfg.k}

        @hookimpl
        def register_curricula(register):
            register("hold-k", HoldK)
    """,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny local model, a corpus file, a trained synthetic run and plugin folders."""
    root = tmp_path_factory.mktemp("errors")
    model = make_model(root / "model", "llama", layers=2)
    data = write_jsonl(root / "corpus.jsonl", corpus(60))
    # A vocabulary of numbers: its only word token is the helpers' outlier word.
    numbers = [" ".join(str((i * 7 + j) % 50) for j in range(40)) for i in range(60)]
    make_model(root / "numbers", "llama", layers=2, docs=numbers)
    write_jsonl(root / "numbers.jsonl", numbers)
    run = root / "run"
    proc = run_cli(*fast_train_args("flat", run, 5))
    assert proc.returncode == 0, proc.stderr
    for name, source in PLUGINS.items():
        (root / f"plugins-{name}").mkdir()
        (root / f"plugins-{name}" / f"{name}.py").write_text(textwrap.dedent(source))
    (root / "bad.toml").write_text("[train\nlr = 1\n")
    return {"root": root, "model": str(model), "data": str(data), "run": run}


def copy_run(env, name: str, symlinks: bool = False) -> Path:
    import shutil

    target = env["root"] / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(env["run"], target, symlinks=symlinks)
    return target


HELD_LOCKS: list[int] = []  # file descriptors kept open (their flock held) for the rest of the session
HELD_SERVERS: list[HubServer] = []  # local hubs kept serving for the rest of the session


def hold_lock(path: Path) -> None:
    """Hold ``path``'s flock for the rest of the session, as a saezoo process holding it would
    (its pid written in)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    HELD_LOCKS.append(fd)


def edit_cfg(run: Path, change) -> None:
    cfg = json.loads((run / "cfg.json").read_text())
    change(cfg)
    (run / "cfg.json").write_text(json.dumps(cfg))


def case(env, row: str):
    """(argv, extra environment, expected fragments) of one row."""
    r, m, d = env["root"], env["model"], env["data"]
    model = ["--model", m, "--dataset", d, "--steps", "2", "-q", "--set", "train.batch_size=64", "--set", "train.eval_tokens=64"]
    if row == "unknown-architecture":
        return ["train", "flta", *SYN], {}, ["unknown architecture 'flta'", "did you mean 'flat'"]
    if row == "unknown-preset":
        return ["train", "hsae", "--preset", "papr", *SYN], {}, ["unknown preset", "'paper'"]
    if row == "unknown-curriculum":
        return ["train", "flat", "--curriculum", "warmup", *SYN], {}, ["unknown curriculum 'warmup'", "available:"]
    if row == "incompatible-curriculum":
        return ["train", "flat", "--curriculum", "k-anneal", *SYN, "--out", str(r / "ic")], {}, ["'k-anneal'", "'flat' does not accept"]
    if row == "unknown-model":
        return ["train", "flat", "--model", str(r / "no-such-model"), "--dataset", d, "--out", str(r / "um"), "-q"], {}, ["no-such-model"]
    if row == "unknown-hook":
        return ["train", "flat", *model, "--hook", "model.layers.99", "--out", str(r / "uh")], {}, ["model.layers.99", "model.layers.1"]
    if row == "absorption-no-words":
        numbers = ["--model", str(r / "numbers"), "--dataset", str(r / "numbers.jsonl"), *model[4:]]
        return ["train", "flat", *numbers, "--out", str(r / "nw")], {}, ["first-letter absorption", "1 word token", "train.absorption_words=0"]
    if row == "unknown-dataset":
        return ["train", "flat", *model[:2], "--dataset", str(r / "no-such.txt"), "--out", str(r / "ud"), "-q"], {}, ["no-such.txt"]
    if row == "missing-asset":
        return ["train", "flat", *model[:2], "--dataset", "austen", "--out", str(r / "ma"), "-q"], {"SAEZOO_CACHE": str(r / "empty-cache")}, ["scripts/fetch_assets.sh"]
    if row == "unknown-set-section":
        return ["train", "flat", *SYN, "--set", "trian.lr=1e-3"], {}, ["unknown setting 'trian'", "neither a section", "did you mean train?"]
    if row == "unknown-set-key":
        return ["train", "flat", *SYN, "--set", "l1_coef=2"], {}, ["unknown setting 'sae.l1_coef'", "did you mean sae.l1_coefficient"]
    if row == "bad-set-value":
        return ["train", "flat", *SYN, "--set", "train.steps=many"], {}, ["train.steps: 'many' is not an integer"]
    if row == "bad-set-syntax":
        return ["train", "flat", *SYN, "--set", "lr"], {}, ["expected key=value"]
    if row == "shared-set-per-variant":
        return ["compare", "flat", "topk", *SYN, "--set", "flat.train.steps=5"], {}, ["train.steps defines the shared stream"]
    if row == "negative-coefficient":
        return ["train", "flat", *SYN, "--set", "l1_coefficient=-1", "--out", str(r / "nc")], {}, ["l1_coefficient must be >= 0"]
    if row == "tree-widths":
        return ["train", "hsae", *SYN, "--preset", "tree", "--set", "tier_expansion=[2,3]", "--out", str(r / "tw")], {}, ["whole multiple", "[128, 192]"]
    if row == "tree-shares":
        return ["train", "hsae", *SYN, "--preset", "tree", "--set", "tier_expansion=[1,3,6]", "--out", str(r / "ts")], {}, ["tier_shares needs 3", "set sae.tier_shares with sae.tier_expansion"]
    if row == "k-too-large":
        return ["train", "topk", *SYN, "--set", "k=100000", "--out", str(r / "kt")], {}, ["100000", "width"]
    if row == "bad-synthetic-tree":
        return ["train", "flat", *SYN, "--set", "data.synthetic.branching=[8,0]", "--out", str(r / "bst")], {}, ["branching must be a non-empty list of positive integers"]
    if row == "bad-lr":
        return ["train", "flat", *SYN, "--set", "train.lr=0"], {}, ["train.lr must be > 0"]
    if row == "bad-config-file":
        return ["train", "flat", *SYN, "--config", str(r / "bad.toml")], {}, ["invalid TOML"]
    if row == "missing-config-file":
        return ["train", "flat", *SYN, "--config", str(r / "nope.toml")], {}, ["nope.toml: no such file"]
    if row == "steps-and-tokens":
        return ["train", "flat", "--steps", "5", "--tokens", "5"], {}, ["--steps or --tokens"]
    if row == "unknown-option":
        return ["train", "flat", "--bogus"], {}, ["No such option", "--bogus"]
    if row == "no-cuda":
        return ["train", "flat", *SYN, "--device", "cuda", "--out", str(r / "nocuda")], {}, ["CUDA is not available"]
    if row == "out-not-writable":
        return ["train", "flat", *SYN, "--out", "/etc/hostname/run"], {}, ["/etc/hostname/run", "cannot create"]
    if row == "out-has-run":
        return ["train", "flat", *SYN, "--out", str(env["run"])], {}, ["already holds a run", "--resume"]
    if row == "out-not-empty":
        (r / "thesis").mkdir(exist_ok=True)
        (r / "thesis" / "draft.tex").write_text("mine")
        return ["train", "flat", *SYN, "--out", str(r / "thesis")], {}, ["thesis is not empty (draft.tex is there)"]
    if row == "browse-port-range":
        return ["browse", str(env["run"]), "--serve", "--port", "70000"], {}, ["--port must be in 0..65535, got 70000"]
    if row == "browse-port-busy":
        import socket

        busy = env["busy_socket"] = socket.socket()  # held by the test while the command runs
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        return ["browse", str(env["run"]), "--serve", "--port", port, "--out", str(r / "site")], {}, [f"--port {port}: cannot listen"]
    if row == "out-not-utf8":
        return ["train", "flat", *SYN, "--out", str(r / "bad\udcff")], {}, ["the path is not valid UTF-8"]
    if row == "synthetic-probability":
        return ["train", "flat", *SYN, "--set", "data.synthetic.p_child=2", "--out", str(r / "synp")], {}, ["p_child is a probability, in [0, 1]; got 2.0"]
    if row == "eval-one-token":
        return ["eval", str(env["run"]), "--tokens", "1"], {}, ["--tokens must be >= 2"]
    if row == "out-has-run-below":
        copy_run(env, "cmp-done/flat")  # what a finished comparison leaves (its report aside)
        return ["compare", "flat", "topk", *SYN, "--out", str(r / "cmp-done")], {}, ["already holds a run in flat;"]
    if row == "disk-full":
        return ["train", "flat", *SYN, "--out", str(r / "full")], {"_FSIZE": "1"}, ["no space left", "cannot write"]
    if row == "missing-run":
        return ["eval", str(r / "nope")], {}, ["no such run directory"]
    if row == "corrupt-weights":
        run = copy_run(env, "corrupt")
        data = bytearray((run / "sae.safetensors").read_bytes())
        data[-8:] = b"\x01" * 8
        (run / "sae.safetensors").write_bytes(bytes(data))
        return ["eval", str(run)], {}, ["checksum mismatch"]
    if row == "corrupt-weights-resume":  # a finished run: nothing left to train would rewrite them
        run = copy_run(env, "corruptresume", symlinks=True)
        weights = (run / "sae.safetensors").resolve()
        data = bytearray(weights.read_bytes())
        data[-8:] = b"\x01" * 8
        weights.write_bytes(bytes(data))
        return ["train", "--resume", str(run), "-q"], {}, ["checksum mismatch"]  # it exited 0
    if row == "truncated-weights":
        run = copy_run(env, "truncated")
        (run / "sae.safetensors").write_bytes((run / "sae.safetensors").read_bytes()[:200])
        return ["eval", str(run)], {}, ["corrupt or truncated"]
    if row == "bad-checkpoint-version":
        run = copy_run(env, "version")
        edit_cfg(run, lambda c: c.update(format_version=99))
        return ["eval", str(run)], {}, ["checkpoint format 99 is not supported"]
    if row == "bad-cfg-field":
        run = copy_run(env, "cfgfield")
        edit_cfg(run, lambda c: c["sae"].update(bogus=1))
        return ["eval", str(run)], {}, ["unknown setting 'sae.bogus'"]
    if row == "bad-cfg-value":
        run = copy_run(env, "cfgvalue")
        edit_cfg(run, lambda c: c["train"].update(eval_tokens=0))  # evaluated on no token, it exited 0
        return ["eval", str(run)], {}, [f"{run}/cfg.json: train.eval_tokens must be >= 2"]
    if row == "bad-cfg-type":
        run = copy_run(env, "cfgtype")
        edit_cfg(run, lambda c: c.update(architecture=5))
        return ["train", "--resume", str(run), "-q"], {}, [f"{run}/cfg.json: 'architecture' must be a string"]
    if row == "shape-mismatch":
        run = copy_run(env, "shape")
        edit_cfg(run, lambda c: c["sae"].update(expansion_factor=c["sae"]["expansion_factor"] * 2))
        return ["eval", str(run)], {}, ["has shape", "the config implies"]
    if row == "resume-without-state":
        run = copy_run(env, "nostate", symlinks=True)
        import shutil

        shutil.rmtree((run / "state" / "current").resolve())
        return ["train", "--resume", str(run), "-q"], {}, ["no trainer state"]
    if row == "unlinked-checkpoint":
        run = copy_run(env, "unlinked")  # shutil.copytree's default follows symbolic links
        return ["train", "--resume", str(run), "-q"], {}, ["holds a checkpoint but no current link", "cp -a"]
    if row == "no-weights-yet":
        run = r / "halfstarted"
        run.mkdir(exist_ok=True)
        (run / "cfg.json").write_text((env["run"] / "cfg.json").read_text())
        return ["eval", str(run)], {}, ["no weights yet", f"saezoo train --resume {run}"]
    if row == "lock-file-unusable":
        run = copy_run(env, "lockdir", symlinks=True)
        (run / ".lock").unlink()
        (run / ".lock").mkdir()
        return ["train", "--resume", str(run), "-q"], {}, ["lock file", "Is a directory"]
    if row == "run-in-use":
        run = copy_run(env, "inuse", symlinks=True)
        hold_lock(run / ".lock")
        return ["train", "--resume", str(run), "-q"], {}, ["in use by another saezoo process", f"pid {os.getpid()}"]
    if row == "registry-name-busy":
        # Another process training for the name holds its lock (where catalog.name_held takes
        # it): this one refuses at its start, and leaves no run directory.
        import shutil

        shutil.rmtree(r / "registry-busy", ignore_errors=True)  # a lock held by an earlier call is on the old file
        (r / "registry-busy" / "weights").mkdir(parents=True)
        hold_lock(r / "registry-busy" / "weights" / ".mine.lock")
        out = r / "busy-name"
        args = ["train", "flat", *SYN, "--out", str(out), "--register", "mine"]
        extra = {"SAEZOO_REGISTRY": str(r / "registry-busy"), "_ABSENT": str(out)}
        return args, extra, ["registry name 'mine' is being trained for by another saezoo process", f"pid {os.getpid()}"]
    if row == "resume-with-settings":
        return ["train", "--resume", str(env["run"]), "--steps", "50", "--set", "lr=1e-3", "-q"], {}, ["--steps, --set cannot change it", "new run"]
    if row == "plugin-raises":
        return ["--plugins-dir", str(r / "plugins-broken"), "list"], {}, ["'broken' failed in register_architectures", "boom"]
    if row == "plugin-misnamed-hook":
        return ["--plugins-dir", str(r / "plugins-misnamed"), "list"], {}, ["'misnamed' is invalid", "registrar"]
    if row == "duplicate-name":
        return ["--plugins-dir", str(r / "plugins-dup"), "list"], {}, ["'flat' is registered by two plugins", "'saezoo_flat'", "'dup'"]
    if row == "plugin-unknown-hook":
        args = ["--plugins-dir", str(r / "plugins-misspelled"), *fast_train_args("flat", r / "puh", 5)]
        return args, {"_ABSENT": str(r / "puh")}, ["plugin 'misspelled' implements 'register_architecture'", "did you mean 'register_architectures'"]
    if row == "plugin-setting-without-default":
        args = ["--plugins-dir", str(r / "plugins-nodefault"), *fast_train_args("no-default", r / "psd", 5)]
        return args, {"_ABSENT": str(r / "psd")}, ["plugin 'nodefault'", "architecture 'no-default'", "setting 'width'", "no default"]
    if row == "plugin-undeclared-setting":
        args = ["--plugins-dir", str(r / "plugins-undeclared"), *fast_train_args("undeclared", r / "pus", 5)]
        return args, {"_ABSENT": str(r / "pus")}, ["plugin 'undeclared'", "reads setting 'sae.l2_coefficient'", "does not declare"]
    if row == "plugins-dir-missing":
        return ["--plugins-dir", str(r / "nope"), "list"], {}, ["not a directory"]
    if row == "unknown-registry-entry":
        return ["registry", "show", "nope"], {}, ["unknown registry entry 'nope'"]
    if row == "unknown-kind":
        return ["list", "gizmos"], {}, ["unknown kind 'gizmos'"]
    if row == "non-finite-setting":
        return ["train", "flat", *SYN, "--set", "sae.l1_coefficient=nan"], {}, ["sae.l1_coefficient: 'nan' is not a finite number"]
    if row == "cfg-section-not-table":
        run = copy_run(env, "cfgtrain")
        edit_cfg(run, lambda c: c.update(train="fast"))
        return ["eval", str(run)], {}, ["train: expected a table of settings"]
    if row == "damaged-trainer-state":
        run = copy_run(env, "trainerstate", symlinks=True)
        from saezoo.checkpoint import checkpoint_dir

        state = checkpoint_dir(run) / "trainer.json"
        state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "scale"}))
        return ["train", "--resume", str(run), "-q"], {}, ["damaged trainer state", "scale"]
    if row == "edited-trainer-state":
        run = copy_run(env, "trainerstep", symlinks=True)
        from saezoo.checkpoint import checkpoint_dir

        state = checkpoint_dir(run) / "trainer.json"
        meta = json.loads(state.read_text())
        state.write_text(json.dumps({**meta, "step": meta["step"] // 2}))  # well formed, and wrong
        return ["train", "--resume", str(run), "-q"], {}, ["damaged trainer state (it does not match the digest"]
    if row == "unchecked-weights":
        from safetensors.torch import load_file, save_file

        run = copy_run(env, "unchecked")
        weights = run / "sae.safetensors"
        save_file({k: v * 100 for k, v in load_file(weights).items()}, weights)  # no sha256 in the metadata
        return ["eval", str(run)], {}, ["no sha256", "SAEZOO_ALLOW_UNCHECKED_WEIGHTS=1"]
    if row == "registry-name-taken":
        registry = r / "registry"
        registry.mkdir(exist_ok=True)
        (registry / "smollm2-flat.toml").write_bytes((ROOT / "registry" / "smollm2-flat.toml").read_bytes())
        args = ["train", "flat", *SYN, "--out", str(r / "taken"), "--register", "smollm2-flat"]
        return args, {"SAEZOO_REGISTRY": str(registry)}, ["'smollm2-flat' already exists", "--force"]
    if row == "bad-registry-name":
        return ["train", "flat", *SYN, "--out", str(r / "badname"), "--register", "../evil"], {}, ["registry name '../evil'"]
    if row in ("registry-unreachable", "registry-wrong-sha", "registry-no-url", "bad-weights-url"):
        registry = r / f"registry-{row}"
        registry.mkdir(exist_ok=True)
        manifest = (ROOT / "registry" / "synthetic-topk.toml").read_text()
        url = 'url = "hf://saezoo/registry/synthetic-topk.safetensors"\n'
        assert url in manifest
        changed = {"registry-no-url": "", "bad-weights-url": 'url = "https://example.org/w.safetensors"\n'}
        (registry / "synthetic-topk.toml").write_text(manifest.replace(url, changed.get(row, url)))
        extra = {"SAEZOO_REGISTRY": str(registry), "HF_HUB_CACHE": str(r / f"hf-cache-{row}")}
        if row == "registry-wrong-sha":  # a hub on 127.0.0.1 that serves other bytes
            hub = HubServer({("saezoo/registry", "synthetic-topk.safetensors"): b"not the published weights"})
            HELD_SERVERS.append(hub.__enter__())
            extra.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        command = "show" if row == "bad-weights-url" else "pull"
        needles = {
            "registry-unreachable": ["cannot fetch hf://saezoo/registry/synthetic-topk.safetensors", "saezoo registry reproduce synthetic-topk"],
            "registry-wrong-sha": ["does not match the manifest's sha256", "removed from the cache"],
            "registry-no-url": ["'synthetic-topk' has no url in its manifest"],
            "bad-weights-url": ["weights url 'https://example.org/w.safetensors'", "expected hf://OWNER/REPO[@REVISION]/FILE"],
        }[row]
        return ["registry", command, "synthetic-topk"], extra, needles
    if row == "force-without-register":
        return ["train", "flat", *SYN, "--out", str(r / "force"), "--force"], {}, ["--force only applies to --register"]
    if row == "unparsable-dataset":
        noise = r / "noise.txt"
        noise.write_bytes(bytes(range(128, 256)) * 32)  # not UTF-8
        return ["train", "flat", *model[:2], "--dataset", str(noise), *model[4:], "--out", str(r / "noise")], {}, ["noise.txt", "cannot parse it"]
    if row == "malformed-jsonl":
        bad = r / "bad.jsonl"
        bad.write_text('{"text": "fine"}\n{not json\n')
        return ["train", "flat", *model[:2], "--dataset", str(bad), *model[4:], "--out", str(r / "badjsonl")], {}, ["bad.jsonl", "cannot parse it"]
    if row == "hook-not-a-layer":
        return ["train", "flat", *model, "--hook", "model", "--out", str(r / "hookmodel")], {}, ["module 'model' outputs", "model.layers.1"]
    if row == "hook-not-per-token":
        return ["train", "flat", *model, "--hook", "model.rotary_emb", "--out", str(r / "hookrot")], {}, ["module 'model.rotary_emb' outputs", "per token"]
    if row == "cache-not-writable":
        return ["train", "flat", *model, "--out", str(r / "rocache")], {"SAEZOO_CACHE": "/etc/hostname/cache"}, ["cannot write the activation cache", "SAEZOO_CACHE"]
    if row == "bad-model-dtype-env":
        return ["train", "flat", *model, "--out", str(r / "f16")], {"SAEZOO_MODEL_DTYPE": "float16"}, ["SAEZOO_MODEL_DTYPE must be", "'float16'"]
    if row == "bad-target-l0":
        return ["compare", "flat", "topk", *SYN, "--target-l0", "nan", "--out", str(r / "tl0")], {}, ["--target-l0 must be a positive finite number"]
    if row == "spec-unknown-curriculum":
        return ["compare", "hsae", "hsae@tier-unlok", *SYN], {}, ["unknown curriculum after '@' in 'hsae@tier-unlok'", "did you mean 'tier-unlock'"]
    if row == "spec-incompatible-curriculum":
        return ["compare", "hsae", "flat@tier-unlock", *SYN, "--out", str(r / "sic")], {}, ["curriculum 'tier-unlock'", "architecture 'flat' does not accept"]
    if row == "spec-entry-curriculum":
        return ["compare", "flat", "smollm2-flat@tier-unlock", *SYN], {}, ["registry entry 'smollm2-flat' is evaluated, not trained"]
    if row == "curricula-knob-conflict":
        args = ["--plugins-dir", str(r / "plugins-holdk"), "train", "topk", "--curriculum", "k-anneal+hold-k", *SYN]
        return args, {}, ["curricula 'k-anneal' and 'hold-k' both set knob k", "only *_scale knobs"]
    if row == "curriculum-repeated":
        return ["train", "hsae", "--curriculum", "target-l0+target-l0", *SYN], {}, ["target-l0 named twice"]
    if row == "curriculum-setting-ambiguous":
        args = ["train", "topk", "--curriculum", "k-anneal+sparsity-warmup", *SYN, "--set", "curriculum.steps=10"]
        return args, {}, ["curricula k-anneal and sparsity-warmup both have this setting", "curriculum.k-anneal.steps"]
    if row == "curriculum-setting-unowned":
        args = ["train", "hsae", "--curriculum", "sparsity-warmup+target-l0", *SYN, "--set", "curriculum.unlock_fraction=0.3"]
        return args, {}, ["curriculum.unlock_fraction: none of the curricula sparsity-warmup, target-l0"]
    if row == "curriculum-not-followed":
        args = ["train", "hsae", "--curriculum", "sparsity-warmup", *SYN, "--set", "curriculum.target-l0.target=40"]
        return args, {}, ["does not follow curriculum 'target-l0'"]
    if row == "compare-resume-not-compare":
        return ["compare", "--resume", str(r)], {}, [f"--resume {r}: no compare.json there"]
    if row == "compare-resume-changes":
        return ["compare", "flat", "--resume", str(r)], {}, ["goes on with the comparison as it was started; flat cannot"]
    if row == "compare-no-variants":
        return ["compare"], {}, ["compare needs variants to compare"]
    if row == "seeds-zero":
        return ["compare", "hsae", "flat", *SYN, "--seeds", "0", "--out", str(r / "s0")], {}, ["--seeds 0: give at least one seed"]
    if row == "seeds-duplicate":
        return ["compare", "hsae", "flat", *SYN, "--seeds", "0,1,0", "--out", str(r / "sdup")], {}, ["--seeds '0,1,0': seed 0 given twice"]
    if row == "compare-beyond-memory":
        args = ["compare", "flat", "flat", *SYN, "--seeds", "3", "--set", "sae.expansion_factor=100000000", "--out", str(r / "cbm")]
        return args, {}, ["training 2 variant(s) x 3 seed(s) side by side", "GiB is available"]
    if row == "beyond-memory":
        return ["eval", str(env["run"]), "--tokens", "100000000000"], {}, ["100,000,000,000 tokens", "GiB is available"]
    if row == "empty-argument":
        return ["train", "flat", *SYN, "--out", ""], {}, ["empty argument after --out"]
    if row == "out-of-memory":  # 16 PB: beyond any address space, so malloc fails whatever the overcommit policy
        return ["train", "flat", *SYN, "--set", "sae.expansion_factor=1000000000000", "--out", str(r / "oom")], {}, ["out of memory", "GiB asked for at once"]
    if row == "int-out-of-range":
        return ["train", "flat", *SYN, "--seed", "99999999999999999999", "--out", str(r / "bigseed")], {}, ["train.seed", "out of range"]
    if row == "browse-not-a-run":
        (r / "notes.txt").write_text("x")
        return ["browse", str(r / "notes.txt")], {}, ["notes.txt: not a run directory, SAELens directory or registry entry"]
    if row == "browse-tokens":
        return ["browse", str(env["run"]), "--tokens", "0"], {}, ["--tokens must be >= 1, got 0"]
    if row == "browse-out-is-file":
        (r / "notes.txt").write_text("x")
        return ["browse", str(env["run"]), "--out", str(r / "notes.txt")], {}, ["notes.txt: is a file"]
    if row == "browse-out-not-site":
        return ["browse", str(env["run"]), "--out", str(env["run"])], {}, ["holds other files"]
    if row == "browse-too-many":
        return ["browse", *[str(env["run"])] * 3], {}, ["one run, or two", "got 3"]
    if row == "browse-different-sources":
        runs = [copy_run(env, name) for name in ("src-a", "src-b")]
        for run, dataset in zip(runs, ("one.txt", "two.txt")):
            edit_cfg(run, lambda c, d=dataset: c.update(data={"source": "model", "model": env["model"], "dataset": d, "hook": "model.layers.1"}))
        return ["browse", *map(str, runs), "--out", str(r / "site-ab")], {}, ["read different activations", "'one.txt' vs 'two.txt'"]
    if row == "browse-synthetic":
        return ["browse", str(env["run"]), "--out", str(r / "site-syn")], {}, ["browse needs text", "'synthetic'"]
    if row == "context-too-long":
        return ["train", "flat", *model, "--context-length", "100000", "--out", str(r / "longctx")], {}, ["context_length 100000", "256 positions"]
    raise KeyError(row)


def documented_rows() -> list[str]:
    text = (ROOT / "docs" / "errors.md").read_text()
    return re.findall(r"^\| ([a-z0-9-]+) \|", text, flags=re.M)[1:] if False else [
        row for row in re.findall(r"^\| ([a-z][a-z0-9-]*) \|", text, flags=re.M) if row != "id"
    ]


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.parametrize("row", documented_rows())
def test_error_row(env, row):
    args, extra_env, needles = case(env, row)
    absent = extra_env.pop("_ABSENT", None)  # an --out the failed command must not leave behind
    if extra_env.pop("_FSIZE", None):
        import subprocess
        import sys

        proc = subprocess.run(
            [sys.executable, "-m", "saezoo.cli", *args], capture_output=True, text=True,
            env={**os.environ, **extra_env}, preexec_fn=_limit_file_size, timeout=300,
        )
    else:
        proc = run_cli(*args, env=extra_env)
    assert_one_line_error(proc, *needles)
    assert absent is None or not Path(absent).exists(), f"{absent} left behind"
    leftovers = [p for p in env["root"].rglob("*.tmp")]
    assert not leftovers, f"half-written files left: {leftovers}"


def test_every_row_has_a_case(env):
    rows = documented_rows()
    assert len(rows) == len(set(rows)) >= 30
    for row in rows:
        case(env, row)  # raises KeyError for an undocumented case
