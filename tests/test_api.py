"""saezoo from Python (saezoo/api.py, docs/python.md): the example runs, the keywords mean what
the CLI's options mean, and every CLI command is a call of the API function of its name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import saezoo
from saezoo import api
from saezoo.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "python_api.py"


def test_docs_show_the_example_that_runs():
    """docs/python.md holds examples/python_api.py verbatim, so the example the suite runs is
    the one a reader copies."""
    doc = (ROOT / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert EXAMPLE.read_text() in blocks


@pytest.mark.slow
def test_example_script(tmp_path):
    """Train, load by path and by registry name, encode/decode, evaluate, compare two."""
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"trained {tmp_path / 'topk'}: explained variance")
    assert "-> (16, 512), 4 active latents at most" in lines[1]
    assert lines[3].startswith("flat: explained variance") and lines[4].startswith("my-topk: explained variance 0.")
    assert (tmp_path / "registry" / "my-topk.toml").is_file() and (tmp_path / "compare" / "report.md").is_file()
    assert (tmp_path / "topk" / "metrics.json").is_file()
    # The entry evaluated in the comparison is the run registered: same held-out tokens, same numbers.
    trained = float(lines[0].split("explained variance ")[1].split(",")[0])
    assert float(lines[4].split("explained variance ")[1].split(",")[0]) == pytest.approx(trained, abs=1e-3)


def test_keywords_are_the_cli_options_and_set():
    layer = api.settings_layer(
        {"source": "synthetic", "steps": 5, "seed": None, "k": 8, "train": {"lr": 3e-4}, "curriculum_config": {"target": 4}}
    )
    assert layer["data"] == {"source": "synthetic"}
    assert layer["train"] == {"steps": 5, "lr": 3e-4}  # None is "not given"
    assert layer["sae"] == {"k": 8}  # a bare keyword is a field of the architecture, as a bare --set key
    assert layer["curriculum"] == {"target": 4}
    with pytest.raises(UsageError, match="train=: give the section's settings as a dict"):
        api.settings_layer({"train": 3})


def test_bad_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown architecture 'flta'"):
        saezoo.train("flta", source="synthetic", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()  # a failed start leaves nothing behind
    with pytest.raises(UsageError, match="--steps or --tokens"):
        saezoo.train("flat", source="synthetic", steps=5, tokens=5000)
    with pytest.raises(UsageError, match="no such run directory, SAELens directory or registry entry"):
        saezoo.load(tmp_path / "nope")
    with pytest.raises(UsageError, match="data options are for SAELens directories only"):
        api.open_sae(tmp_path, data={"model": "gpt2"})


WRONG_ARGUMENTS = [
    (lambda: saezoo.train(5, source="synthetic", steps=3), "train(): architecture=5 is not str or None"),
    (lambda: saezoo.train("flat", sets="train.lr=1e-3"), "sets='train.lr=1e-3' is not a list of str"),
    (lambda: saezoo.train("flat", curriculum=None), "curriculum=None is not str"),
    (lambda: saezoo.train("flat", tokens="100"), "tokens='100' is not int or None"),
    (lambda: saezoo.train("flat", steps=3, out=""), "train(): out is an empty path"),
    (lambda: saezoo.train(resume=""), "train(): resume is an empty path"),
    (lambda: saezoo.evaluate("r", tokens=100.5), "evaluate(): tokens=100.5 is not int or None"),
    (lambda: saezoo.evaluate("r", data=["x"]), "data=['x'] is not dict or None"),
    (lambda: saezoo.compare(["flat", "topk"]), "compare(): specs=['flat', 'topk'] is not str"),
    (lambda: saezoo.compare("flat", target_l0="40"), "target_l0='40' is not float or None"),
    (lambda: saezoo.compare("flat", seeds=2.0), "seeds=2.0 is not int, a list of int, str or None"),
    (lambda: saezoo.load(""), "load(): spec is an empty path"),
    (lambda: saezoo.load("r", device="tpu"), "--device 'tpu': not a device"),
]


@pytest.mark.parametrize("call, message", WRONG_ARGUMENTS)
def test_wrong_arguments_name_themselves(call, message, tmp_path, monkeypatch):
    """A notebook's wrong type or empty path is refused before anything runs (they failed deep
    in torch or difflib, and out="" trained into the current directory)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        call()
    assert list(tmp_path.iterdir()) == []


def test_train_load_evaluate_in_process(tmp_path):
    run = saezoo.train(
        "flat", source="synthetic", steps=10, out=tmp_path / "run", train={"eval_tokens": 2048, "eval_every": 0}
    )
    assert run.config.train.steps == 10 and run.metrics["step"] == 10
    sae = run.load()
    x = torch.randn(4, sae.d_in)
    torch.testing.assert_close(sae.encode(x), saezoo.load(str(run.path)).encode(x))
    metrics = saezoo.evaluate(run, tokens=2048)
    assert metrics["explained_variance"] == pytest.approx(run.metrics["explained_variance"], abs=1e-6)
    with pytest.raises(UsageError, match="--steps cannot change it"):
        saezoo.train(resume=run.path, steps=20)


def test_api_names_are_functions_after_the_core_modules_load():
    """saezoo.train/evaluate/compare stay the API's functions once the core's modules (trainer,
    evaluation, comparison) are imported: no submodule of the package has their names."""
    import saezoo.comparison
    import saezoo.evaluation
    import saezoo.trainer  # noqa: F401

    assert saezoo.train is saezoo.api.train and saezoo.evaluate is saezoo.api.evaluate
    assert saezoo.compare is saezoo.api.compare
    with pytest.raises(UsageError, match="unknown architecture"):
        saezoo.compare("flta", source="synthetic")


class Recorder:
    """Stands in for an API function: records its call, returns what the CLI then prints."""

    def __init__(self, result):
        self.result, self.calls = result, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


def test_every_command_calls_the_api(monkeypatch, tmp_path):
    """No second implementation: train, eval, compare and the registry's pull and reproduce
    hand their options to the saezoo.api function and print what it returns."""
    from saezoo.cli import app
    from saezoo.config.resolve import resolve_run

    runner = CliRunner()
    train = Recorder(api.Run(tmp_path, resolve_run("flat"), {"explained_variance": 0.5}))
    monkeypatch.setattr(api, "train", train)
    result = runner.invoke(app, ["train", "flat", "--source", "synthetic", "--steps", "7", "--set", "k=3", "--out", "o"])
    assert result.exit_code == 0, result.output
    (args, kwargs), = train.calls
    assert args == ("flat",) and kwargs["source"] == "synthetic" and kwargs["steps"] == 7
    assert kwargs["sets"] == ["k=3"] and kwargs["out"] == Path("o") and kwargs["progress"] is True
    assert "explained_variance" in result.output

    loaded = api.Loaded("r", None, {}, "run", "the title")
    monkeypatch.setattr(api, "open_sae", Recorder(loaded))
    evaluate = Recorder({"l0": 3.0})
    monkeypatch.setattr(api, "evaluate", evaluate)
    result = runner.invoke(app, ["eval", "somewhere", "--tokens", "99", "--json"])
    assert result.exit_code == 0, result.output
    assert evaluate.calls == [((loaded,), {"tokens": 99, "downstream_tokens": None, "absorption_words": None, "device": None})]
    assert result.output.strip() == '{"l0": 3.0}'

    compare = Recorder(api.Comparison(tmp_path, {"variants": {"a": {"metrics": {"l0": 1.0}}}}))
    monkeypatch.setattr(api, "compare", compare)
    result = runner.invoke(app, ["compare", "flat", "topk", "--seeds", "2", "--target-l0", "4"])
    assert result.exit_code == 0, result.output
    (args, kwargs), = compare.calls
    assert args == ("flat", "topk") and kwargs["seeds"] == "2" and kwargs["target_l0"] == 4.0

    monkeypatch.setattr(api, "pull", Recorder(tmp_path / "w.safetensors"))
    result = runner.invoke(app, ["registry", "pull", "some-entry"])
    assert result.exit_code == 0 and f"some-entry: {tmp_path / 'w.safetensors'}" in result.output

    rows = [("explained_variance", 0.7, 0.69, 0.01, "±0.01", True), ("l0", 4.0, 5.0, 1.0, "±5%", False)]
    reproduce = Recorder(api.Reproduction("e", api.Run(tmp_path, None, {}), rows, False, None))
    monkeypatch.setattr(api, "reproduce", reproduce)
    result = runner.invoke(app, ["registry", "reproduce", "e", "--out", "o", "-q"])
    assert result.exit_code == 1  # a metric outside its tolerance
    assert reproduce.calls == [(("e",), {"out": Path("o"), "progress": False})]
    assert "NO" in result.output and "nothing was installed" in result.output
