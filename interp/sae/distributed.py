"""Data-parallel SAE training with ``torchrun`` (DistributedDataParallel; gloo on the CPU, nccl on GPUs).

    torchrun --nproc_per_node 2 -m interp.sae.distributed --config cfg.json --store runs/cache/x --out runs/sae/x
    torchrun --nproc_per_node 2 $(which interp) train-sae --config cfg.json --store runs/cache/x --out runs/sae/x

    # in Python, inside a torchrun process:
    from interp.sae.distributed import train_sae_distributed
    result = train_sae_distributed(cfg, "runs/cache/x", out="runs/sae/x")

(``python -m torch.distributed.run`` is ``torchrun`` where the script is not on PATH.) Arguments as
``interp train-sae`` (:mod:`interp.sae.cli`); run without torchrun it trains in one process.

How a step works with ``W`` processes (ranks):

* **Batch size.** ``cfg.batch_size`` is the *global* (effective) batch: each rank reads ``batch_size / W`` rows
  per step (it must divide), so the effective batch = per-rank batch × world size = ``cfg.batch_size``, and
  ``cfg.total_steps``, the learning-rate schedule and the token budget do not depend on ``W``: the same config
  trains the same number of tokens on 1 or 8 processes.
* **Data.** Each rank reads its own disjoint shards of the activation store
  (:meth:`~interp.activations.ActivationStore.shuffled_batches` with ``rank`` / ``world_size``, ``drop_last``),
  shuffled with the same seed. The global batch of step t is the concatenation, in rank order, of every rank's
  t-th batch (:func:`global_batches` yields exactly that, so one process can replay a DDP run).
* **Gradients.** Each rank's loss is the mean over its rows; DDP averages the gradients, which is the gradient of
  the mean over the global batch (ranks with unequal batches are re-weighted by their row counts). The logged
  loss is the global batch's (an all-reduce), so loss curves compare across world sizes.
* **Everything else that sees the batch** agrees across ranks by collectives: ``b_dec`` is initialised from the
  all-gathered first global batch; the dead-latent clock advances by the global token count and resets for the
  latents that fired on any rank (all-reduce MAX); BatchTopK keeps the ``k × N_global`` largest activations of the
  *global* batch (each rank all-gathers its local top candidates to find the global threshold) and its inference
  threshold follows the global minimum kept activation; logged L0 / explained variance / MSE are global.
  Parameters and optimizer states are therefore identical on every rank after every step.
* **Files.** Only rank 0 writes checkpoints, the final SAE and ``training_summary.json`` (the out folder must
  be on a file system every rank sees, for resume). Re-running the same command resumes from the checkpoint; the
  number of processes must be the same (each rank's data depends on it: the trainer refuses a mismatch).
* **Failures.** A NaN/inf in any rank's batch or loss stops every rank at the same step with the usual
  :class:`~interp.sae.train.NonFiniteTrainingError`; a rank whose stream ends stops them all.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from interp.activations.store import DEFAULT_BUFFER_SHARDS, ActivationStore
from interp.metrics import explained_variance_from_sums

from .config import SAEConfig
from .losses import SAETrainingModule, TrainStepOutput, auxk_loss, reconstruction_loss
from .model import SparseAutoencoder
from .train import SAETrainResult, TrainContext, train_sae

__all__ = [
    "DDPContext", "init_distributed", "is_torchrun", "train_sae_distributed", "rank_batches", "global_batches",
    "epochs_for",
]


def is_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its ``RANK`` / ``WORLD_SIZE`` variables are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(backend: str | None = None) -> "DDPContext":
    """Join the ``torchrun`` process group (once) and return this rank's :class:`DDPContext`.

    ``backend`` defaults to ``nccl`` when CUDA is available (each rank on ``cuda:LOCAL_RANK``), else ``gloo``
    (CPU).
    """
    if not dist.is_initialized():
        if not is_torchrun():
            raise RuntimeError("not started by torchrun (RANK / WORLD_SIZE unset): run "
                               "`torchrun --nproc_per_node N -m interp.sae.distributed ...`, or train in one process")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(local)
            dist.init_process_group(backend=backend, device_id=local)  # binds the rank to its GPU
        else:
            dist.init_process_group(backend=backend)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    else:
        device = torch.device("cpu")
    return DDPContext(device)


class _GlobalBatchTopK(nn.Module):
    """The training forward of a batchtopk SAE with the top-k taken over the global batch (all ranks): exactly
    round(k · N_global) activations are kept in all, those above the global threshold (the k·N-th largest of the
    union of every rank's local top candidates) and, of those equal to it, as many as are missing, in rank order.
    x [n_local, d_in] -> :class:`TrainStepOutput`. Other architectures (and eval mode) pass through."""

    def __init__(self, module: SAETrainingModule, ctx: "DDPContext"):
        super().__init__()
        self.inner = module
        self.ctx = ctx

    def forward(self, x: Tensor, sparsity_scale: float = 1.0) -> TrainStepOutput:
        sae = self.inner.sae
        if sae.cfg.architecture != "batchtopk" or not sae.training:
            return self.inner(x, sparsity_scale)
        pre = sae.encode_pre(x.to(sae.dtype))  # [n, d_sae]
        acts = torch.relu(pre)
        n_global = self.ctx.last_n_global
        keep = min(n_global * sae.cfg.d_sae, max(1, round(sae.cfg.k * n_global)))
        local = acts.detach().flatten()
        top = torch.topk(local, min(keep, local.numel()), sorted=False).values
        if top.numel() < keep:  # pad with a value below every activation (they are >= 0)
            top = torch.cat([top, top.new_full((keep - top.numel(),), -1.0)])
        gathered = [torch.empty_like(top) for _ in range(self.ctx.world_size)]
        dist.all_gather(gathered, top)
        threshold = torch.topk(torch.cat(gathered), keep, sorted=False).values.min()
        # exactly `keep` kept in all, as in one process: everything above the threshold, and as many activations
        # equal to it as are still missing, taken in rank order (identical rows make exact ties common)
        above, equal = local > threshold, local == threshold
        counts = torch.stack([above.sum(), equal.sum()]).to(self.ctx.device)
        all_counts = [torch.empty_like(counts) for _ in range(self.ctx.world_size)]
        dist.all_gather(all_counts, counts)
        n_above = sum(int(c[0]) for c in all_counts)
        ties_before = sum(int(c[1]) for c in all_counts[: self.ctx.rank])
        take = min(int(counts[1]), max(0, keep - n_above - ties_before))
        mask = above | (equal & (torch.cumsum(equal.to(torch.long), 0) <= take))
        latents = acts * mask.reshape(acts.shape).to(acts.dtype)
        x_hat = sae.decode(latents)
        x = x.to(sae.dtype)
        cfg = sae.cfg
        losses = {
            "reconstruction_loss": reconstruction_loss(x, x_hat),
            "auxk_loss": cfg.aux_coefficient * auxk_loss(x, x_hat, pre, self.inner.dead_mask, sae.W_dec,
                                                         cfg.effective_aux_k),
        }
        return TrainStepOutput(loss=sum(losses.values()), losses=losses, latents=latents, x_hat=x_hat)


class DDPContext(TrainContext):
    """One rank of a data-parallel SAE training run (see the module docstring); pass it to
    :func:`~interp.sae.train.train_sae` as ``context=`` with this rank's batch stream."""

    def __init__(self, device: torch.device | str = "cpu"):
        if not dist.is_initialized():
            raise RuntimeError("DDPContext needs an initialised process group (init_distributed())")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device(device)
        self.last_n_global = 0

    def _t(self, values: list[float], dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def wrap(self, module: SAETrainingModule) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers (dead-latent clock, batchtopk threshold) are kept equal by the collectives below: no per-forward
        # broadcast (the keyword was renamed in recent torch)
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})
        return DDP(_GlobalBatchTopK(module, self), device_ids=ids, **no_sync)

    def step_begin(self, x: Tensor | None) -> tuple[bool, bool, int]:
        ended, bad, n = super().step_begin(x)
        t = self._t([float(ended), float(bad), float(n)])
        dist.all_reduce(t)
        self.last_n_global = int(t[2])
        return bool(t[0] > 0), bool(t[1] > 0), self.last_n_global

    def gather_rows(self, x: Tensor) -> Tensor:
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=self.device))
        n_max = max(int(s) for s in sizes)
        padded = torch.zeros(n_max, *x.shape[1:], dtype=x.dtype, device=self.device)
        padded[: x.shape[0]] = x.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).to(x.device)

    def reduce_loss(self, loss: Tensor, n_local: int, n_global: int) -> tuple[float, bool]:
        value = float(loss)
        t = self._t([value * n_local if math.isfinite(value) else 0.0, float(not math.isfinite(value))])
        dist.all_reduce(t)
        return float(t[0]) / max(1, n_global), bool(t[1] > 0)

    def loss_weight(self, n_local: int, n_global: int) -> float:
        return n_local * self.world_size / n_global  # exactly 1.0 when every rank has the same batch size

    def record_firing(self, module: SAETrainingModule, latents: Tensor) -> None:
        fired = (latents.reshape(-1, latents.shape[-1]) != 0).any(0).to(torch.int32).to(self.device)
        dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        with torch.no_grad():
            module.tokens_since_fired += self.last_n_global
            module.tokens_since_fired[fired.to(module.tokens_since_fired.device).bool()] = 0

    def update_batchtopk_threshold(self, sae: SparseAutoencoder, latents: Tensor) -> None:
        if sae.cfg.architecture != "batchtopk":
            return
        positive = latents[latents > 0]
        t = self._t([float(positive.min()) if positive.numel() else math.inf])
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        if math.isfinite(float(t)):
            sae.update_batchtopk_threshold(t.to(device=latents.device, dtype=latents.dtype).reshape(1))

    def batch_metrics(self, x: Tensor, x_hat: Tensor, latents: Tensor) -> dict[str, float]:
        a, b = x.detach().double(), x_hat.detach().double()
        n, d = a.shape
        sums = torch.cat([
            torch.stack([torch.tensor(float(n), dtype=torch.float64, device=a.device),
                         (latents != 0).sum().double(), (a - b).pow(2).sum(), a.pow(2).sum()]),
            a.sum(0),
        ]).to(self.device)
        dist.all_reduce(sums)
        n_all, nnz, sse, sumsq = (float(v) for v in sums[:4])
        return {"l0": nnz / n_all, "explained_variance": explained_variance_from_sums(sse, sumsq, sums[4:], n_all),
                "mse": sse / (n_all * d)}

    def barrier(self) -> None:
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------------
# data


def _rank_rows(store: ActivationStore, rank: int, world_size: int) -> int:
    return sum(e.n_rows for e in store.rank_shards(rank, world_size))


def epochs_for(store: ActivationStore, cfg: SAEConfig, world_size: int = 1) -> int:
    """Passes over the store needed for ``cfg.total_steps`` steps of ``cfg.batch_size / world_size`` rows per rank
    (the rank with the fewest rows decides; each epoch drops its last partial batch)."""
    per_rank = _per_rank(cfg, world_size)
    steps = min(_rank_rows(store, r, world_size) // per_rank for r in range(world_size))
    if steps == 0:
        raise ValueError(
            f"{store.folder}: some rank has fewer rows than its per-rank batch ({per_rank} = batch_size "
            f"{cfg.batch_size} / {world_size} ranks); lower batch_size, cache more tokens, or use fewer ranks"
        )
    return max(1, -(-cfg.total_steps // steps))


def _per_rank(cfg: SAEConfig, world_size: int) -> int:
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} (the global batch) must be a multiple of the number of "
                         f"processes ({world_size}): each rank reads batch_size / world_size rows per step")
    return cfg.batch_size // world_size


def rank_batches(store: ActivationStore, cfg: SAEConfig, rank: int = 0, world_size: int = 1, *,
                 hook: str | None = None, epochs: int | None = None, seed: int | None = None,
                 buffer_shards: int = DEFAULT_BUFFER_SHARDS) -> Iterator[Tensor]:
    """One rank's training batches: float32 [batch_size / world_size, d_in], from its own shards, shuffled with
    ``seed`` (default ``cfg.seed``), full batches only, ``epochs`` passes (default: :func:`epochs_for`)."""
    per_rank = _per_rank(cfg, world_size)
    epochs = epochs if epochs is not None else epochs_for(store, cfg, world_size)
    return store.shuffled_batches(per_rank, seed=cfg.seed if seed is None else seed,
                                  hook=hook or _store_hook(store, cfg), epochs=epochs, buffer_shards=buffer_shards,
                                  rank=rank, world_size=world_size, drop_last=True)


def global_batches(store: ActivationStore, cfg: SAEConfig, world_size: int, **kwargs: Any) -> Iterator[Tensor]:
    """The global batches of a ``world_size``-process run, in one process: step t yields the concatenation, in
    rank order, of every rank's t-th batch [batch_size, d_in] (stops when a rank's stream ends). Training on these
    with :func:`train_sae` reproduces the DDP run up to floating-point summation order. ``kwargs`` as
    :func:`rank_batches`."""
    streams = [rank_batches(store, cfg, r, world_size, **kwargs) for r in range(world_size)]
    for parts in zip(*streams):
        yield torch.cat(parts)


def _store_hook(store: ActivationStore, cfg: SAEConfig) -> str | None:
    """The store's hook to read: ``cfg.hook_name`` if the store has it, else the store's only hook."""
    if cfg.hook_name and cfg.hook_name in store.hooks:
        return cfg.hook_name
    return None if len(store.hooks) == 1 else store.hook(cfg.hook_name)


# ----------------------------------------------------------------------------------------------------------------
# training


def train_sae_distributed(
    cfg: SAEConfig,
    store: ActivationStore | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    hook: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    buffer_shards: int = DEFAULT_BUFFER_SHARDS,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    backend: str | None = None,
    allow_partial: bool = False,
) -> SAETrainResult:
    """Train an SAE on an activation store with every ``torchrun`` process (one process without torchrun).

    Args:
        cfg: the SAE and run; ``cfg.batch_size`` is the global batch (module docstring).
        store: the activation cache (a folder or :class:`ActivationStore`); each rank reads its own shards.
        out: run folder (rank 0 writes; every rank reads it to resume).
        hook: the store's hook (default ``cfg.hook_name`` or the store's only hook).
        epochs: passes over the data (default: enough for ``cfg.total_training_tokens``).
        seed: shuffling seed (default ``cfg.seed``).
        buffer_shards: shards shuffled together per rank.
        resume, progress, max_steps: as :func:`~interp.sae.train.train_sae`.
        backend: process-group backend (default nccl with CUDA, else gloo).
        allow_partial: train on an incomplete store (its writing run killed or still going); otherwise
            :class:`~interp.activations.store.IncompleteStoreError` naming the shards present and expected.

    Returns: :class:`~interp.sae.train.SAETrainResult` (the same SAE on every rank; the loss curve is the global
    batch's).
    """
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    store.require_complete(allow_partial=allow_partial)
    if is_torchrun() or dist.is_initialized():
        ctx: TrainContext = init_distributed(backend)
        device = ctx.device  # type: ignore[attr-defined]
    else:
        ctx, device = TrainContext(), None
    batches = (lambda: rank_batches(store, cfg, ctx.rank, ctx.world_size, hook=hook, epochs=epochs, seed=seed,
                                    buffer_shards=buffer_shards))
    return train_sae(cfg, batches, out, device=device, resume=resume, progress=progress, max_steps=max_steps,
                     context=ctx)


if __name__ == "__main__":  # pragma: no cover
    # ``python -m interp.sae.distributed`` / ``torchrun ... -m interp.sae.distributed``: the command line of
    # ``interp train-sae`` (the entry point, :mod:`interp.sae.cli`, trains data-parallel when torchrun started it)
    from interp.sae.cli import main

    main(sys.argv[1:])
