"""The training loop.

``train()`` trains one SAE; ``train_many()`` trains several on one activation stream
(what ``saezoo compare`` uses): each batch is produced once and fed to every
:class:`Trainee` in the same order. Everything per-SAE (optimiser, schedule,
curriculum, dead-latent counters, logging, checkpoints) lives on the Trainee, so the
loop itself reads top to bottom.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from saezoo import checkpoint as ckpt
from saezoo import cpu_share, distributed
from saezoo.activations.source import ActivationSource
from saezoo.config import RunConfig
from saezoo.curriculum import Curricula, check_compatible
from saezoo.errors import SaezooError, TrainingDiverged, UsageError
from saezoo.evaluation import check_absorption, evaluate_sae, full_evaluation
from saezoo.host_memory import keep_freed_memory
from saezoo.sae import SAE, group_slices

# Tokens used to estimate the normalisation scale and initialise data-dependent weights.
INIT_TOKENS = 16384
# Prefix of the SAE's own training state (SAE.training_state) among the checkpoint's tensors.
ARCH_STATE = "arch."


class Interrupted(SaezooError):
    """SIGINT/SIGTERM: a checkpoint was saved; the message says how to resume."""

    exit_code = 130


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a device (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def lr_factor(step: int, total: int, warmup: int, shape: str, decay: str, decay_fraction: float) -> float:
    """Multiplier of the peak learning rate at ``step``: warmup ramp, plateau, decay to 0."""
    factor = 1.0
    if warmup > 0 and step < warmup:
        ramp = (step + 1) / warmup
        factor = ramp**3 if shape == "cubic" else ramp
    decay_start = int(total * (1 - decay_fraction))
    if decay != "none" and step >= decay_start and total > decay_start:
        progress = (step - decay_start) / (total - decay_start)
        factor *= 1 - progress if decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class Trainee:
    """One SAE in training, with everything that is its own."""

    def __init__(self, run: RunConfig, d_in: int, out_dir: Path, source_key: dict[str, Any], device: torch.device):
        from saezoo.plugins import get_plugins

        keep_freed_memory()  # the step's [batch, width] temporaries reuse freed memory
        plugins = get_plugins()
        self.run = run
        self.cfg = run.train
        self.out_dir = Path(out_dir)
        self.device = device
        self.source_key = source_key
        torch.manual_seed(run.train.seed if run.train.init_seed is None else run.train.init_seed)
        self.sae: SAE = ckpt.build_sae(run.architecture, d_in, run.sae).to(device)
        # The built SAE's class: a registered architecture may build a subclass per config,
        # with the knobs of that config.
        members = []
        for name, curriculum_cfg in run.curricula.items():
            curriculum_cls = plugins.curricula.get(name)
            check_compatible(name, curriculum_cls, run.architecture, type(self.sae))
            try:
                members.append((name, curriculum_cls(curriculum_cfg, run.train.steps, self.sae)))
            except ValueError as exc:
                raise UsageError(f"curriculum {name!r}: {exc}") from None
        self.curriculum = Curricula(members)
        # The compiled wrapper shares the SAE's parameters: checkpoints and evaluation use the SAE.
        self.forward = torch.compile(self.sae) if self.cfg.compile else self.sae
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(
            self.sae.parameters(),
            lr=self.cfg.lr,
            betas=self.cfg.betas,
            weight_decay=self.cfg.weight_decay if self.cfg.optimizer == "adamw" else 0.0,
        )
        self.groups = group_slices(self.sae)
        self.tokens_since_fired = torch.zeros(self.sae.width, dtype=torch.long, device=device)
        self.scale = 1.0
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.last_checkpoint: int | None = None
        self.stats: dict[str, float] = {}
        self.writer: SummaryWriter | None = None
        self.last_eval: dict[str, float] = {}
        self.last_losses: dict[str, float] = {}
        self.last_grad_norms: dict[str, float] = {}

    # --- set-up ---------------------------------------------------------------------------
    def start(self, sample: Tensor) -> None:
        """Fresh run: normalisation scale, data-dependent init, cfg.json, step-0 checkpoint."""
        if self.cfg.normalize:
            self.scale = float(math.sqrt(sample.shape[1] / sample.double().pow(2).sum(-1).mean()))
        self.sae.init_from_data(sample.to(self.device) * self.scale)
        if distributed.is_main():
            header = ckpt.run_header(self.run.architecture, self.sae.d_in, self.run.to_dict(), self.source_key)
            ckpt.write_json(self.out_dir / ckpt.CFG_FILE, header)
        self.open_writer()
        self.save_checkpoint()

    def resume(self) -> bool:
        """Load the run's checkpoint; False if it has none (it stopped before its first)."""
        ckpt.remove_temporaries(self.out_dir)
        state_dir = ckpt.checkpoint_dir(self.out_dir)
        if state_dir is None:
            return False
        sae_state, opt_state, tensors, meta = ckpt.read_trainer_state(state_dir, self.device)
        # The weights eval, export and --register read, checked too: a damaged copy there is not
        # rewritten when no step is left to take, and the run would end 0 beside it.
        ckpt.load_tensors(state_dir / ckpt.WEIGHTS_FILE)
        ckpt.load_state(self.sae, sae_state, state_dir)
        self.opt.load_state_dict(opt_state)
        self.tokens_since_fired = tensors["tokens_since_fired"].to(self.device)
        self.sae.load_training_state(
            {k[len(ARCH_STATE) :]: v.to(self.device) for k, v in tensors.items() if k.startswith(ARCH_STATE)}
        )
        torch.set_rng_state(tensors["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng_cuda"], self.device)
        self.step = meta["step"]
        self.scale = meta["scale"]
        self.nonfinite_total = meta["nonfinite_total"]
        self.nonfinite_run = meta["nonfinite_run"]
        self.stats = meta["stats"]
        self.curriculum.load_state_dict(meta["curriculum"])
        self.last_checkpoint = self.step
        self.open_writer()
        return True

    def open_writer(self) -> None:
        if distributed.is_main():
            self.writer = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=self.step if self.step else None)

    # --- one step -------------------------------------------------------------------------
    def train_step(self, x: Tensor) -> None:
        cfg = self.cfg
        x = x.to(self.device, non_blocking=True) * self.scale
        knobs = self.curriculum.knobs_at(self.step, self.stats)
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * knobs.get("lr_scale", 1.0) * lr_factor(
                self.step, cfg.steps, cfg.warmup_steps, cfg.warmup_shape, cfg.decay, cfg.decay_fraction
            )
        dead_mask = self.tokens_since_fired >= cfg.dead_after_tokens
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.autocast == "bf16" else nullcontext()
        )
        self.sae.begin_step(self.step, cfg.steps)
        with autocast:
            out = self.forward(x, knobs, dead_mask)
        loss = sum(out.losses.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.sae)
        self.sae.after_backward()
        grad_norms = self.clip_gradients()
        with torch.no_grad():
            # One collective for two flags: which latents fired on any rank (codes are
            # non-negative), and whether any rank's step is not finite. Every rank must take
            # the same branch below: gradients are averaged, but a loss term with no gradient
            # can be non-finite on one rank alone, and a step skipped there and taken elsewhere
            # would leave the ranks' weights apart for the rest of the run.
            not_finite = ~torch.isfinite(torch.stack([loss.detach().float(), *grad_norms.values()])).all()
            flags = distributed.any_rank(torch.cat([(out.codes.amax(0) > 0).int(), not_finite.int().view(1)]))
        fired, finite = flags[:-1].bool(), not bool(flags[-1])
        if finite:
            self.opt.step()
            self.sae.after_step()
            self.nonfinite_run = 0
        else:
            self.opt.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_run += 1
        self.tokens_since_fired += x.shape[0] * distributed.world()
        self.tokens_since_fired[fired] = 0
        self.step += 1
        if finite:
            self.sae.reorganise(self.step, cfg.steps)
        if self.step % cfg.log_every == 0 or not finite or self.step == cfg.steps:
            self.log(out, loss, knobs, grad_norms, dead_mask)
        if self.nonfinite_run >= cfg.max_nonfinite_steps:
            raise TrainingDiverged(self.divergence_message(out, loss))

    def clip_gradients(self) -> dict[str, Tensor]:
        norms = {}
        for name, (params, max_norm) in self.sae.gradient_groups().items():
            params = [p for p in params if p.grad is not None]
            if not params:
                continue
            limit = max_norm if max_norm is not None else self.cfg.grad_clip
            if limit is None:
                norms[name] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            else:
                norms[name] = torch.nn.utils.clip_grad_norm_(params, limit)
        return norms

    # --- logging ----------------------------------------------------------------------------
    @torch.no_grad()
    def log(self, out, loss: Tensor, knobs: dict[str, Any], grad_norms: dict[str, Tensor], dead_mask: Tensor) -> None:
        active = out.codes != 0
        self.stats = {"step": float(self.step), "l0": float(active.sum(-1).float().mean())}
        if len(self.groups) > 1:
            for name, sl in self.groups:
                self.stats[f"l0/{name}"] = float(active[:, sl].sum(-1).float().mean())
        self.last_losses = {name: float(v) for name, v in out.losses.items()}
        self.last_losses["total"] = float(loss)
        if self.nonfinite_run == 0:
            self.last_grad_norms = {k: float(v) for k, v in grad_norms.items()}
        w = self.writer
        if w is None:
            return
        for name, value in self.last_losses.items():
            w.add_scalar(f"loss/{name}", value, self.step)
        for name, value in self.stats.items():
            if name != "step":
                w.add_scalar(name, value, self.step)
        w.add_scalar("dead_fraction", float(dead_mask.float().mean()), self.step)
        w.add_scalar("lr", self.opt.param_groups[0]["lr"], self.step)
        w.add_scalar("nonfinite_steps", self.nonfinite_total, self.step)
        for name, value in grad_norms.items():
            w.add_scalar(f"grad_norm/{name}", float(value), self.step)
        for name, value in knobs.items():
            if isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    w.add_scalar(f"knob/{name}/{i}", float(v), self.step)
            else:
                w.add_scalar(f"knob/{name}", float(value), self.step)
        for name, value in self.sae.diagnostics().items():
            w.add_scalar(f"diag/{name}", value, self.step)

    def divergence_message(self, out, loss: Tensor) -> str:
        active = out.codes != 0
        l0 = ", ".join(f"{name}={float(active[:, sl].sum(-1).float().mean()):.1f}" for name, sl in self.groups)
        norms = ", ".join(f"{k}={v:.3g}" for k, v in self.last_grad_norms.items()) or "n/a"
        diag = ", ".join(f"{k}={v:.3g}" for k, v in self.sae.diagnostics().items())
        where = (
            f"last good checkpoint: {self.out_dir} (step {self.last_checkpoint})"
            if self.last_checkpoint is not None
            else "no checkpoint was written"
        )
        return (
            f"training diverged: {self.nonfinite_run} consecutive non-finite steps at step {self.step} "
            f"(loss={float(loss.detach()):.4g}, {self.nonfinite_total} skipped in all); last finite grad norms: "
            f"{norms}; "
            f"L0 per group: {l0}" + (f"; {diag}" if diag else "") + f"; {where}"
        )

    # --- evaluation and checkpoints -------------------------------------------------------------
    def inference_copy(self) -> SAE:
        """A copy of the SAE that takes raw activations (the scale folded in)."""
        sae = copy.deepcopy(self.sae).float()
        sae.fold_input_scale(self.scale)
        return sae.eval()

    def evaluate(
        self, eval_x: Tensor, source: ActivationSource, final: bool = False, downstream: bool = True
    ) -> dict[str, float]:
        """Held-out metrics; the final evaluation adds every metric (the spliced CE/KL unless
        ``downstream`` is false) and writes metrics.json."""
        sae = self.inference_copy()
        if final:
            # compare (downstream=False) measures the model-based metrics once for all variants.
            tokens = self.cfg.downstream_tokens if downstream else 0
            words = self.cfg.absorption_words if downstream else 0
            metrics, density = full_evaluation(
                sae, source, eval_x, self.cfg.batch_size, self.device, downstream_tokens=tokens, absorption_words=words
            )
        else:
            metrics = evaluate_sae(sae, eval_x.split(self.cfg.batch_size), source.ground_truth, self.device)
        metrics["nonfinite_steps"] = float(self.nonfinite_total)
        metrics["step"] = float(self.step)
        self.last_eval = metrics
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"eval/{name}", value, self.step)
        if final and distributed.is_main():
            from saezoo import plots

            ckpt.write_json(self.out_dir / ckpt.METRICS_FILE, ckpt.json_safe(metrics))
            plots.density_report(density, self.out_dir, self.writer, self.step)
        return metrics

    def save_checkpoint(self) -> None:
        if self.last_checkpoint == self.step:
            return  # saved already: steps are what change the state, and none was taken since
        arch_state = self.sae.training_state()  # on every rank: it may be summed over ranks
        if not distributed.is_main():
            self.last_checkpoint = self.step
            return
        tensors = {"tokens_since_fired": self.tokens_since_fired, "rng_cpu": torch.get_rng_state()}
        tensors.update({f"{ARCH_STATE}{k}": v for k, v in arch_state.items()})
        if self.device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "step": self.step,
            "scale": self.scale,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_run": self.nonfinite_run,
            "stats": self.stats,
            "curriculum": self.curriculum.state_dict(),
        }
        sae_state, opt_state = self.sae.state_dict(), self.opt.state_dict()
        inference = self.inference_copy()

        def write(directory: Path) -> None:
            ckpt.write_trainer_state(directory, sae_state, opt_state, tensors, meta)
            ckpt.save_sae(directory, inference)

        ckpt.write_checkpoint(self.out_dir, self.step, write)
        self.last_checkpoint = self.step
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --- the loop ---------------------------------------------------------------------------------


class StopSignals:
    """SIGINT/SIGTERM over a whole run.

    Outside :meth:`deferred`, the first signal raises KeyboardInterrupt where it lands. That
    is safe anywhere: every file, and every checkpoint as a whole, is switched in by one
    rename, so the disk holds a whole old or a whole new version. Inside (the training loop
    and the final save) it is only recorded, and the loop stops at the next step boundary
    after saving a checkpoint, so no finished step is lost. Later signals are only recorded:
    the first one's stop is under way.
    """

    def __init__(self) -> None:
        self.received: list[str] = []
        self.deferring = False

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.received.append(signal.Signals(signum).name)
        if not self.deferring and len(self.received) == 1:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    @property
    def name(self) -> str:
        return self.received[0] if self.received else "a stop signal"  # it came to another rank

    def any_received(self, device: torch.device) -> bool:
        """Whether any rank received a signal (every rank must ask at the same point)."""
        return bool(distributed.any_rank(torch.tensor([len(self.received)], device=device)).item())


def stopped_message(
    signal_name: str, trainees: Sequence[Trainee], during: str = "", resume_with: str | None = None
) -> str:
    """What a stopped run left on disk, and how to go on from there (``resume_with``: the
    command that resumes these runs, when a caller such as compare has its own)."""
    dirs = [str(t.out_dir) for t in trainees]
    how = resume_with or (
        f"saezoo train --resume {dirs[0]}"
        if len(dirs) == 1
        else f"saezoo train --resume DIR, for each of {' '.join(dirs)}"
    )
    head = f"{signal_name} received" + (f" during {during}" if during else "")
    saved = [t.last_checkpoint for t in trainees]
    if saved and None not in saved:
        return f"{head}: checkpoint saved at step {min(saved)}; resume with: {how}"
    if dirs and all((Path(d) / ckpt.CFG_FILE).exists() for d in dirs):
        return f"{head}, before the first checkpoint; resume with: {how} (it starts from step 0)"
    return f"{head}, before anything was saved; run the same command again"


def train_many(
    runs: Sequence[RunConfig],
    out_dirs: Sequence[Path],
    source: ActivationSource,
    resume: bool = False,
    progress: bool = True,
    downstream: bool = True,
    resume_with: str | None = None,
) -> list[dict[str, float]]:
    """Train one SAE per run on the same stream of batches; return their final metrics.

    With several runs, one that diverges stops alone (its metrics say so); with one run,
    divergence raises. Under torchrun, non-main ranks return empty metrics.
    ``downstream=False`` leaves the spliced CE/KL and the first-letter absorption out of the
    final metrics (``compare`` computes them for every variant at once). ``resume_with``: the
    command a stop signal's message names to go on (default: ``train --resume`` per run).
    """
    train_cfg = runs[0].train
    device = distributed.local_device(resolve_device(train_cfg.device))
    batch_size = train_cfg.batch_size
    if batch_size % distributed.world():
        raise UsageError(f"train.batch_size {batch_size} must be divisible by the {distributed.world()} processes")
    main = distributed.is_main()
    check_absorption(source, train_cfg.absorption_words)  # fail before training, not after it
    trainees: list[Trainee] = []
    stop = StopSignals()
    during = "start-up"
    try:
        with stop.installed():
            try:
                for run, out in zip(runs, out_dirs):
                    trainees.append(Trainee(run, source.d_in, out, source.describe(), device))
                eval_x = source.eval_activations(train_cfg.eval_tokens)
                fresh = [t for t in trainees if not (resume and t.resume())]
                if fresh:
                    sample = next(source.batches(INIT_TOKENS, start=0))
                    for t in fresh:
                        if resume and main:
                            print(
                                f"saezoo: note: {t.out_dir} holds no checkpoint (the run stopped before its first); "
                                "starting it from step 0",
                                file=sys.stderr,
                            )
                        t.start(sample)
                during = ""
                with stop.deferred():
                    failures = _train_loop(trainees, source, eval_x, stop, device, progress and main)
                    for i, t in enumerate(trainees):
                        if i not in failures:
                            t.save_checkpoint()
                if stop.any_received(device):
                    raise Interrupted(stopped_message(stop.name, trainees, resume_with=resume_with))
                during = "the final evaluation"
                results = []
                for i, t in enumerate(trainees):
                    metrics = t.evaluate(eval_x, source, final=True, downstream=downstream) if main else {}
                    if i not in failures and (problem := nonfinite_result(t.sae, metrics)):
                        if len(trainees) == 1:  # never exit 0 with weights or metrics that are NaN
                            raise TrainingDiverged(
                                f"training ended with {problem} ({t.out_dir}); lower train.lr or check the data"
                            )
                        failures[i] = problem
                    if i in failures:
                        # The weights are the last finite ones: skipped steps never update them.
                        metrics.update({"diverged": 1.0})
                        metrics["divergence"] = failures[i]  # type: ignore[assignment]
                        if main:  # its metrics.json says so too, not only the caller
                            ckpt.write_json(t.out_dir / ckpt.METRICS_FILE, ckpt.json_safe(metrics))
                    results.append(metrics)
                return results
            except KeyboardInterrupt:
                raise Interrupted(stopped_message(stop.name, trainees, during, resume_with)) from None
    finally:
        for t in trainees:
            t.close()


def _train_loop(
    trainees: Sequence[Trainee],
    source: ActivationSource,
    eval_x: Tensor,
    stop: StopSignals,
    device: torch.device,
    progress: bool,
) -> dict[int, str]:
    """Train every trainee to the last step; return the divergence messages of those that
    stopped alone. A stop signal ends it after the step in progress (train_many then saves
    every run and raises :class:`Interrupted`)."""
    train_cfg = trainees[0].cfg
    steps, batch_size = train_cfg.steps, train_cfg.batch_size
    main = distributed.is_main()
    distinct = getattr(source, "n_tokens", None)
    if main and distinct is not None and distinct < steps * batch_size:
        print(
            f"saezoo: note: {steps * batch_size:,} training activations from {distinct:,} distinct ones "
            f"({steps * batch_size / distinct:.1f} epochs); raise data.harvest_tokens for more",
            file=sys.stderr,
        )
    failures: dict[int, str] = {}
    start = min(t.step for t in trainees)
    bar = _progress(progress)
    task = bar.add_task(_describe([t.run for t in trainees]), total=steps, completed=start, tps=0.0, info="")
    tokens_done, t0 = 0, time.perf_counter()
    with bar:
        batches = source.batches(batch_size, start=start)
        for step in range(start, steps):
            cpu_share.refresh()  # another run may have started or ended
            x = distributed.shard(next(batches))
            for i, t in enumerate(trainees):
                if t.step == step and i not in failures:
                    try:
                        t.train_step(x)
                    except TrainingDiverged as exc:
                        if len(trainees) == 1:
                            raise
                        failures[i] = str(exc)
            tokens_done += x.shape[0] * distributed.world()
            for t in trainees:
                if main and train_cfg.eval_every and t.step % train_cfg.eval_every == 0 and t.step < steps:
                    t.evaluate(eval_x, source)
                if train_cfg.checkpoint_every and t.step % train_cfg.checkpoint_every == 0:
                    t.save_checkpoint()
            if stop.any_received(device):
                break  # the caller saves every run that has not diverged, and says how to go on
            if (step + 1) % train_cfg.log_every == 0 or step + 1 == steps:
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.update(task, completed=step + 1, tps=tokens_done / elapsed, info=_loss_text(trainees))
    return failures


def train(
    run: RunConfig, out_dir: Path, source: ActivationSource, resume: bool = False, progress: bool = True
) -> dict[str, float]:
    """Train one SAE; return its held-out metrics."""
    return train_many([run], [out_dir], source, resume=resume, progress=progress)[0]


def nonfinite_result(sae: torch.nn.Module, metrics: dict[str, float]) -> str | None:
    """What is not finite in a run's final weights or reconstruction metrics, if anything
    (the spliced CE/KL may be NaN legitimately: ce_recovered when ablation costs nothing)."""
    bad = [name for name, p in sae.state_dict().items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        return f"non-finite weights ({', '.join(bad)})"
    bad = [k for k in ("mse", "explained_variance", "l0") if k in metrics and not math.isfinite(metrics[k])]
    return f"non-finite metrics ({', '.join(bad)})" if bad else None


def _describe(runs: Sequence[RunConfig]) -> str:
    return " + ".join(r.architecture + (f":{r.preset}" if r.preset else "") for r in runs)


def _loss_text(trainees: Sequence[Trainee]) -> str:
    parts = []
    for t in trainees:
        main = {k: v for k, v in t.last_losses.items() if k in ("total", "mse")}
        text = " ".join(f"{k}={v:.4g}" for k, v in main.items())
        if "l0" in t.stats:
            text += f" l0={t.stats['l0']:.1f}"
        parts.append(text)
    return " | ".join(parts)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
