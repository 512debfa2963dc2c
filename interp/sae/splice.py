"""Run a model with an SAE spliced in at its hook, score the splice (CE loss recovered, KL), and edit its latents.

    logits = run_with_sae(model, tokens, sae=sae, with_error=False)     # the hook's value becomes x̂
    with spliced(model, sae=sae, with_error=True):                       # inserted for the block (generation too)
        logits, cache = model.run_with_cache(tokens)                     # cache["<hook>.sae.hook_sae_acts_post"]
    splice_metrics(model, tokens, sae=sae)                               # SpliceMetrics(ce_recovered_zero=..., ...)
    iv = latent_intervention(sae, 7, "clamp", value=5.0)                 # at <hook>.sae.hook_sae_acts_post
    with spliced(model, sae=sae, with_error=True), iv.applied(model):
        model.generate(prompt, max_new_tokens=4)                         # latent 7 held at 5, error term kept

The SAE is inserted with :func:`interp.hooks.insert` (a child of the model's hook point, its hook points in the
model's ``hook_dict`` as ``<hook>.sae.hook_sae_*``) and taken out afterwards, also when the forward raises.
``with_error=True`` keeps the SAE's error term ε = x - x̂: with no edit the value is exactly x, with an edit of the
latents the model sees only the change the edit makes (:meth:`SparseAutoencoder.forward`); ``with_error=False``
replaces the value by the reconstruction. Steering *along* a latent without a splice (x + α·W_dec[i] at the
model's hook) is :class:`interp.steering.SAELatents`.

A hook value [b, pos, ..., d] is encoded along its last axis; if that is not ``d_in`` the axes after ``pos`` are
flattened (so an SAE of width H·P reads ``hook_u`` [b, pos, H, P]).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.hook_points import absolute_positions
from interp.hooks.insert import insert
from interp.hooks.protocol import HookedModel
from interp.hooks.positions import PositionsLike
from interp.hooks.positions import position_mask as _position_mask  # this module's position_mask wraps it
from interp.hooks.tokens import as_tokens

from . import metrics
from .model import SparseAutoencoder, flatten_input

__all__ = [
    "resolve_hook", "spliced", "ablation_hook", "run_with_sae", "splice_metrics", "SpliceMetrics", "position_mask",
    "latent_intervention",
]


def resolve_hook(sae: SparseAutoencoder, hook: str | None = None) -> str:
    """``hook`` or the SAE's ``cfg.hook_name``; an error if neither is set."""
    name = hook or sae.cfg.hook_name
    if not name:
        raise ValueError("this SAE has no cfg.hook_name: pass hook='blocks.{i}.hook_resid_post' (or another hook)")
    return name


def position_mask(act: Tensor, hook: Any, positions: Sequence[int] | Tensor | None) -> Tensor | None:
    """[1, pos, 1] bool mask of the requested absolute positions (``hook.ctx['positions']`` when generating;
    negative positions count from the end of this forward; :func:`interp.hooks.positions.position_mask`),
    or None for every position."""
    if positions is None:
        return None
    if act.dim() < 3:
        raise ValueError(f"positions need a hook value [batch, pos, ...]; got shape {tuple(act.shape)}")
    return _position_mask(absolute_positions(hook, act.shape[1], act.device), positions)[None, :, None]


@contextlib.contextmanager
def spliced(model: HookedModel, *, sae: SparseAutoencoder, hook: str | None = None,
            with_error: bool = False) -> Iterator[SparseAutoencoder]:
    """Context manager: ``sae`` inserted into ``model`` at ``hook`` (default ``sae.cfg.hook_name``) with
    ``with_error`` for the block (every forward and generation step in it), taken out afterwards (also when the
    block raises) and its ``with_error`` restored. Gives the SAE."""
    name = resolve_hook(sae, hook)
    before = sae.with_error
    sae.with_error = bool(with_error)
    try:
        with insert(model, name, sae):
            yield sae
    finally:
        sae.with_error = before


def ablation_hook(kind: str = "zero", mean: Tensor | None = None,
                  positions: Sequence[int] | Tensor | None = None) -> Callable[[Tensor, Any], Tensor]:
    """Replace the hook's value by zeros (``"zero"``) or by ``mean`` (``"mean"``, shape [d] of the value's
    trailing axes flattened, or broadcastable to it)."""
    if kind not in ("zero", "mean"):
        raise ValueError(f"ablation {kind!r} is not 'zero' or 'mean'")
    if kind == "mean" and mean is None:
        raise ValueError("mean ablation needs mean=... (the mean activation at the hook)")

    def hook_fn(act: Tensor, hook: Any) -> Tensor:
        if kind == "zero":
            out = torch.zeros_like(act)
        else:
            out = mean.to(act.device, act.dtype).reshape(act.shape[2:] if mean.numel() == act.shape[2:].numel()
                                                        else mean.shape).expand_as(act)
        mask = position_mask(act, hook, positions)
        return out if mask is None else torch.where(mask.reshape(mask.shape[:2] + (1,) * (act.dim() - 2)), out, act)

    return hook_fn


def run_with_sae(model: HookedModel, tokens: Any, *, sae: SparseAutoencoder, hook: str | None = None,
                 with_error: bool = False, **forward_kwargs: Any) -> Any:
    """The model's output on ``tokens`` (text, [L] or [b, L]; :func:`interp.hooks.tokens.as_tokens`) with ``sae``
    spliced at ``hook`` (default ``sae.cfg.hook_name``; :func:`spliced`). ``forward_kwargs`` go to the model."""
    tokens = as_tokens(model, tokens)
    with spliced(model, sae=sae, hook=hook, with_error=with_error):
        return model(tokens, **forward_kwargs)


@dataclass
class SpliceMetrics:
    """The splice of an SAE scored on some tokens (floats; docs/design.md §5.3).

    ``ce_clean`` / ``ce_sae``: mean next-token cross-entropy of the model / with the reconstruction in place of the
    hook's value; ``kl_sae``: KL(clean ‖ spliced) of the next-token distributions, mean over tokens; at the hook
    ``l0`` (active latents per token), ``explained_variance``, ``mse``. For each ablation a that was run
    (``zero``, ``mean``; None otherwise): ``ce_{a}``, ``kl_{a}`` and ``ce_recovered_{a}`` = (CE_a - CE_sae) /
    (CE_a - CE_clean).
    """

    l0: float
    explained_variance: float
    mse: float
    ce_clean: float
    ce_sae: float
    kl_sae: float
    ce_zero: float | None = None
    kl_zero: float | None = None
    ce_recovered_zero: float | None = None
    ce_mean: float | None = None
    kl_mean: float | None = None
    ce_recovered_mean: float | None = None

    def to_dict(self) -> dict[str, float]:
        """The metrics that were computed, {name: value}."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@torch.no_grad()
def splice_metrics(
    model: HookedModel,
    tokens: Any,
    *,
    sae: SparseAutoencoder,
    hook: str | None = None,
    attention_mask: Tensor | None = None,
    ablations: Iterable[str] = ("zero", "mean"),
    mean_activation: Tensor | None = None,
) -> SpliceMetrics:
    """Score the splice of ``sae`` into ``model`` on ``tokens`` (text, [L] or [b, L]) at ``hook`` (default
    ``sae.cfg.hook_name``): a :class:`SpliceMetrics`. The mean ablation uses ``mean_activation`` or the mean of
    the hook's value over these tokens; ``attention_mask`` [b, L] leaves out padding."""
    name = resolve_hook(sae, hook)
    tokens = as_tokens(model, tokens)
    fwd = {"attention_mask": attention_mask} if attention_mask is not None else {}
    mask = attention_mask.bool() if attention_mask is not None else None
    clean_logits, cache = model.run_with_cache(tokens, names_filter=name, **fwd)
    act = flatten_input(cache[name], sae.cfg.d_in, name)
    latents = sae.encode(act, use_batch_topk=False)
    x_hat = sae.decode(latents)
    act_mask = mask.to(act.device) if mask is not None and act.dim() == 3 else None
    result: dict[str, float] = {
        "l0": metrics.l0(latents, act_mask),
        "explained_variance": metrics.explained_variance(act, x_hat, act_mask),
        "mse": metrics.mse(act, x_hat, act_mask),
        "ce_clean": metrics.cross_entropy(clean_logits, tokens, attention_mask),
    }
    sae_logits = run_with_sae(model, tokens, sae=sae, hook=name, with_error=False, **fwd)
    result["ce_sae"] = metrics.cross_entropy(sae_logits, tokens, attention_mask)
    logit_mask = mask.to(clean_logits.device) if mask is not None else None
    result["kl_sae"] = metrics.kl_divergence(clean_logits, sae_logits, logit_mask)
    for kind in ablations:
        mean = None
        if kind == "mean":
            mean = mean_activation if mean_activation is not None else \
                (act[act_mask] if act_mask is not None else act.reshape(-1, act.shape[-1])).mean(0)
        logits = model.run_with_hooks(tokens, fwd_hooks=[(name, ablation_hook(kind, mean))], **fwd)
        result[f"ce_{kind}"] = metrics.cross_entropy(logits, tokens, attention_mask)
        result[f"kl_{kind}"] = metrics.kl_divergence(clean_logits, logits, logit_mask)
        result[f"ce_recovered_{kind}"] = metrics.ce_loss_recovered(
            result["ce_clean"], result["ce_sae"], result[f"ce_{kind}"])
    return SpliceMetrics(**result)


def latent_intervention(sae: SparseAutoencoder, latents: int | Sequence[int], operator: str = "clamp", *,
                        value: float | Sequence[float] | None = None, scale: float = 1.0, hook: str | None = None,
                        positions: PositionsLike = "all") -> Any:
    """An :class:`interp.steering.Intervention` on latents of ``sae`` spliced at ``hook`` (default
    ``sae.cfg.hook_name``): it edits ``<hook>.sae.hook_sae_acts_post`` [..., d_sae], so it acts while the SAE is
    inserted (:func:`spliced`; with ``with_error=True`` the model sees only the change of the edit).

    ``operator``: "clamp" (each latent set to ``value``: one number, or one per latent), "ablate" (latents set to
    0) or "add" (``scale`` added to each latent). ``scale`` 0 is a no-op; ``positions`` as for any intervention.
    The source is a :class:`interp.steering.Direction` of the latents' unit vectors in latent space.
    """
    from interp.steering import Direction, Intervention

    lats = [int(latents)] if isinstance(latents, int) else [int(i) for i in latents]
    if not lats or len(set(lats)) != len(lats) or not all(0 <= i < sae.cfg.d_sae for i in lats):
        raise ValueError(f"latents must be distinct ids in 0..{sae.cfg.d_sae - 1}, got {lats}")
    if operator not in ("clamp", "ablate", "add"):
        raise ValueError(f"operator must be 'clamp', 'ablate' or 'add', got {operator!r}")
    if operator == "clamp":
        vals = [float(value)] * len(lats) if isinstance(value, (int, float)) else value
        if vals is None or len(vals) != len(lats):
            raise ValueError(f"clamp needs value=: one number or one per latent ({len(lats)}), got {value!r}")
        value = [float(v) for v in vals]
    basis = torch.zeros(len(lats), sae.cfg.d_sae)
    basis[torch.arange(len(lats)), torch.tensor(lats)] = 1.0  # one unit vector per latent
    return Intervention(Direction(basis, "sae_latents", {"latents": lats}), f"{resolve_hook(sae, hook)}.sae."
                        "hook_sae_acts_post", operator, scale=scale, value=value if operator == "clamp" else None,
                        positions=positions)
