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
:mod:`interp.zoo.train` (its helpers are reused): ``model.safetensors`` (SAE + dead-latent clock),
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
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from interp.hooks.loading import ExistingRunError
from interp.zoo.train import (
    CHECKPOINT_DIR,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
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
    warm = cfg.lr_warmup_steps
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_decay == "constant":
        return 1.0
    total = cfg.total_steps
    decay_steps = cfg.lr_decay_steps if cfg.lr_decay_steps is not None else total - warm
    start = max(warm, total - decay_steps)
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, total - start))
    lo = cfg.min_lr_ratio
    if cfg.lr_decay == "linear":
        return 1.0 - (1.0 - lo) * progress
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sparsity_factor(cfg: SAEConfig, step: int) -> float:
    """Multiplier of the sparsity coefficient: linear warm-up over ``sparsity_warmup_steps``, then 1."""
    w = cfg.sparsity_warmup_steps
    return min(1.0, (step + 1) / w) if w > 0 else 1.0


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
        ValueError: a stream shorter than the checkpoint.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = context if context is not None else TrainContext()
    out_dir = Path(out) if out is not None else None
    sae = SparseAutoencoder(cfg, device=device)
    module = SAETrainingModule(sae).train()
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))

    start, tokens, losses, history, elapsed = 0, 0, [], [], 0.0
    ckpt: Path | None = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and ctx.is_main:
            for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", CHECKPOINT_DIR + ".tmp"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
        ctx.barrier()
        ckpt = find_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        saved = read_checkpoint_state(ckpt)
        if "sae_config" not in saved:
            raise ExistingRunError(f"{ckpt} is not an SAE training checkpoint (no sae_config in state.json)",
                                   restart="resume=False")
        theirs = SAEConfig.from_dict(saved["sae_config"]).trajectory_dict()
        ours = cfg.trajectory_dict()
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ExistingRunError(
                f"{ckpt} was written with a different SAEConfig (differs in {diff}); resuming would mix two runs",
                restart="resume=False",
            )
        if saved.get("world_size", 1) != ctx.world_size:
            raise ExistingRunError(
                f"{ckpt} was written by a run of {saved.get('world_size', 1)} process(es), this one has "
                f"{ctx.world_size}: each rank reads its own shards, so resuming with another number of processes "
                f"would change the data. Resume with {saved.get('world_size', 1)} process(es) (torchrun "
                "--nproc_per_node N)", restart="resume=False",
            )
        if saved.get("torch_threads") not in (None, torch.get_num_threads()) and device.type == "cpu":
            tqdm.write(f"warning: checkpoint written with {saved['torch_threads']} threads, now "
                       f"{torch.get_num_threads()}: the resumed run may differ in the last bits")
        state = load_checkpoint(ckpt, module, opt, sched)
        start, tokens = state["step"], state["tokens"]
        losses, history, elapsed = state["losses"], state["history"], state.get("elapsed_s", 0.0)

    total = cfg.total_steps if max_steps is None else min(cfg.total_steps, max_steps)
    stream = _open_stream(batches, start)
    fwd = ctx.wrap(module)
    bar = tqdm(total=total, initial=start, desc=f"sae {cfg.architecture}", disable=not progress or not ctx.is_main,
               dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    t0 = time.perf_counter()
    try:
        for step in range(start, total):
            raw = next(stream, None)
            x = _as_batch(raw, cfg, device, sae.dtype, step) if raw is not None else None
            ended, bad_input, n_global = ctx.step_begin(x)
            if ended:
                if ctx.is_main:
                    tqdm.write(f"sae: the batch stream ended after {step} batches (expected {total}); stopping there")
                break
            lr_now = sched.get_last_lr()[0]
            if bad_input:
                n_bad = int((~torch.isfinite(x)).sum())
                detail = f"{n_bad} of {x.numel()} values are NaN/inf" if n_bad else "in another rank's batch"
                _fail(step, "input batch", detail, cfg, lr_now, ckpt)
            if step == 0:
                sae.init_b_dec(ctx.gather_rows(x))

            res: TrainStepOutput = fwd(x, sparsity_factor(cfg, step))
            loss = res.loss
            value, bad_loss = ctx.reduce_loss(loss.detach(), x.shape[0], n_global)
            if bad_loss:
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in res.losses.items())
                bad = [k for k, v in res.losses.items() if not bool(torch.isfinite(v))]
                _fail(step, f"the loss ({', '.join(bad) or 'total'})", f"loss={float(loss.detach())}; {parts}",
                      cfg, lr_now, ckpt)
            opt.zero_grad(set_to_none=True)
            weight = ctx.loss_weight(x.shape[0], n_global)
            (loss * weight if weight != 1.0 else loss).backward()
            bad = _nonfinite_params(module, grads=True)
            if bad:
                _fail(step, f"the gradient of {', '.join(bad)}", "after backward", cfg, lr_now, ckpt)
            if cfg.normalize_decoder:
                sae.remove_gradient_parallel_to_decoder()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            sae.after_optimizer_step()
            bad = _nonfinite_params(module)
            if bad:
                _fail(step, f"parameter {', '.join(bad)}", "after the optimizer step", cfg, lr_now, ckpt)

            latents = res.latents.detach()
            ctx.record_firing(module, latents)
            ctx.update_batchtopk_threshold(sae, latents)
            tokens += n_global
            losses.append(value)
            done = step + 1
            bar.update(1)
            if done % max(1, cfg.log_every) == 0 or done == total:
                row = {
                    "step": done, "tokens": tokens, "loss": value, "lr": lr_now,
                    **{k: float(v.detach()) for k, v in res.losses.items()},  # this process's batch
                    **ctx.batch_metrics(x, res.x_hat.detach(), latents),
                    "dead_fraction": float(module.dead_mask.double().mean()),
                }
                history.append(row)
                bar.set_postfix(L0=f"{row['l0']:.1f}", EV=f"{row['explained_variance']:.3f}", MSE=f"{row['mse']:.3g}",
                                dead=f"{row['dead_fraction']:.2f}", refresh=False)
            if out_dir is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == total):
                now = time.perf_counter()
                elapsed, t0 = elapsed + now - t0, now
                if ctx.is_main:
                    ckpt = save_checkpoint(out_dir / CHECKPOINT_DIR, module, opt, sched, done, cfg, {
                        "sae_config": cfg.to_dict(), "tokens": tokens, "losses": losses, "history": history,
                        "elapsed_s": elapsed, "world_size": ctx.world_size,
                    })
                else:  # the main process writes it (the path is the same; named in error messages)
                    ckpt = out_dir / CHECKPOINT_DIR
    finally:
        bar.close()
    steps_done = len(losses)
    elapsed += time.perf_counter() - t0
    last_ckpt_step = read_checkpoint_state(ckpt)["step"] if ckpt is not None and ctx.is_main else None
    if out_dir is not None and ctx.is_main and steps_done > start and last_ckpt_step != steps_done:
        # the stream ended early: checkpoint where it ended
        ckpt = save_checkpoint(out_dir / CHECKPOINT_DIR, module, opt, sched, steps_done, cfg, {
            "sae_config": cfg.to_dict(), "tokens": tokens, "losses": losses, "history": history, "elapsed_s": elapsed,
            "world_size": ctx.world_size,
        })
    sae.eval()
    result = SAETrainResult(sae=sae, steps=steps_done, tokens=tokens, losses=losses, history=history,
                            dead_fraction=float(module.dead_mask.double().mean()), out=out_dir, resumed_from=start)
    if out_dir is not None and ctx.is_main:
        sae.save(out_dir)
        summary = {"steps": steps_done, "tokens": tokens, "final": result.final,
                   "final_loss": losses[-1] if losses else None, "dead_fraction": result.dead_fraction,
                   "training_time_s": round(elapsed, 2), "world_size": ctx.world_size, "config": cfg.to_dict()}
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    ctx.barrier()
    return result


def load_checkpoint_sae(folder: str | os.PathLike,
                        device: str | torch.device | None = None) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The SAE inside a training checkpoint (``out`` or ``out/checkpoint``) and the checkpoint's JSON state."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        found = find_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(
                f"no SAE training checkpoint in {folder} (expected {folder}/{CHECKPOINT_DIR}/state.json)")
        folder = found
    state = read_checkpoint_state(folder)
    sae = SparseAutoencoder(SAEConfig.from_dict(state["sae_config"]))
    weights = {k.removeprefix("sae."): v for k, v in load_file(str(folder / "model.safetensors")).items()
               if k.startswith("sae.")}
    sae.load_state_dict(weights, strict=True)
    return sae.to(device).eval() if device is not None else sae.eval(), state
