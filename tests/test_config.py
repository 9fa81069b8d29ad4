"""Config parsing: --set, TOML files, presets, type checks."""

from __future__ import annotations

from typing import Literal, Optional

import pytest

from saezoo.config import TrainConfig
from saezoo.config.coerce import coerce
from saezoo.config.fields import field_docs
from saezoo.config.layers import parse_set
from saezoo.config.resolve import resolve_run
from saezoo.errors import UsageError


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("3", int, 3),
        ("1e3", int, 1000),
        ("1_000", int, 1000),
        ("0.5", float, 0.5),
        ("true", bool, True),
        ("off", bool, False),
        ("none", Optional[float], None),
        ("2.5", Optional[float], 2.5),
        ("1,2,3", list[int], [1, 2, 3]),
        ("3,", list[int], [3]),
        ("", list[int], []),
        ("[0.1, 0.2]", list[float], [0.1, 0.2]),
        ("0.9,0.99", tuple[float, float], (0.9, 0.99)),
        ("cubic", Literal["linear", "cubic"], "cubic"),
    ],
)
def test_coerce(value, tp, expected):
    assert coerce(value, tp, "k") == expected


@pytest.mark.parametrize(
    ("value", "tp"),
    [("abc", int), ("1.5", int), ("x", float), ("maybe", bool), ("square", Literal["linear", "cubic"]), ("1,2,3", tuple[float, float]),
     ("99999999999999999999", int), (10**30, int), ("nan", float), ("-inf", float), ("1,,2", list[int]),
     ("[1, nan]", list[float])],
)
def test_coerce_rejects(value, tp):
    with pytest.raises(UsageError, match="^k: "):
        coerce(value, tp, "k")


def test_parse_set_sections():
    parsed = parse_set(["train.lr=1e-3", "l1_coefficient=3", "data.synthetic.d_in=32"])
    assert parsed["train"] == {"lr": "1e-3"}
    assert parsed["sae"] == {"l1_coefficient": "3"}
    assert parsed["data"] == {"synthetic": {"d_in": "32"}}
    with pytest.raises(UsageError, match="key=value"):
        parse_set(["lr"])


def test_resolve_run_layers(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nlr = 0.01\nsteps = 7\n[sae]\nexpansion_factor = 2\n')
    run = resolve_run("flat", config_file=toml, options={"train": {"steps": 9}}, sets=["train.lr=0.02"])
    assert run.train.lr == 0.02 and run.train.steps == 9 and run.sae.expansion_factor == 2
    run = resolve_run("flat", sets=["train.batch_size=100"], tokens=1050)
    assert run.train.steps == 10


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["l1_coeficient=3"], "did you mean sae.l1_coefficient"),
        (["train.lrr=1"], "did you mean train.lr"),
        (["train.lr=fast"], "train.lr: 'fast' is not a number"),
        (["train.lr=-1"], "train.lr must be > 0"),
        (["data.source=web"], "data.source"),
    ],
)
def test_resolve_run_errors(sets, needle):
    with pytest.raises(UsageError, match=needle):
        resolve_run("flat", sets=sets)


@pytest.mark.parametrize("sets", [["sae.l1_coefficient=nan"], ["train.lr=inf"], ["train.betas=0.9,nan"],
                                  ["data.max_norm_multiple=-inf"], ["train.grad_clip=NaN"]])
def test_non_finite_numbers_are_refused(sets):
    """NaN or infinity in any float setting would train into NaN weights and exit 0."""
    with pytest.raises(UsageError, match="is not a finite number"):
        resolve_run("flat", sets=sets)


def test_non_finite_numbers_are_refused_in_files_and_curricula(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[curriculum]\ntarget = nan\n")  # TOML has nan and inf literals
    with pytest.raises(UsageError, match="curriculum.target: nan is not a finite number"):
        resolve_run("hsae", curriculum="target-l0", config_file=toml)
    with pytest.raises(UsageError, match="curriculum.target: 'inf' is not a finite number"):
        resolve_run("hsae", curriculum="target-l0", sets=["curriculum.target=inf"])


def test_a_section_that_is_not_a_table_is_refused():
    from saezoo.config.resolve import run_from_dict

    data = resolve_run("flat").to_dict()
    with pytest.raises(UsageError, match="^train: expected a table of settings, got str 'fast'"):
        run_from_dict({**data, "train": "fast"})
    with pytest.raises(UsageError, match="^data: expected a table of settings, got list"):
        run_from_dict({**data, "data": [1]})


def test_model_dtype_switch(monkeypatch):
    """SAEZOO_MODEL_DTYPE says what auto means (the suite runs under both); an explicit dtype wins."""
    import torch

    from saezoo.activations.model import resolve_model_dtype

    monkeypatch.setenv("SAEZOO_MODEL_DTYPE", "float32")
    assert resolve_model_dtype("auto", "cuda") is torch.float32
    assert resolve_model_dtype("bfloat16", "cpu") is torch.bfloat16
    monkeypatch.setenv("SAEZOO_MODEL_DTYPE", "bfloat16")
    assert resolve_model_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setenv("SAEZOO_MODEL_DTYPE", "auto")
    assert resolve_model_dtype("auto", "cuda") is torch.bfloat16
    monkeypatch.setenv("SAEZOO_MODEL_DTYPE", "half")
    with pytest.raises(UsageError, match="SAEZOO_MODEL_DTYPE must be auto, float32 or bfloat16; got 'half'"):
        resolve_model_dtype("auto", "cpu")


def test_unknown_preset_and_curriculum():
    with pytest.raises(UsageError, match="unknown preset"):
        resolve_run("flat", preset="fancy")
    with pytest.raises(UsageError, match="unknown curriculum"):
        resolve_run("flat", curriculum="nope")


def test_bad_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(UsageError, match="invalid TOML"):
        resolve_run("flat", config_file=bad)
    extra = tmp_path / "extra.toml"
    extra.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(UsageError, match="unknown table"):
        resolve_run("flat", config_file=extra)


def test_field_docs_are_help():
    docs = field_docs(TrainConfig)
    assert docs["lr"] == "Peak learning rate."
    from saezoo.plugins import get_plugins

    for name in get_plugins().architectures.names():
        cls = get_plugins().architectures.get(name)
        missing = [f for f in cls.Config.__dataclass_fields__ if f not in field_docs(cls.Config)]
        assert not missing, f"{name}: fields without a docstring: {missing}"
