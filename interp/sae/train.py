"""Train a sparse autoencoder on any stream of activation batches: :func:`train_sae`.

    from interp.sae import SAEConfig, train_sae
    cfg = SAEConfig(d_in=64, d_sae=512, architecture="topk", k=16, lr=1e-3, batch_size=1024,
                    total_training_tokens=2_000_000, checkpoint_every=200, hook_name="blocks.1.hook_resid_post")
    result = train_sae(cfg, lambda: store.shuffled_batches(1024), out="runs/sae/l1")
    result.sae.encode(x)                                      # or SparseAutoencoder.load("runs/sae/l1")

Each step: one batch x [batch, d_in] -> :class:`~interp.sae.losses.SAETrainingModule` (loss in ``forward``) -> Adam
with linear warm-up and constant / linear / cosine decay (:func:`lr_factor`) -> decoder constraint (gradient
component along each decoder row removed before the step, rows renormalised after) -> dead-latent clock
(training tokens since each latent last fired). The tqdm bar shows L0, explained variance and MSE.

Checkpoints (every ``cfg.checkpoint_every`` steps, in ``out/checkpoint/``) use the format of
:mod:`interp.training` (its helpers are reused): ``model.safetensors`` (SAE + dead-latent clock),
``optimizer.safetensors`` (Adam tensors), ``rng.safetensors`` and ``state.json`` (step, config, scheduler,
loss history), written to a temporary folder and swapped in with renames: no pickle, and a kill at any moment
leaves a complete checkpoint. Calling :func:`train_sae` again with the same arguments resumes from it: the
batch stream is re-created and skipped forward by the number of batches consumed, so the resumed run sees the
batches the uninterrupted run would have seen. The stream must therefore be re-creatable:

* a callable with no argument returning a fresh iterable (the first ``step`` batches are skipped);
* a callable with a parameter named ``start`` (or one required positional parameter) returning the stream
  from batch ``start`` (a store that can seek);
* a re-iterable (a list, a tensor of batches [n, batch, d_in], an object whose ``__iter__`` starts over).

Non-finite values stop the run before they reach a checkpoint: :class:`NonFiniteTrainingError` names the step,
the quantity (input batch, loss term, gradient or parameter) and what to try; the last good checkpoint stays.

Data parallelism: the operations that depend on the process layout (wrapping the module, the global loss and
token count, ``b_dec`` initialisation, the dead-latent clock, the batchtopk threshold, logged metrics, who writes
files) go through a :class:`TrainContext`. The default is one process; :mod:`interp.sae.distributed` passes
one rank of a ``torchrun`` group (DistributedDataParallel).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.hooks.loading import ExistingRunError
from interp.io import read_safetensors, verify_checksums
from interp.locks import FolderLock, warn_if_being_written
from interp.training import (
    CHECKPOINT_DIR, CHECKPOINT_FILES, clear_checkpoints, config_diff, find_checkpoint, load_checkpoint,
    read_checkpoint_state, save_checkpoint, thread_count_warning, warmup_decay,
)

from . import metrics
from .config import SAEConfig
from .losses import SAETrainingModule, TrainStepOutput
from .model import SparseAutoencoder

__all__ = [
    "train_sae", "lr_factor", "sparsity_factor", "SAETrainResult", "NonFiniteTrainingError", "load_checkpoint_sae",
    "Batches", "TrainContext",
]

Batches = Union[Iterable[Tensor], Callable[[], Iterable[Tensor]], Callable[[int], Iterable[Tensor]]]
SUMMARY_FILE = "training_summary.json"


class NonFiniteTrainingError(FloatingPointError):
    """Training met a NaN or infinity. Attributes: ``step``, ``quantity``, ``checkpoint`` (last good one or None)."""

    def __init__(self, message: str, step: int, quantity: str, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.quantity, self.checkpoint = step, quantity, checkpoint


@dataclass
class SAETrainResult:
    """What :func:`train_sae` returns. ``history``: one dict per ``log_every`` steps (step, loss parts, l0,
    explained_variance, mse, dead_fraction, lr); ``losses``: the loss of every step; ``resumed_from``: the step
    this call started at (0 unless it resumed from a checkpoint)."""

    sae: SparseAutoencoder
    steps: int
    tokens: int
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    dead_fraction: float = 0.0
    out: Path | None = None
    resumed_from: int = 0

    @property
    def final(self) -> dict[str, float]:
        """The last logged metrics."""
        return self.history[-1] if self.history else {}


class TrainContext:
    """The process layout of a training run: one process (this class, every method trivial).

    :class:`interp.sae.distributed.DDPContext` overrides the methods for one rank of a data-parallel group; the
    batch a step sees is then the concatenation of every rank's local batch (the "global batch").
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, the final SAE and the summary, and shows the progress bar."""
        return self.rank == 0

    def wrap(self, module: SAETrainingModule) -> torch.nn.Module:
        """The module whose ``forward(x, sparsity_scale)`` the trainer calls (DDP wraps it)."""
        return module

    def step_begin(self, x: Tensor | None) -> tuple[bool, bool, int]:
        """Before a step, with this process's batch x [n, d_in] (None: its stream ended) ->
        (some stream ended, some batch holds NaN/inf, tokens in the global batch)."""
        if x is None:
            return True, False, 0
        return False, not bool(torch.isfinite(x).all()), x.shape[0]

    def gather_rows(self, x: Tensor) -> Tensor:
        """The global batch [N, d_in] from this process's rows (used once: to initialise ``b_dec``)."""
        return x

    def reduce_loss(self, loss: Tensor, n_local: int, n_global: int) -> tuple[float, bool]:
        """(loss of the global batch, whether any process's loss is NaN/inf) from this process's loss (a scalar,
        the mean over its ``n_local`` tokens)."""
        value = float(loss)
        return value, not math.isfinite(value)

    def loss_weight(self, n_local: int, n_global: int) -> float:
        """Factor on this process's loss before ``backward`` so the gradient is the global batch's."""
        return 1.0

    def record_firing(self, module: SAETrainingModule, latents: Tensor) -> None:
        """Advance the dead-latent clock by the global batch (latents [n, d_sae] of this process)."""
        module.record_firing(latents)

    def update_batchtopk_threshold(self, sae: SparseAutoencoder, latents: Tensor) -> None:
        """Update the batchtopk inference threshold from the global batch's smallest kept activation."""
        sae.update_batchtopk_threshold(latents)

    def batch_metrics(self, x: Tensor, x_hat: Tensor, latents: Tensor) -> dict[str, float]:
        """L0, explained variance and MSE of the global batch (x, x̂ [n, d_in], latents [n, d_sae])."""
        return {"l0": metrics.l0(latents), "explained_variance": metrics.explained_variance(x, x_hat),
                "mse": metrics.mse(x, x_hat)}

    def barrier(self) -> None:
        """Wait for every process."""


# ----------------------------------------------------------------------------------------------------------------
# schedules


def lr_factor(cfg: SAEConfig, step: int) -> float:
    """Learning-rate multiplier at step ``step`` (0-based): linear warm-up over ``lr_warmup_steps``, constant,
    then ``lr_decay`` (linear / cosine) to ``min_lr_ratio`` over the last ``lr_decay_steps`` steps (default:
    every step after warm-up)."""
    return warmup_decay(step, cfg.total_steps, cfg.lr_warmup_steps, cfg.lr_decay, cfg.lr_decay_steps,
                        cfg.min_lr_ratio)


def sparsity_factor(cfg: SAEConfig, step: int) -> float:
    """Multiplier of the sparsity coefficient: linear warm-up over ``sparsity_warmup_steps``, then 1."""
    return warmup_decay(step, cfg.total_steps, cfg.sparsity_warmup_steps, "constant")


# ----------------------------------------------------------------------------------------------------------------
# the batch stream


def _open_stream(batches: Batches, start: int) -> Iterator[Tensor]:
    """An iterator positioned at batch ``start`` of a re-creatable stream (see the module docstring)."""
    if callable(batches) and not isinstance(batches, Tensor) and not hasattr(batches, "__iter__"):
        try:
            params = inspect.signature(batches).parameters
        except (TypeError, ValueError):
            params = {}
        if "start" in params:
            return iter(batches(start=start))
        if any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params.values()):
            return iter(batches(start))
        stream = iter(batches())
    else:
        stream = iter(batches)
    skipped = sum(1 for _ in itertools.islice(stream, start))
    if skipped < start:
        raise ValueError(
            f"the checkpoint is at step {start} but the batch stream ended after {skipped} batches while "
            "skipping to it: resume with the same data (or start over with resume=False)"
        )
    return stream


def _as_batch(batch: Any, cfg: SAEConfig, device: torch.device, dtype: torch.dtype, step: int) -> Tensor:
    if isinstance(batch, (tuple, list)):  # (activations, ...) from a loader
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"step {step}: batches must be float tensors [batch, d_in], got {type(batch).__name__}")
    if batch.shape[-1] != cfg.d_in:
        raise ValueError(f"step {step}: batch of shape {tuple(batch.shape)} does not end in d_in={cfg.d_in}")
    return batch.reshape(-1, cfg.d_in).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# checks


def _advice(cfg: SAEConfig, lr_now: float) -> str:
    tips = [f"lower the learning rate (lr={cfg.lr:g}, now {lr_now:.3g})"]
    if cfg.lr_warmup_steps == 0:
        tips.append("add a warm-up (lr_warmup_steps=...)")
    if cfg.grad_clip is None:
        tips.append("clip gradients (grad_clip=1.0)")
    tips.append("check the activation scale (normalise very large activations first)")
    if cfg.dtype in ("float16", "bfloat16"):
        tips.append("train in float32 (dtype='float32')")
    if cfg.architecture == "jumprelu":
        tips.append("raise jumprelu_bandwidth")
    return "; ".join(tips)


def _fail(step: int, quantity: str, detail: str, cfg: SAEConfig, lr_now: float, ckpt: Path | None) -> None:
    where = (f"The last good checkpoint ({ckpt}, step {read_checkpoint_state(ckpt)['step']}) is kept; running "
             "train_sae again with the same arguments resumes from it." if ckpt is not None else
             "No checkpoint was written before this step.")
    what = "fix or filter the data (the batch itself holds NaN/inf)" if quantity == "input batch" else \
        _advice(cfg, lr_now)
    raise NonFiniteTrainingError(
        f"SAE training stopped at step {step}: {quantity} is not finite ({detail}). Try: {what}. {where}",
        step=step, quantity=quantity, checkpoint=ckpt,
    )


def _nonfinite_params(module: torch.nn.Module, grads: bool = False) -> list[str]:
    bad = []
    for name, p in module.named_parameters():
        t = p.grad if grads else p
        if t is not None and not bool(torch.isfinite(t).all()):
            bad.append(name.removeprefix("sae."))
    return bad


# ----------------------------------------------------------------------------------------------------------------
# one run: its state, and the steps of the loop


@dataclass
class _Run:
    """What the steps, evaluations and checkpoints of one training run share (the trainer's mutable state)."""

    cfg: SAEConfig
    ctx: TrainContext
    device: torch.device
    out: Path | None
    sae: SparseAutoencoder
    module: SAETrainingModule
    opt: torch.optim.Optimizer
    sched: Any
    start: int = 0  # the step this call started at (after a resume, the checkpoint's)
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0  # training seconds up to ``t0``
    t0: float = 0.0
    ckpt: Path | None = None  # the last good checkpoint

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores beside the tensors."""
        return {"sae_config": self.cfg.to_dict(), "tokens": self.tokens, "losses": self.losses,
                "history": self.history, "elapsed_s": self.elapsed, "world_size": self.ctx.world_size}


def _start(cfg: SAEConfig, out: str | os.PathLike | None, device: torch.device, resume: bool,
           ctx: TrainContext) -> _Run:
    """A fresh SAE with its Adam and schedule, resumed from ``out/checkpoint`` when there is one (and ``resume``)."""
    sae = SparseAutoencoder(cfg, device=device)
    module = SAETrainingModule(sae).train()
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))
    run = _Run(cfg, ctx, device, Path(out) if out is not None else None, sae, module, opt, sched)
    if run.out is None:
        return run
    run.out.mkdir(parents=True, exist_ok=True)
    if not resume and ctx.is_main:
        clear_checkpoints(run.out)
    ctx.barrier()
    ckpt = find_checkpoint(run.out) if resume else None
    if ckpt is not None:
        saved = read_checkpoint_state(ckpt)
        _check_resumable(ckpt, saved, cfg, ctx.world_size)
        warning = thread_count_warning(saved)
        if warning and device.type == "cpu":
            tqdm.write(warning)
        state = load_checkpoint(ckpt, module, opt, sched)
        run.start, run.tokens, run.ckpt = state["step"], state["tokens"], ckpt
        run.losses, run.history, run.elapsed = state["losses"], state["history"], state.get("elapsed_s", 0.0)
    return run


def _check_resumable(ckpt: Path, saved: dict[str, Any], cfg: SAEConfig, world_size: int) -> None:
    """Raise :class:`ExistingRunError` unless the checkpoint continues this run (same trajectory, same layout)."""
    if "sae_config" not in saved:
        raise ExistingRunError(f"{ckpt} is not an SAE training checkpoint (no sae_config in state.json)",
                               restart="resume=False")
    diff = config_diff(SAEConfig.from_dict(saved["sae_config"]).trajectory_dict(), cfg.trajectory_dict())
    if diff:
        raise ExistingRunError(
            f"{ckpt} was written with a different SAEConfig (differs in {diff}); resuming would mix two runs",
            restart="resume=False",
        )
    if saved.get("world_size", 1) != world_size:
        raise ExistingRunError(
            f"{ckpt} was written by a run of {saved.get('world_size', 1)} process(es), this one has "
            f"{world_size}: each rank reads its own shards, so resuming with another number of processes "
            f"would change the data. Resume with {saved.get('world_size', 1)} process(es) (torchrun "
            "--nproc_per_node N)", restart="resume=False",
        )


def _next_batch(run: _Run, stream: Iterator[Any], step: int, total: int) -> tuple[Tensor | None, int]:
    """This process's batch x [n, d_in] of ``step`` and the global batch's token count; (None, 0) when some
    process's stream ended. Raises :class:`NonFiniteTrainingError` for a NaN/inf in any process's batch."""
    raw = next(stream, None)
    x = _as_batch(raw, run.cfg, run.device, run.sae.dtype, step) if raw is not None else None
    ended, bad_input, n_global = run.ctx.step_begin(x)
    if ended:
        if run.ctx.is_main:
            tqdm.write(f"sae: the batch stream ended after {step} batches (expected {total}); stopping there")
        return None, 0
    if bad_input:
        n_bad = int((~torch.isfinite(x)).sum())
        detail = f"{n_bad} of {x.numel()} values are NaN/inf" if n_bad else "in another rank's batch"
        _fail(step, "input batch", detail, run.cfg, run.sched.get_last_lr()[0], run.ckpt)
    return x, n_global


def _train_step(run: _Run, fwd: torch.nn.Module, x: Tensor, n_global: int,
                step: int) -> tuple[TrainStepOutput, float, float]:
    """One optimizer step on the global batch (x: this process's rows [n, d_in]): loss, backward, decoder
    constraint, Adam, dead-latent clock and batchtopk threshold. Returns the step's output, the global batch's
    loss and the step's learning rate.

    Raises :class:`NonFiniteTrainingError` (before the step reaches the weights) for a NaN/inf in the loss, a
    gradient or a parameter."""
    cfg, sae, module, lr_now = run.cfg, run.sae, run.module, run.sched.get_last_lr()[0]
    if step == 0:
        sae.init_b_dec(run.ctx.gather_rows(x))
    res: TrainStepOutput = fwd(x, sparsity_factor(cfg, step))
    loss = res.loss
    value, bad_loss = run.ctx.reduce_loss(loss.detach(), x.shape[0], n_global)
    if bad_loss:
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in res.losses.items())
        bad = [k for k, v in res.losses.items() if not bool(torch.isfinite(v))]
        _fail(step, f"the loss ({', '.join(bad) or 'total'})", f"loss={float(loss.detach())}; {parts}",
              cfg, lr_now, run.ckpt)
    run.opt.zero_grad(set_to_none=True)
    weight = run.ctx.loss_weight(x.shape[0], n_global)
    (loss * weight if weight != 1.0 else loss).backward()
    bad = _nonfinite_params(module, grads=True)
    if bad:
        _fail(step, f"the gradient of {', '.join(bad)}", "after backward", cfg, lr_now, run.ckpt)
    if cfg.normalize_decoder:
        sae.remove_gradient_parallel_to_decoder()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
    run.opt.step()
    run.sched.step()
    sae.after_optimizer_step()
    bad = _nonfinite_params(module)
    if bad:
        _fail(step, f"parameter {', '.join(bad)}", "after the optimizer step", cfg, lr_now, run.ckpt)
    latents = res.latents.detach()
    run.ctx.record_firing(module, latents)
    run.ctx.update_batchtopk_threshold(sae, latents)
    run.tokens += n_global
    run.losses.append(value)
    return res, value, lr_now


def _evaluate(run: _Run, done: int, x: Tensor, res: TrainStepOutput, value: float, lr: float) -> dict[str, float]:
    """The metrics row of the step just done (appended to ``run.history``): its loss and learning rate, the loss
    parts of this process's batch, L0 / explained variance / MSE of the global batch, the dead fraction."""
    row = {
        "step": done, "tokens": run.tokens, "loss": value, "lr": lr,
        **{k: float(v.detach()) for k, v in res.losses.items()},  # this process's batch
        **run.ctx.batch_metrics(x, res.x_hat.detach(), res.latents.detach()),
        "dead_fraction": float(run.module.dead_mask.double().mean()),
    }
    run.history.append(row)
    return row


def _checkpoint(run: _Run, done: int) -> None:
    """Write the checkpoint of step ``done`` (the main process; the others note its path for error messages)."""
    now = time.perf_counter()
    run.elapsed, run.t0 = run.elapsed + now - run.t0, now
    if run.ctx.is_main:
        run.ckpt = save_checkpoint(run.out / CHECKPOINT_DIR, run.module, run.opt, run.sched, done,
                                   run.cfg.to_dict(), run.state())
    else:
        run.ckpt = run.out / CHECKPOINT_DIR


def _finish(run: _Run) -> SAETrainResult:
    """After the loop: a last checkpoint if the stream ended between two, the SAE in eval mode, and (main
    process) the final SAE and ``training_summary.json`` in ``out``."""
    ctx, steps_done = run.ctx, len(run.losses)
    run.elapsed += time.perf_counter() - run.t0
    last_ckpt_step = read_checkpoint_state(run.ckpt)["step"] if run.ckpt is not None and ctx.is_main else None
    if run.out is not None and ctx.is_main and steps_done > run.start and last_ckpt_step != steps_done:
        run.ckpt = save_checkpoint(run.out / CHECKPOINT_DIR, run.module, run.opt, run.sched, steps_done,
                                   run.cfg.to_dict(), run.state())  # the stream ended early: checkpoint there
    run.sae.eval()
    result = SAETrainResult(sae=run.sae, steps=steps_done, tokens=run.tokens, losses=run.losses,
                            history=run.history, dead_fraction=float(run.module.dead_mask.double().mean()),
                            out=run.out, resumed_from=run.start)
    if run.out is not None and ctx.is_main:
        run.sae.save(run.out)
        summary = {"steps": steps_done, "tokens": run.tokens, "final": result.final,
                   "final_loss": run.losses[-1] if run.losses else None, "dead_fraction": result.dead_fraction,
                   "training_time_s": round(run.elapsed, 2), "world_size": ctx.world_size,
                   "config": run.cfg.to_dict()}
        (run.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    ctx.barrier()
    return result


# ----------------------------------------------------------------------------------------------------------------
# training


def train_sae(
    cfg: SAEConfig,
    batches: Batches,
    out: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    context: TrainContext | None = None,
) -> SAETrainResult:
    """Train an SAE on ``batches`` (float tensors [batch, d_in]) for ``cfg.total_steps`` steps.

    Args:
        cfg: the SAE and the run (:class:`SAEConfig`).
        batches: a re-creatable stream of batches (module docstring): a no-argument factory, a factory taking the
            index of the first batch, or a re-iterable. A ``(tensor, ...)`` tuple uses its first element.
        out: run folder: checkpoints in ``out/checkpoint/``, the final SAE (``sae_weights.safetensors`` +
            ``cfg.json``) and ``training_summary.json`` in ``out``. None: nothing written, no resume.
        device: where to train (default: CUDA if available, else CPU).
        resume: continue from ``out/checkpoint`` if there is one (False: delete it and start over).
        progress: show a tqdm bar.
        max_steps: stop after this step (for tests and schedules that outlive one session; the schedule is
            still the one of ``cfg.total_steps``).
        context: the process layout (default: one process). Under ``torchrun`` use
            :func:`interp.sae.distributed.train_sae_distributed`, which passes a ``DDPContext``: ``batches`` is
            then this rank's stream and a step trains on the concatenation of every rank's batch.

    Returns: :class:`SAETrainResult` (the SAE in eval mode, loss curve, metric history).

    Raises:
        NonFiniteTrainingError: a NaN/inf in a batch, the loss, a gradient or a parameter.
        ExistingRunError: ``out`` holds a checkpoint written with another configuration (a ``ValueError``).
        FolderLockedError: another job writes ``out`` (:mod:`interp.locks`; its PID and host are named).
        ValueError: a stream shorter than the checkpoint.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = context if context is not None else TrainContext()
    # one writer per run folder (the main process), from the resume check to the final files
    with FolderLock(out, job="train_sae") if out is not None and ctx.is_main else nullcontext():
        run = _start(cfg, out, device, resume, ctx)
        total = cfg.total_steps if max_steps is None else min(cfg.total_steps, max_steps)
        stream = _open_stream(batches, run.start)
        fwd = run.ctx.wrap(run.module)
        bar = tqdm(total=total, initial=run.start, desc=f"sae {cfg.architecture}",
                   disable=not progress or not run.ctx.is_main, dynamic_ncols=True, mininterval=1.0,
                   file=sys.stderr)
        run.t0 = time.perf_counter()
        try:
            for step in range(run.start, total):
                x, n_global = _next_batch(run, stream, step, total)
                if x is None:
                    if step == run.start:  # nothing to train on: never hand back an untrained SAE as a result
                        raise ValueError(f"batches yielded no batch at step {step} of {total}: the activation "
                                         "stream is empty (an empty store, or a factory returning an exhausted "
                                         "iterator)")
                    break
                res, value, lr = _train_step(run, fwd, x, n_global, step)
                done = step + 1
                bar.update(1)
                if done % max(1, cfg.log_every) == 0 or done == total:
                    row = _evaluate(run, done, x, res, value, lr)
                    bar.set_postfix(L0=f"{row['l0']:.1f}", EV=f"{row['explained_variance']:.3f}",
                                    MSE=f"{row['mse']:.3g}", dead=f"{row['dead_fraction']:.2f}", refresh=False)
                if run.out is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                                            or done == total):
                    _checkpoint(run, done)
        finally:
            bar.close()
        return _finish(run)


def load_checkpoint_sae(folder: str | os.PathLike,
                        device: str | torch.device | None = None) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The SAE inside a training checkpoint (``out`` or ``out/checkpoint``) and the checkpoint's JSON state."""
    folder = Path(folder)
    warn_if_being_written(folder.parent if (folder / "state.json").is_file() else folder, "SAE run folder")
    if not (folder / "state.json").is_file():
        found = find_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(
                f"no SAE training checkpoint in {folder} (expected {folder}/{CHECKPOINT_DIR}/state.json)")
        folder = found
    state = read_checkpoint_state(folder)
    sae = SparseAutoencoder(SAEConfig.from_dict(state["sae_config"]))
    verify_checksums(folder, CHECKPOINT_FILES, record="state.json", what="checkpoint")
    weights = {k.removeprefix("sae."): v for k, v in read_safetensors(folder / "model.safetensors",
                                                                      what="checkpoint weights").items()
               if k.startswith("sae.")}
    sae.load_state_dict(weights, strict=True)
    return sae.to(device).eval() if device is not None else sae.eval(), state
