"""Interop with SAELens: ``saezoo export --format saelens`` and ``saezoo eval`` on a SAELens
directory. The expected format is written out here, independently of saezoo/export.py, from
SAELens 6.54.12's source (``sae_lens/saes/{standard,topk,jumprelu,gated}_sae.py``,
``SAE.save_model``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saezoo import checkpoint, export
from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource
from saezoo.errors import UsageError

from helpers import assert_one_line_error, fast_train_args, run_cli

# SAELens architecture -> {tensor: shape in terms of d_in / d_sae}.
SAELENS_TENSORS = {
    "standard": {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_enc": ("d_sae",), "b_dec": ("d_in",)},
    "topk": {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_enc": ("d_sae",), "b_dec": ("d_in",)},
    "jumprelu": {
        "W_enc": ("d_in", "d_sae"),
        "W_dec": ("d_sae", "d_in"),
        "b_enc": ("d_sae",),
        "b_dec": ("d_in",),
        "threshold": ("d_sae",),
    },
    "gated": {
        "W_enc": ("d_in", "d_sae"),
        "W_dec": ("d_sae", "d_in"),
        "b_gate": ("d_sae",),
        "r_mag": ("d_sae",),
        "b_mag": ("d_sae",),
        "b_dec": ("d_in",),
    },
}
# Keys of cfg.json that SAEConfig.to_dict() writes for every architecture (topk adds two).
SAELENS_CFG_KEYS = {
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
    "normalize_activations", "reshape_activations", "metadata",
}
IMPORTS = {"standard": "flat", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
EXPORTS = {
    "flat": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
}


def saelens_reference(arch: str, cfg: dict, t: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, x_hat) as SAELens 6.54.12 computes them (encode/decode of its inference classes)."""
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    W_dec = t["W_dec"]
    if arch == "gated":
        active = (sae_in @ t["W_enc"] + t["b_gate"] > 0).float()
        codes = active * torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    else:
        pre = sae_in @ t["W_enc"] + t["b_enc"]
        if arch == "standard":
            codes = torch.relu(pre)
        elif arch == "jumprelu":
            codes = torch.relu(pre) * (pre > t["threshold"]).float()
        else:  # topk
            if cfg.get("rescale_acts_by_decoder_norm"):
                pre = pre * W_dec.norm(dim=-1)
            values, idx = pre.topk(cfg["k"], dim=-1)
            codes = torch.zeros_like(pre).scatter(-1, idx, values.relu())
            if cfg.get("rescale_acts_by_decoder_norm"):
                return codes, (codes / W_dec.norm(dim=-1)) @ W_dec + t["b_dec"]
    return codes, codes @ W_dec + t["b_dec"]


def check_saelens_format(out: Path, arch: str, d_in: int, d_sae: int) -> dict:
    """The directory holds SAELens's two files with its keys, tensor names and shapes."""
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    extra = {"k", "rescale_acts_by_decoder_norm"} if arch == "topk" else set()
    assert set(cfg) == SAELENS_CFG_KEYS | extra
    assert cfg["architecture"] == arch and (cfg["d_in"], cfg["d_sae"]) == (d_in, d_sae)
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    if arch == "topk":
        assert isinstance(cfg["k"], int) and cfg["rescale_acts_by_decoder_norm"] is False
    sizes = {"d_in": d_in, "d_sae": d_sae}
    with safe_open(str(out / "sae_weights.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert shapes == {k: tuple(sizes[d] for d in dims) for k, dims in SAELENS_TENSORS[arch].items()}
    assert dtypes == {"F32"}
    return cfg


def write_run(path: Path, arch: str, d_in: int = 16) -> tuple:
    """A saezoo run directory written in-process (no training; BatchTopK's threshold set by
    one training-mode forward pass)."""
    torch.manual_seed(0)
    sae = checkpoint.build_sae(arch, d_in, {})
    x = torch.randn(256, d_in)
    sae.init_from_data(x)
    with torch.no_grad():
        sae.train()(x, {}, None)
    sae.eval()
    data = {"source": "synthetic", "synthetic": {"d_in": d_in}}
    header = checkpoint.run_header(arch, d_in, {"sae": dataclasses.asdict(sae.cfg), "data": data, "train": {}}, {"source": "synthetic"})
    checkpoint.write_json(path / "cfg.json", header)
    checkpoint.save_sae(path, sae)
    return sae, x


def write_saelens(path: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))


def random_saelens(arch: str, d_in: int = 24, d_sae: int = 100, **cfg_extra) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(3)
    tensors = {
        name: torch.randn(*[{"d_in": d_in, "d_sae": d_sae}[d] for d in dims], generator=gen) * 0.3
        for name, dims in SAELENS_TENSORS[arch].items()
    }
    if arch == "jumprelu":
        tensors["threshold"] = torch.rand(d_sae, generator=gen) * 0.5
        tensors["threshold"][:10] = 0
    cfg = {
        "architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre"},
        **cfg_extra,
    }
    return cfg, tensors


# --- export, in-process --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(EXPORTS))
def test_export_writes_the_saelens_format(arch, tmp_path):
    sae, x = write_run(tmp_path / "run", arch)
    done = export.export_run(tmp_path / "run", tmp_path / "out", "saelens")
    assert done["saelens_architecture"] == EXPORTS[arch]
    cfg = check_saelens_format(tmp_path / "out", EXPORTS[arch], 16, sae.width)
    assert cfg["metadata"]["saezoo"]["architecture"] == arch
    tensors, _ = checkpoint.load_tensors(tmp_path / "out" / "sae_weights.safetensors")
    codes, x_hat = saelens_reference(EXPORTS[arch], cfg, tensors, x)
    with torch.no_grad():
        torch.testing.assert_close(codes, sae.encode(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x_hat, sae.decode(sae.encode(x)), rtol=1e-5, atol=1e-5)


def test_export_of_an_lm_run_names_its_hooks(tmp_path):
    sae, _ = write_run(tmp_path / "run", "flat")
    header = json.loads((tmp_path / "run" / "cfg.json").read_text())
    header["data"] = {"source": "model", "model": "gpt2", "hook": None, "dataset": "/texts", "context_length": 128}
    header["source"] = {"source": "model", "hook": "transformer.h.8"}
    cfg, _ = export.to_saelens(sae, header)
    meta = cfg["metadata"]
    assert meta["model_name"] == "gpt2" and meta["hf_hook_name"] == "transformer.h.8"
    assert meta["hook_name"] == "blocks.8.hook_resid_post" and meta["context_size"] == 128
    assert export.transformer_lens_hook("model.layers.19") == "blocks.19.hook_resid_post"
    assert export.transformer_lens_hook("model.layers.19.mlp") is None


def test_hsae_is_refused_in_one_line(tmp_path):
    write_run(tmp_path / "run", "hsae")
    proc = run_cli("export", str(tmp_path / "run"), "--format", "saelens", str(tmp_path / "out"))
    assert_one_line_error(proc, "'hsae'", "no SAELens counterpart", "SAE.to_saelens", "standard->flat", "formats: saelens")
    assert not (tmp_path / "out").exists()


def test_export_refusals(tmp_path):
    write_run(tmp_path / "run", "flat")
    with pytest.raises(UsageError, match="unknown export format 'onnx'.*available: saelens"):
        export.export_run(tmp_path / "run", tmp_path / "out", "onnx")
    export.export_run(tmp_path / "run", tmp_path / "out")
    with pytest.raises(UsageError, match="already holds"):
        export.export_run(tmp_path / "run", tmp_path / "out")
    with pytest.raises(UsageError, match="already a SAELens directory"):
        export.export_run(tmp_path / "out", tmp_path / "out2")


def test_a_run_with_non_finite_weights_is_not_exported(tmp_path):
    """eval refuses such weights (exit 3); export wrote them and exited 0."""
    proc = run_cli(*fast_train_args("flat", tmp_path / "run", 5))
    assert proc.returncode == 0, proc.stderr
    weights = tmp_path / "run" / checkpoint.WEIGHTS_FILE
    tensors, _ = checkpoint.load_tensors(weights)
    tensors["b_enc"][3] = -float("inf")
    weights.unlink()  # a link into state/: the damaged copy replaces it, with its own sha256
    checkpoint.save_tensors(weights, tensors)
    proc = run_cli("export", str(tmp_path / "run"), str(tmp_path / "out"))
    assert proc.returncode == 3 and "non-finite weights (b_enc)" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_whose_weights_overflow_is_not_exported_and_not_blamed_on_the_mapping(tmp_path):
    # lr 1e30: finite weights of ~1e30 whose codes are not finite (train itself exits 3).
    run_cli(*fast_train_args("flat", tmp_path / "run", 10, "--set", "train.lr=1e30", "--set", "train.grad_clip=none"))
    proc = run_cli("export", str(tmp_path / "run"), str(tmp_path / "out"))
    assert proc.returncode == 3, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "gives non-finite codes" in line and "mapping" not in line
    assert not (tmp_path / "out").exists()


def test_batchtopk_without_a_threshold_is_refused(tmp_path):
    sae = checkpoint.build_sae("batchtopk", 16, {})
    header = {"architecture": "batchtopk", "sae": dataclasses.asdict(sae.cfg)}
    with pytest.raises(UsageError, match="no inference threshold"):
        export.to_saelens(sae.eval(), header)


# --- import ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {"k": 8, "rescale_acts_by_decoder_norm": False}),
        ("topk", {"k": 8, "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": False}),
        ("jumprelu", {}),
        ("jumprelu", {"apply_b_dec_to_input": False}),
        ("gated", {}),
        ("gated", {"apply_b_dec_to_input": False}),
    ],
)
def test_import_reproduces_saelens(arch, extra, tmp_path):
    """A width that is no multiple of d_in (100 for 24), and the options saezoo folds away."""
    cfg, tensors = random_saelens(arch, **extra)
    write_saelens(tmp_path / "sl", cfg, tensors)
    assert export.is_saelens_dir(tmp_path / "sl")
    sae, info = export.import_saelens(tmp_path / "sl")
    assert info["architecture"] == IMPORTS[arch] and sae.width == 100 and sae.d_in == 24
    x = torch.randn(256, 24, generator=torch.Generator().manual_seed(4))
    codes, x_hat = saelens_reference(arch, cfg, tensors, x)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat, rtol=1e-4, atol=1e-4)
    assert not any(t.is_meta for t in sae.state_dict().values())


def test_a_missing_checksum_is_explicit(tmp_path, capfd, monkeypatch):
    """SAELens writes no sha256: its files load unchecked, silently. A saezoo run's weights always
    carry one, so a file without it (weights x100 with the metadata stripped) is refused,
    unless SAEZOO_ALLOW_UNCHECKED_WEIGHTS is set."""
    cfg, tensors = random_saelens("standard")
    write_saelens(tmp_path / "sl", cfg, tensors)
    capfd.readouterr()
    export.import_saelens(tmp_path / "sl")
    assert capfd.readouterr().err == ""

    weights = tmp_path / "sae.safetensors"
    checkpoint.save_tensors(weights, {"w": torch.ones(3)})
    assert checkpoint.load_tensors(weights)[0]["w"].sum() == 3 and capfd.readouterr().err == ""
    save_file({"w": torch.full((3,), 100.0)}, str(weights))
    with pytest.raises(UsageError, match="no sha256 in its metadata.*SAEZOO_ALLOW_UNCHECKED_WEIGHTS=1"):
        checkpoint.load_tensors(weights)
    monkeypatch.setenv("SAEZOO_ALLOW_UNCHECKED_WEIGHTS", "1")
    assert checkpoint.load_tensors(weights)[0]["w"].sum() == 300
    assert "carries no sha256; loaded unchecked" in capfd.readouterr().err


def test_import_of_a_pre_6_config(tmp_path):
    cfg, tensors = random_saelens("topk")
    old = {k: v for k, v in cfg.items() if k not in ("architecture", "metadata", "k", "reshape_activations")}
    old.update(activation_fn_str="topk", activation_fn_kwargs={"k": 5}, hook_point="blocks.8.hook_resid_pre",
               normalize_activations=False, model_name="gpt2")
    write_saelens(tmp_path / "sl", old, {**tensors, "scaling_factor": torch.ones(100)})
    sae, info = export.import_saelens(tmp_path / "sl")
    assert info["saelens_architecture"] == "topk" and sae.cfg.k == 5
    assert info["hook_name"] == "blocks.8.hook_resid_pre" and info["model_name"] == "gpt2"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"architecture": "matching_pursuit"}, "SAELens architecture 'matching_pursuit' has no saezoo counterpart"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm' is not supported"),
        ({"d_sae": 99}, "tensor W_enc has shape (24, 100), cfg.json implies (24, 99)"),
        ({"metadata": "x"}, "metadata must be an object, got 'x'"),
        ({"apply_b_dec_to_input": "no"}, "apply_b_dec_to_input must be true or false, got 'no'"),
    ],
)
def test_import_refusals(change, needle, tmp_path):
    cfg, tensors = random_saelens("standard")
    write_saelens(tmp_path / "sl", {**cfg, **change}, tensors)
    with pytest.raises(UsageError) as err:
        export.import_saelens(tmp_path / "sl")
    assert needle in str(err.value)


def test_eval_of_a_saelens_directory(tmp_path):
    cfg, tensors = random_saelens("standard", d_in=64, d_sae=128)
    write_saelens(tmp_path / "sl", cfg, tensors)
    proc = run_cli("eval", str(tmp_path / "sl"))
    assert_one_line_error(proc, "SAELens directory", "--model", "--hook", "--dataset", "blocks.8.hook_resid_pre")
    proc = run_cli("eval", str(tmp_path / "sl"), "--source", "synthetic", "--tokens", "2048", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {"explained_variance", "l0", "mean_max_cosine"} <= set(json.loads(proc.stdout))
    assert sorted(p.name for p in (tmp_path / "sl").iterdir()) == ["cfg.json", "sae_weights.safetensors"]


def test_eval_header_data_source():
    info = {"architecture": "flat", "sae": {"expansion_factor": 2}, "d_in": 64, "hf_hook_name": "model.layers.6", "saezoo": None}
    # A published SAE: the hook comes from hf_hook_name, model and dataset must be given.
    with pytest.raises(UsageError, match="give --model, --dataset"):
        export.eval_header(info, {}, "sl")
    header = export.eval_header(info, {"model": "gpt2", "dataset": "/texts"}, "sl")
    assert header["data"] == {"source": "model", "model": "gpt2", "dataset": "/texts", "hook": "model.layers.6"}
    assert header["train"]["steps"] * 4096 >= 16384  # a small harvest for the outlier threshold
    # A saezoo export of an LM run: its own data source (default hook kept) and token counts.
    recorded = {"data": {"source": "model", "model": "m", "hook": None, "dataset": "d"}, "train": {"steps": 500, "batch_size": 1024}}
    header = export.eval_header({**info, "saezoo": recorded}, {}, "sl")
    assert header["data"]["hook"] is None and header["train"]["steps"] == 500
    header = export.eval_header({**info, "saezoo": recorded}, {"dataset": "other"}, "sl")
    assert header["data"]["dataset"] == "other" and header["train"]["steps"] == 16


def test_data_options_are_for_saelens_directories_only(tmp_path):
    write_run(tmp_path / "run", "flat")
    proc = run_cli("eval", str(tmp_path / "run"), "--model", "gpt2")
    assert_one_line_error(proc, "--model", "SAELens directories only")


# --- train, export, read back: every exportable architecture through the real CLI ----------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in runs:
            out = tmp_path_factory.mktemp(arch) / "run"
            proc = run_cli(*fast_train_args(arch, out, 10, "--set", "sae.expansion_factor=2"))
            assert proc.returncode == 0, proc.stderr
            runs[arch] = out
        return runs[arch]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(EXPORTS))
def test_train_export_reimport(arch, trained, tmp_path):
    run = trained(arch)
    out = tmp_path / "saelens"
    proc = run_cli("export", str(run), "--format", "saelens", str(out))
    assert proc.returncode == 0, proc.stderr
    check_saelens_format(out, EXPORTS[arch], 64, 128)
    ours, _ = checkpoint.load_sae(run)
    back, info = export.import_saelens(out)
    assert info["saelens_architecture"] == EXPORTS[arch] and info["saezoo"]["architecture"] == arch
    x = SyntheticSource(SyntheticConfig()).eval_activations(2048)
    with torch.no_grad():
        codes = ours.encode(x)
        torch.testing.assert_close(back.encode(x), codes, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(back.decode(codes), ours.decode(codes), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_eval_of_an_export_matches_the_run(trained, tmp_path):
    """The export records its data source, so `saezoo eval` needs no options and agrees."""
    run = trained("flat")
    assert run_cli("export", str(run), str(tmp_path / "sl")).returncode == 0
    ours = run_cli("eval", str(run), "--json", "--tokens", "2048")
    theirs = run_cli("eval", str(tmp_path / "sl"), "--json", "--tokens", "2048")
    assert ours.returncode == 0 and theirs.returncode == 0, (ours.stderr, theirs.stderr)
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert set(a) == set(b)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


# --- the real SAELens, when installed ----------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(EXPORTS))
def test_saelens_loads_the_export(arch, tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (not a saezoo dependency)")
    ours, x = write_run(tmp_path / "run", arch)
    export.export_run(tmp_path / "run", tmp_path / "out")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "out"), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(theirs(x), ours.decode(ours.encode(x)), rtol=1e-5, atol=1e-5)
