"""The SAE contract (:mod:`saezoo.sae`) as checks that run on any registered architecture.

``saezoo check ARCH`` runs them for a plugin author on an installed plugin (entry points
loaded, as a user's command loads them); ``tests/test_contract.py`` runs them on every
built-in architecture. A check raises ``AssertionError`` (or any exception) when the
architecture breaks the contract, and :class:`Skip` when a part it need not have is absent.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from saezoo import checkpoint
from saezoo.sae import SAE, group_slices

D_IN = 16
TOKENS = 64


class Skip(Exception):
    """The check does not apply to this architecture (an optional part it does not have)."""


def build(name: str) -> SAE:
    torch.manual_seed(0)
    return checkpoint.build_sae(name, D_IN, {})


def sample() -> torch.Tensor:
    return torch.randn(TOKENS, D_IN, generator=torch.Generator().manual_seed(1))


def config(name: str) -> None:
    """The Config is a dataclass whose every field has a default and a docstring (its help)."""
    from saezoo.config.fields import field_docs
    from saezoo.plugins import get_plugins

    cls = get_plugins().architectures.get(name)
    assert dataclasses.is_dataclass(cls.Config), f"{cls.__name__}.Config is not a dataclass"
    docs = field_docs(cls.Config)
    undocumented = [f.name for f in dataclasses.fields(cls.Config) if not docs.get(f.name)]
    assert not undocumented, f"Config fields without a docstring (their --set help): {', '.join(undocumented)}"


def shapes_and_finite_losses(name: str) -> None:
    """Shapes of codes, reconstruction and dictionary; groups that cover the codes; finite
    scalar losses that backpropagate; the training-loop hooks run."""
    x = sample()
    sae = build(name)
    sae.init_from_data(x)
    sae.begin_step(0, 1)  # the trainer's order: begin_step, forward, backward, after_*, reorganise
    out = sae(x, {}, torch.zeros(sae.width, dtype=torch.bool))
    assert out.x_hat.shape == x.shape, f"x_hat has shape {tuple(out.x_hat.shape)}, x {tuple(x.shape)}"
    assert out.codes.shape == (TOKENS, sae.width), f"codes have shape {tuple(out.codes.shape)}"
    assert sae.decoder_directions().shape == (sae.width, D_IN)
    assert sum(size for _, size in sae.latent_groups()) == sae.width, "latent_groups do not sum to the width"
    assert group_slices(sae)[-1][1].stop == sae.width
    assert out.losses, "forward returned no loss"
    bad = [k for k, v in out.losses.items() if v.dim() != 0 or not torch.isfinite(v)]
    assert not bad, f"losses not finite scalars: {', '.join(bad)}"
    sum(out.losses.values()).backward()
    sae.after_backward()
    sae.after_step()
    sae.reorganise(1, 1)
    assert dataclasses.is_dataclass(sae.cfg)


def training_state_round_trip(name: str) -> None:
    """What ``training_state`` returns goes into each checkpoint (safetensors) and back to
    ``load_training_state`` on resume: tensors only, and the same state after the trip."""
    training_state_survives(lambda: build(name))


def training_state_survives(make: Callable[[], SAE]) -> None:
    """:func:`training_state_round_trip` on the SAEs ``make`` builds (the same one each call)."""
    x = sample()
    sae = make()
    sae.init_from_data(x)
    sae.begin_step(0, 2)
    sum(sae(x, {}, torch.zeros(sae.width, dtype=torch.bool)).losses.values()).backward()
    sae.after_step()
    state = sae.training_state()
    if not state:
        raise Skip("no training state (training_state() is empty)")
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    assert not bad, f"training_state() values that are not tensors: {', '.join(bad)}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.safetensors"
        checkpoint.save_tensors(path, state)
        saved, _ = checkpoint.load_tensors(path)
    fresh = make()
    fresh.init_from_data(x)
    fresh.load_training_state(saved)
    again = fresh.training_state()
    assert again.keys() == state.keys(), f"keys after the trip: {sorted(again)} against {sorted(state)}"
    differ = [k for k in state if not torch.equal(again[k], state[k])]
    assert not differ, f"training state that load_training_state did not restore: {', '.join(differ)}"


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float, atol: float) -> None:
    try:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {str(exc).splitlines()[0]}") from None


def fold_input_scale(name: str) -> None:
    """After ``fold_input_scale(s)`` the SAE on raw x gives what it gave on x * s, over s."""
    x = sample()
    sae = build(name)
    sae.init_from_data(x)
    sae.eval()
    scale = 0.37
    with torch.no_grad():
        codes = sae.encode(x * scale)
        x_hat = sae.decode(codes) / scale
        sae.fold_input_scale(scale)
        _assert_close(sae.encode(x), codes, "codes after folding", 1e-4, 1e-5)
        _assert_close(sae.decode(sae.encode(x)), x_hat, "reconstruction after folding", 1e-4, 1e-4)


def save_load_round_trip(name: str) -> None:
    """Saved and loaded through the registry: the same class, bit for bit the same outputs."""
    from saezoo.plugins import get_plugins

    x = sample()
    sae = build(name)
    sae.init_from_data(x)
    sae.eval()
    with tempfile.TemporaryDirectory() as tmp:
        header = checkpoint.run_header(name, D_IN, {"sae": dataclasses.asdict(sae.cfg)}, {"source": "test"})
        checkpoint.write_json(Path(tmp) / checkpoint.CFG_FILE, header)
        checkpoint.save_sae(tmp, sae)
        loaded, cfg = checkpoint.load_sae(tmp)
    # The registered class, or the subclass it builds for this config (hsae's couplings).
    assert isinstance(loaded, get_plugins().architectures.get(cfg["architecture"])) and type(loaded) is type(sae)
    with torch.no_grad():
        _assert_close(loaded.encode(x), sae.encode(x), "codes after loading", 0, 0)
        _assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)), "reconstruction after loading", 0, 0)


def structural_tree(name: str) -> None:
    """``latent_parents()``, where there is one: a parent index or -1 per latent, no latent its own parent."""
    sae = build(name)
    parents = sae.latent_parents()
    if parents is None:
        raise Skip("no structural tree (latent_parents() is None)")
    assert parents.shape == (sae.width,) and parents.dtype == torch.int64, "latent_parents() is not [width] int64"
    assert ((parents >= -1) & (parents < sae.width)).all(), "a parent index outside the codes"
    assert (parents != torch.arange(sae.width)).all(), "a latent is its own parent"


def l0_control(name: str) -> None:
    """``l0_control(cfg, target)`` gives settings that apply to this architecture."""
    from saezoo.config.resolve import resolve_run
    from saezoo.plugins import get_plugins

    cls = get_plugins().architectures.get(name)
    control = cls.l0_control(cls.Config(), 8.0)
    if control is None:
        raise Skip("no L0 control (compare --target-l0 refuses it)")
    curriculum, sets = control
    resolve_run(name, curriculum=curriculum or "constant", sets=sets)  # a bad key or curriculum raises


def saelens_round_trip(name: str) -> None:
    """``to_saelens()``, where there is a mapping: read back by the SAELens reader, it encodes
    and decodes as the SAE does (what every ``saezoo export`` checks), with every parameter
    moved off its initialisation (a mapping must hold for any trained weights, not only for
    zero biases)."""
    from saezoo import export

    x = sample()
    sae = build(name)
    sae.init_from_data(x)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in sae.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        sae.train()(x, {}, None)  # state estimated in training (BatchTopK's threshold)
    sae.eval()
    header = {"architecture": name, "sae": dataclasses.asdict(sae.cfg)}
    if sae.to_saelens() is None:
        raise Skip("no SAELens counterpart (to_saelens() is None)")
    cfg, tensors = export.to_saelens(sae, header)
    copy, _ = export.from_saelens(cfg, tensors, f"the SAELens form of {name}")
    export.check_same(sae, copy, f"the SAELens form of {name}")


CHECKS: dict[str, Callable[[str], None]] = {
    f.__name__: f
    for f in (
        config,
        shapes_and_finite_losses,
        fold_input_scale,
        save_load_round_trip,
        training_state_round_trip,
        structural_tree,
        l0_control,
        saelens_round_trip,
    )
}


def run(name: str) -> list[tuple[str, str, str]]:
    """``(check, "ok" | "skip" | "FAIL", detail)`` for each check on architecture ``name``."""
    results = []
    for check, fn in CHECKS.items():
        try:
            fn(name)
        except Skip as exc:
            results.append((check, "skip", str(exc)))
        except Exception as exc:  # a plugin's bug of any kind is a failed check, not a crash
            detail = " ".join(str(exc).split()) or type(exc).__name__
            results.append(
                (check, "FAIL", f"{type(exc).__name__}: {detail}" if not isinstance(exc, AssertionError) else detail)
            )
        else:
            results.append((check, "ok", ""))
    return results
