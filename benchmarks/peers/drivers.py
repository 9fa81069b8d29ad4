"""One SAE library's training run on the shared synthetic activations, in its own process.

    python drivers.py NAME --data FILE --json OUT [--steps 200 --warmup 10 ...]

``run.py`` starts one process per driver, so that ``ru_maxrss`` is that library's peak
alone: saezoo's drivers with the system python, the peers' with the peers' venv python.
Each driver builds the library's own SAE, loss and optimiser step, exactly as that
library's trainer runs them (the source each one follows is named in its docstring),
and hands back two callables: ``step(x)`` (one optimiser step on a batch) and
``reconstruct(x) -> (x_hat, fired)`` (the library's inference path; ``fired`` is a
bool ``[batch, width]`` of non-zero codes). Everything else (data, threads, timing,
held-out metrics, peak RSS) is this file's, so it is the same for every library.

Only plain torch and safetensors are imported at the top: each driver imports its own
library, so the file runs in either environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, peak_rss_mib, set_threads, throughput, vm_hwm_mib  # noqa: E402


@dataclass
class Settings:
    d_in: int
    width: int
    k: int
    lr: float
    l1: float
    batch: int
    steps: int
    warmup: int
    seed: int


@dataclass
class Driver:
    step: Callable[[Tensor], Any]
    reconstruct: Callable[[Tensor], tuple[Tensor, Tensor]]
    info: dict[str, Any] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None


DRIVERS: dict[str, tuple[str, Callable[[Settings, Tensor], Driver]]] = {}


def driver(name: str, package: str):
    def register(fn):
        DRIVERS[name] = (package, fn)
        return fn

    return register


def fired_from_topk(indices: Tensor, values: Tensor, width: int) -> Tensor:
    fired = torch.zeros(indices.shape[0], width, dtype=torch.bool)
    fired.scatter_(1, indices, values != 0)
    return fired


# --- saezoo (system python) ------------------------------------------------------------------


def _saezoo(arch: str, s: Settings, sample: Tensor, sae_options: dict[str, Any], autocast: str = "none") -> Driver:
    """saezoo's real ``Trainee.train_step`` (saezoo/trainer.py), set up as ``train_many``
    does: ``resolve_run`` for the config, ``Trainee.start`` on the first INIT_TOKENS
    tokens (normalisation scale, data-dependent init, step-0 checkpoint, TensorBoard
    writer; scalars are logged every ``log_every`` = 10 steps as in a real run).
    ``autocast="bf16"``: the SAE's forward under ``torch.autocast`` (``train.autocast``)."""
    from saezoo.config.resolve import resolve_run
    from saezoo.evaluation import evaluate_sae
    from saezoo.trainer import Trainee

    run = resolve_run(
        arch,
        options={
            "train": {
                "batch_size": s.batch,
                "steps": s.warmup + s.steps,
                "lr": s.lr,
                "optimizer": "adam",
                "warmup_steps": 0,
                "decay": "none",
                "device": "cpu",
                "seed": s.seed,
                "eval_every": 0,
                "checkpoint_every": 0,
                "autocast": autocast,
            },
            "sae": {"expansion_factor": s.width // s.d_in, **sae_options},
        },
    )
    tmp = tempfile.TemporaryDirectory(prefix="saezoo-peers-")
    trainee = Trainee(run, s.d_in, Path(tmp.name), {"source": "benchmark"}, torch.device("cpu"))
    trainee.start(sample)
    holder: dict[str, Any] = {}

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        if "sae" not in holder:
            holder["sae"] = trainee.inference_copy()
        sae = holder["sae"]
        codes = sae.encode(x)
        return sae.decode(codes), codes != 0

    def cleanup() -> None:
        trainee.close()
        tmp.cleanup()

    d = Driver(trainee.train_step, reconstruct, {"config": run.to_dict()["sae"], "scale": trainee.scale}, cleanup)
    d.info["cross_check"] = lambda x: evaluate_sae(trainee.inference_copy(), x.split(s.batch), None, torch.device("cpu"))
    return d


@driver("saezoo flat", "saezoo")
def saezoo_flat(s: Settings, sample: Tensor) -> Driver:
    return _saezoo("flat", s, sample, {"l1_coefficient": s.l1})


@driver("saezoo topk", "saezoo")
def saezoo_topk(s: Settings, sample: Tensor) -> Driver:
    return _saezoo("topk", s, sample, {"k": s.k})


# Extras, not in the fp32 comparison: bf16 autocast runs the matmuls on the CPU's bf16
# units where it has them (AMX here); no peer's trainer offers it on CPU.
@driver("saezoo flat bf16", "saezoo")
def saezoo_flat_bf16(s: Settings, sample: Tensor) -> Driver:
    return _saezoo("flat", s, sample, {"l1_coefficient": s.l1}, autocast="bf16")


@driver("saezoo topk bf16", "saezoo")
def saezoo_topk_bf16(s: Settings, sample: Tensor) -> Driver:
    return _saezoo("topk", s, sample, {"k": s.k}, autocast="bf16")


# Extra: flat starting from a zero decoder bias, as sae-lens's standard SAE does, instead of
# saezoo's default (the sample mean; better on the embedded model, see benchmarks/README.md).
@driver("saezoo flat b_dec zeros", "saezoo")
def saezoo_flat_zero_b_dec(s: Settings, sample: Tensor) -> Driver:
    return _saezoo("flat", s, sample, {"l1_coefficient": s.l1, "init_b_dec": "zeros"})


# --- SAELens (peers venv) --------------------------------------------------------------------


def _sae_lens(sae, s: Settings) -> Driver:
    """sae_lens.training.sae_trainer.SAETrainer itself: ``maybe_reset_sparsity`` then
    ``step(batch)`` (TrainingSAE.training_forward_pass, firing statistics, backward, grad
    clipping at 1.0, Adam, LR and coefficient schedulers), as ``SAETrainer.fit`` runs
    them with wandb logging off."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = SAETrainerConfig(
        total_training_samples=(s.warmup + s.steps) * s.batch,
        train_batch_size_samples=s.batch,
        lr=s.lr,
        lr_end=s.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x: Tensor) -> None:
        trainer.maybe_reset_sparsity()
        trainer.step(x)
        trainer.n_training_steps += 1

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        sae.eval()
        acts = sae.encode(x)
        if acts.is_sparse:
            acts = acts.to_dense()
        return sae.decode(acts), acts != 0

    return Driver(step, reconstruct, {"config": {k: v for k, v in sae.cfg.to_dict().items() if k != "metadata"}})


@driver("sae-lens standard", "sae-lens")
def sae_lens_standard(s: Settings, sample: Tensor) -> Driver:
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    torch.manual_seed(s.seed)
    cfg = StandardTrainingSAEConfig(d_in=s.d_in, d_sae=s.width, l1_coefficient=s.l1, device="cpu")
    return _sae_lens(StandardTrainingSAE(cfg), s)


@driver("sae-lens topk", "sae-lens")
def sae_lens_topk(s: Settings, sample: Tensor) -> Driver:
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(s.seed)
    cfg = TopKTrainingSAEConfig(d_in=s.d_in, d_sae=s.width, k=s.k, device="cpu")
    return _sae_lens(TopKTrainingSAE(cfg), s)


# --- EleutherAI sparsify (peers venv) --------------------------------------------------------


@driver("sparsify topk", "eai-sparsify")
def sparsify_topk(s: Settings, sample: Tensor) -> Driver:
    """sparsify.trainer.Trainer.fit's step for one SAE with loss_fn="fvu", Adam and no
    AuxK (its default auxk_alpha=0): b_dec = batch mean on the first step, unit-norm
    decoder, ``Sae.forward(x, y, dead_mask, total_variance)`` (fused top-k encoder with
    index_add backward, embedding_bag decoder), did_fire bookkeeping, the logged FVU
    pulled to the host, ``backward``, ``remove_gradient_parallel_to_decoder_directions``,
    ``Adam.step``, ``zero_grad``, the dead-latent counters. The hook's clone of the
    model output (needed only for the ce/kl losses) is left out."""
    from sparsify import Sae, SaeConfig

    torch.manual_seed(s.seed)
    sae = Sae(s.d_in, SaeConfig(expansion_factor=s.width // s.d_in, k=s.k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=s.lr)
    did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    state = {"step": 0, "avg_fvu": 0.0}

    def step(x: Tensor) -> None:
        if state["step"] == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        state["avg_fvu"] += float(out.fvu.detach())
        loss = out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[did_fire] = 0
            did_fire.zero_()
        state["step"] += 1

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        sae.eval()
        top_acts, top_indices, _ = sae.encode(x)
        return sae.decode(top_acts, top_indices), fired_from_topk(top_indices, top_acts, sae.num_latents)

    return Driver(step, reconstruct, {"config": sae.cfg.to_dict(), "decoder": sae_decoder_impl()})


def sae_decoder_impl() -> str:
    from sparsify import utils

    return utils.decoder_impl.__name__


# --- dictionary_learning (peers venv) --------------------------------------------------------


@driver("dictionary_learning standard", "dictionary-learning")
def dictionary_learning_standard(s: Settings, sample: Tensor) -> Driver:
    """dictionary_learning.trainers.standard.StandardTrainer.update (Towards
    Monosemanticity: squared error + L1 of the codes, ConstrainedAdam with unit-norm
    decoder columns), as ``trainSAE`` calls it, with no LR or sparsity warmup."""
    from dictionary_learning.trainers.standard import StandardTrainer

    trainer = StandardTrainer(
        steps=s.warmup + s.steps,
        activation_dim=s.d_in,
        dict_size=s.width,
        layer=0,
        lm_name="synthetic",
        lr=s.lr,
        l1_penalty=s.l1,
        warmup_steps=0,
        sparsity_warmup_steps=None,
        seed=s.seed,
        device="cpu",
    )
    return _dictionary_learning(trainer, lambda ae, x: ae.encode(x))


@driver("dictionary_learning topk", "dictionary-learning")
def dictionary_learning_topk(s: Settings, sample: Tensor) -> Driver:
    """dictionary_learning.trainers.top_k.TopKTrainer.update (geometric-median b_dec on
    step 0, dense top-k codes and dense decoder, AuxK, grad clipping, unit-norm decoder)."""
    from dictionary_learning.trainers.top_k import TopKTrainer

    trainer = TopKTrainer(
        steps=s.warmup + s.steps,
        activation_dim=s.d_in,
        dict_size=s.width,
        k=s.k,
        layer=0,
        lm_name="synthetic",
        lr=s.lr,
        warmup_steps=0,
        seed=s.seed,
        device="cpu",
    )
    return _dictionary_learning(trainer, lambda ae, x: ae.encode(x))


def _dictionary_learning(trainer, encode) -> Driver:
    state = {"step": 0}

    def step(x: Tensor) -> None:
        trainer.update(state["step"], x)
        state["step"] += 1

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        ae = trainer.ae.eval()
        f = encode(ae, x)
        return ae.decode(f), f != 0

    return Driver(step, reconstruct, {"config": {k: v for k, v in trainer.config.items() if k != "device"}})


# --- the harness -------------------------------------------------------------------------------


@torch.no_grad()
def held_out_metrics(reconstruct, x_eval: Tensor, batch: int, width: int) -> dict[str, float]:
    """Explained variance, L0 and dead fraction on held-out tokens, with saezoo's
    formulas (docs/metrics.md): EV = 1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2 over
    all tokens; L0 = mean non-zero codes per token; dead = share of latents that never
    fire on the held-out set."""
    sq_err = 0.0
    fired = torch.zeros(width, dtype=torch.float64)
    for x in x_eval.split(batch):
        x_hat, active = reconstruct(x)
        sq_err += float((x.double() - x_hat.double()).pow(2).sum())
        fired += active.sum(0).double()
    x64 = x_eval.double()
    total_var = float((x64 - x64.mean(0)).pow(2).sum())
    n = x_eval.shape[0]
    return {
        "explained_variance": 1.0 - sq_err / total_var,
        "l0": float(fired.sum()) / n,
        "dead_fraction": float((fired == 0).double().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(DRIVERS))
    p.add_argument("--data", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l1", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    set_threads(a.threads)
    package, build = DRIVERS[a.name]
    result: dict[str, Any] = {"name": a.name, "package": package, "ok": False}
    try:
        result["version"] = version(package)
    except PackageNotFoundError:
        result["version"] = None
    try:
        with safe_open(a.data, framework="pt") as f:
            meta = f.metadata() or {}
            train = f.get_slice("train")
            n_train, d_in = train.get_shape()
            batch = int(meta.get("batch", 4096))
            n_batches = n_train // batch
            x_eval = f.get_tensor("eval")
            s = Settings(d_in, a.width, a.k, a.lr, a.l1, batch, a.steps, a.warmup, a.seed)

            def batch_at(i: int) -> Tensor:
                j = i % n_batches
                return train[j * batch : (j + 1) * batch]

            sample = torch.cat([batch_at(i) for i in range(max(1, 16384 // batch))])
            t0 = time.perf_counter()
            d = build(s, sample)
            result["setup_s"] = time.perf_counter() - t0
            del sample
            result["rss_setup_mib"] = peak_rss_mib()
            times, cpu_times = [], []
            for i in range(a.warmup + a.steps):
                x = batch_at(i)
                t0, c0 = time.perf_counter(), time.process_time()
                d.step(x)
                if i >= a.warmup:
                    times.append(time.perf_counter() - t0)
                    cpu_times.append(time.process_time() - c0)
            result["rss_peak_mib"] = peak_rss_mib()
            result["vm_hwm_mib"] = vm_hwm_mib()
            result.update(throughput(times, batch, cpu_times))
            result["step_times_s"] = times
            result["step_cpu_s"] = cpu_times
            result["eval"] = held_out_metrics(d.reconstruct, x_eval, batch, a.width)
            check = d.info.pop("cross_check", None)
            if check is not None:
                result["saezoo_evaluate"] = {
                    k: v for k, v in check(x_eval).items() if k in ("explained_variance", "l0", "dead_fraction")
                }
            result["info"] = d.info
            if d.cleanup is not None:
                d.cleanup()
        result["machine"] = machine()
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the orchestrator reports it
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    Path(a.json).write_text(json.dumps(result, indent=1, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
