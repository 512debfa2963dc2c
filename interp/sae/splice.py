"""Run a model with an SAE spliced in at its hook, and score the splice (CE loss recovered, KL).

    fn = splice_hook(sae, with_error=False)                  # the hook's value becomes x̂
    logits = model.run_with_hooks(tokens, fwd_hooks=[(sae.cfg.hook_name, fn)])
    model.generate(prompt, fwd_hooks=[(sae.cfg.hook_name, fn)])  # every decoding step too
    splice_metrics(model, sae, tokens)                        # {"ce_recovered_zero": ..., "kl_sae": ...}

``with_error=True`` keeps the SAE's error term ε = x - x̂, so the value is x̂' + ε where x̂' decodes the (edited)
latents: with no edit that is exactly x (bit for bit: x + (x̂ - x̂.detach()) = x + 0), its gradient wrt x is the
identity's, and gradients still reach the latents (attribution); with an edit the model sees only the change the
edit makes. ``with_error=False`` replaces the
value by the reconstruction.

A hook value [b, pos, ..., d] is encoded along its last axis; if that is not ``d_in`` the axes after ``pos`` are
flattened (so an SAE of width H·P reads ``hook_u`` [b, pos, H, P]).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from interp.hooks.hook_points import absolute_positions
from interp.hooks.positions import position_mask as _position_mask  # this module's position_mask wraps it

from . import metrics
from .model import SparseAutoencoder

__all__ = [
    "resolve_hook_name", "splice_hook", "ablation_hook", "run_with_sae", "splice_metrics", "position_mask",
    "LatentEdit",
]

LatentEdit = Callable[[Tensor], Tensor]  # latents [..., d_sae] -> edited latents [..., d_sae]


def resolve_hook_name(sae: SparseAutoencoder, hook_name: str | None = None) -> str:
    """``hook_name`` or the SAE's ``cfg.hook_name``; an error if neither is set."""
    name = hook_name or sae.cfg.hook_name
    if not name:
        raise ValueError("this SAE has no cfg.hook_name: pass hook_name='blocks.{i}.hook_resid_post' (or another hook)")
    return name


def _flat(act: Tensor, d_in: int, name: str) -> Tensor:
    """[b, pos, ..., d] -> [b, pos, d_in] view (or [..., d_in] if the last axis already is d_in)."""
    if act.shape[-1] == d_in:
        return act
    if act.dim() >= 3 and act.shape[2:].numel() == d_in:
        return act.flatten(2)
    raise ValueError(f"hook {name!r} has shape {tuple(act.shape)}; the SAE reads d_in={d_in} features per position")


def position_mask(act: Tensor, hook: Any, positions: Sequence[int] | Tensor | None) -> Tensor | None:
    """[1, pos, 1] bool mask of the requested absolute positions (``hook.ctx['positions']`` when generating;
    negative positions count from the end of this forward; :func:`interp.hooks.positions.position_mask`),
    or None for every position."""
    if positions is None:
        return None
    if act.dim() < 3:
        raise ValueError(f"positions need a hook value [batch, pos, ...]; got shape {tuple(act.shape)}")
    return _position_mask(absolute_positions(hook, act.shape[1], act.device), positions)[None, :, None]


def splice_hook(
    sae: SparseAutoencoder,
    with_error: bool = True,
    edit: LatentEdit | None = None,
    positions: Sequence[int] | Tensor | None = None,
    cache: dict[str, Tensor] | None = None,
) -> Callable[[Tensor, Any], Tensor]:
    """A forward hook that routes the hook's value through ``sae``.

    Args:
        with_error: keep the error term (value = decode(edited latents) + x - x̂; exactly x without ``edit``),
            or replace the value by decode(edited latents).
        edit: a function latents [b, pos, d_sae] -> latents (clamp, ablate, scale a latent, ...).
        positions: splice / edit only these absolute positions (others keep the clean value).
        cache: if given, ``cache[hook.name]`` receives the latents [b, pos, d_sae] of each call (detached).
    """

    def hook_fn(act: Tensor, hook: Any) -> Tensor:
        x = _flat(act, sae.cfg.d_in, getattr(hook, "name", "?"))
        exact = with_error and edit is None
        # the exact splice encodes a detached copy: the value and its gradient wrt x stay those of the identity,
        # while gradients still reach the latents (and the SAE) through x̂ - x̂.detach() = 0
        latents = sae.encode(x.detach() if exact else x, use_batch_topk=False)
        if cache is not None:
            cache[getattr(hook, "name", "sae")] = latents.detach()
        x_hat = sae.decode(latents)
        new = sae.decode(edit(latents.clone())) if edit is not None else x_hat
        if with_error:
            out = x + (x_hat - x_hat.detach() if exact else new - x_hat).to(x.dtype)
        else:
            out = new.to(x.dtype)
        mask = position_mask(x, hook, positions)
        if mask is not None:
            out = torch.where(mask, out, x)
        return out.reshape(act.shape)

    return hook_fn


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


def run_with_sae(model: Any, input: Any, sae: SparseAutoencoder, hook_name: str | None = None,
                 with_error: bool = False, edit: LatentEdit | None = None, **forward_kwargs: Any) -> Any:
    """``model.run_with_hooks(input, ...)`` with ``sae`` spliced at ``hook_name`` (default ``sae.cfg.hook_name``)."""
    name = resolve_hook_name(sae, hook_name)
    return model.run_with_hooks(input, fwd_hooks=[(name, splice_hook(sae, with_error=with_error, edit=edit))],
                                **forward_kwargs)


@torch.no_grad()
def splice_metrics(
    model: Any,
    sae: SparseAutoencoder,
    tokens: Tensor,
    hook_name: str | None = None,
    attention_mask: Tensor | None = None,
    ablations: Iterable[str] = ("zero", "mean"),
    mean_activation: Tensor | None = None,
) -> dict[str, float]:
    """Score the splice of ``sae`` into ``model`` on ``tokens`` [b, pos].

    Returns floats: ``ce_clean``, ``ce_sae`` (reconstruction only), for each ablation a (``zero``/``mean``)
    ``ce_{a}``, ``ce_recovered_{a}`` = (CE_a - CE_sae) / (CE_a - CE_clean) and ``kl_{a}``; ``kl_sae`` (KL of the
    spliced next-token distribution from the clean one); and at the hook ``l0``, ``explained_variance``, ``mse``.
    The mean ablation uses ``mean_activation`` or the mean of the hook's value over these tokens.
    """
    name = resolve_hook_name(sae, hook_name)
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    fwd = {"attention_mask": attention_mask} if attention_mask is not None else {}
    mask = attention_mask.bool() if attention_mask is not None else None
    clean_logits, cache = model.run_with_cache(tokens, names_filter=name, **fwd)
    act = _flat(cache[name], sae.cfg.d_in, name)
    latents = sae.encode(act, use_batch_topk=False)
    x_hat = sae.decode(latents)
    act_mask = mask.to(act.device) if mask is not None and act.dim() == 3 else None
    result = {
        "l0": metrics.l0(latents, act_mask),
        "explained_variance": metrics.explained_variance(act, x_hat, act_mask),
        "mse": metrics.mse(act, x_hat, act_mask),
        "ce_clean": metrics.cross_entropy(clean_logits, tokens, attention_mask),
    }
    sae_logits = model.run_with_hooks(tokens, fwd_hooks=[(name, splice_hook(sae, with_error=False))], **fwd)
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
    return result
