"""Feature analysis of a trained SAE: what activates a latent, how often, and what it writes.

    acts = top_activating_examples(model, tokens, sae=sae, latents=[3, 17], k=5)  # {latent: [LatentExample, ...]}
    density = activation_density(model, tokens, sae=sae)                         # [d_sae]
    eff = logit_effects(model, sae=sae, latents=[3])                             # decoder row @ W_U
    report = latent_report(model, corpus, sae=sae, latent=3)                     # all of it for one latent

Token sequences ``tokens`` are [n_seq, pos] (or a text, or one sequence [pos]:
:func:`interp.hooks.tokens.as_tokens`); latents are read at the SAE's hook (``sae.cfg.hook_name`` unless ``hook``
is given) in batches of ``batch_size`` sequences, stopping the model after the hook's block. Steering with a
latent: :class:`interp.steering.SAELatents` (add its decoder row at the model's hook) or
:func:`interp.sae.latent_intervention` (clamp / ablate latents of the spliced SAE).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.hook_points import layer_of
from interp.hooks.protocol import HookedModel
from interp.hooks.tokens import as_tokens

from .model import SparseAutoencoder, flatten_input
from .splice import resolve_hook

__all__ = [
    "LatentExample", "LogitEffects", "LatentBatch", "latent_activations", "top_activating_examples",
    "activation_density", "logit_effects", "latent_trace", "LatentReport", "latent_report",
]

# hooks whose value is (or is added to) the residual stream, so a decoder row can be read through W_U
_RESIDUAL_SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_embed", "hook_mixer_out",
                      "ssm.hook_out", "hook_attn_out", "hook_mlp_out", "ln_final.hook_normalized", "ssm.hook_in",
                      "ln1.hook_normalized")


@dataclass
class LatentExample:
    """One activating token of a latent, with context.

    ``tokens`` / ``str_tokens``: the context window; ``focus``: index of the activating token in it;
    ``activations``: the latent's activation on each context token.
    """

    latent: int
    activation: float
    sequence: int
    position: int
    tokens: list[int]
    str_tokens: list[str]
    focus: int
    activations: list[float]

    def __str__(self) -> str:
        text = "".join(f"[[{t}]]" if i == self.focus else t for i, t in enumerate(self.str_tokens))
        return f"latent {self.latent} = {self.activation:.3f} @ seq {self.sequence} pos {self.position}: {text!r}"


@dataclass
class LogitEffects:
    """Direct logit effect of latents: ``effects`` [n, vocab] = W_dec[latents] (⊙ final-norm weight) @ W_U,
    with the ``k`` most promoted (``top_*``) and suppressed (``bottom_*``) tokens per latent."""

    latents: list[int]
    effects: Tensor
    top_ids: Tensor
    top_values: Tensor
    bottom_ids: Tensor
    bottom_values: Tensor
    top_tokens: list[list[str]]
    bottom_tokens: list[list[str]]


@dataclass
class LatentBatch:
    """The latents of one batch of sequences: ``latents`` [b, pos, d_sae] of sequences ``start`` .. start + b - 1,
    ``mask`` [b, pos] (the batch's attention mask) or None."""

    start: int
    latents: Tensor
    mask: Tensor | None


def _str_tokens(model: HookedModel, ids: Sequence[int]) -> list[str]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [f"<{int(i)}>" for i in ids]
    return [tok.decode([int(i)]) for i in ids]


@torch.no_grad()
def latent_activations(
    model: HookedModel, tokens: Any, *, sae: SparseAutoencoder, hook: str | None = None, batch_size: int = 32,
    attention_mask: Tensor | None = None,
) -> Iterator[LatentBatch]:
    """The latents of ``tokens`` [n_seq, pos] at ``hook``, a :class:`LatentBatch` per ``batch_size`` sequences."""
    name = resolve_hook(sae, hook)
    tokens = as_tokens(model, tokens)
    layer = layer_of(name)
    for s in range(0, tokens.shape[0], batch_size):
        batch = tokens[s:s + batch_size]
        kwargs: dict[str, Any] = {}
        mask = None
        if attention_mask is not None:
            mask = attention_mask[s:s + batch_size]
            kwargs["attention_mask"] = mask
        if layer is not None and 0 <= layer and layer + 1 < getattr(model.cfg, "n_layers", 0):
            kwargs["stop_at_layer"] = layer + 1
        _, cache = model.run_with_cache(batch, names_filter=name, **kwargs)
        act = flatten_input(cache[name], sae.cfg.d_in, name)
        yield LatentBatch(s, sae.encode(act, use_batch_topk=False), mask)


@torch.no_grad()
def activation_density(model: HookedModel, tokens: Any, *, sae: SparseAutoencoder, hook: str | None = None,
                       batch_size: int = 32, attention_mask: Tensor | None = None) -> Tensor:
    """Fraction of (unmasked) tokens of ``tokens`` [n_seq, pos] on which each latent is active: [d_sae] float64."""
    count = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n = 0
    for b in latent_activations(model, tokens, sae=sae, hook=hook, batch_size=batch_size,
                                attention_mask=attention_mask):
        lat, mask = b.latents, b.mask
        active = lat != 0
        if mask is not None:
            active = active & mask.to(active.device).bool()[..., None]
            n += int(mask.sum())
        else:
            n += active.shape[0] * active.shape[1]
        count += active.sum((0, 1)).double().cpu()
    return count / max(n, 1)


@torch.no_grad()
def top_activating_examples(
    model: HookedModel,
    tokens: Any,
    *,
    sae: SparseAutoencoder,
    latents: int | Sequence[int] | None = None,
    k: int = 10,
    context: tuple[int, int] = (8, 2),
    hook: str | None = None,
    batch_size: int = 32,
    attention_mask: Tensor | None = None,
) -> dict[int, list[LatentExample]]:
    """The ``k`` tokens of ``tokens`` [n_seq, pos] on which each latent is most active (zero activations are left
    out), with ``context`` = (tokens before, tokens after) around each: {latent: examples, best first}. Latents
    default to all of them."""
    tokens = as_tokens(model, tokens)
    sel = list(range(sae.cfg.d_sae)) if latents is None else ([latents] if isinstance(latents, int) else list(latents))
    idx = torch.tensor(sel, dtype=torch.long)
    L = tokens.shape[1]
    best_v = torch.full((len(sel), 0), float("-inf"))
    best_i = torch.zeros((len(sel), 0), dtype=torch.long)  # flat index seq * L + pos
    for batch in latent_activations(model, tokens, sae=sae, hook=hook, batch_size=batch_size,
                                    attention_mask=attention_mask):
        s, lat, mask = batch.start, batch.latents, batch.mask
        a = lat[..., idx.to(lat.device)].float().cpu()  # [b, pos, n_sel]
        if mask is not None:
            a = a.masked_fill(~mask.cpu().bool()[..., None], float("-inf"))
        b = a.shape[0]
        flat = a.reshape(b * L, len(sel)).T  # [n_sel, b*L]
        ids = (torch.arange(b * L) + s * L).expand(len(sel), -1)
        v = torch.cat([best_v, flat], 1)
        i = torch.cat([best_i, ids], 1)
        top = torch.topk(v, min(k, v.shape[1]), dim=1)
        best_v, best_i = top.values, i.gather(1, top.indices)

    # context activations: re-run only the sequences that hold an example
    seqs = sorted({int(f) // L for f, v in zip(best_i.flatten(), best_v.flatten()) if v > 0})
    ctx_acts: dict[int, Tensor] = {}
    if seqs:
        sub = tokens[torch.tensor(seqs, device=tokens.device)]
        sub_mask = attention_mask[torch.tensor(seqs)] if attention_mask is not None else None
        for batch in latent_activations(model, sub, sae=sae, hook=hook, batch_size=batch_size,
                                        attention_mask=sub_mask):
            a = batch.latents[..., idx.to(batch.latents.device)].float().cpu()
            for j in range(a.shape[0]):
                ctx_acts[seqs[batch.start + j]] = a[j]  # [pos, n_sel]
    before, after = context
    result: dict[int, list[LatentExample]] = {}
    for row, latent in enumerate(sel):
        examples = []
        for v, f in zip(best_v[row].tolist(), best_i[row].tolist()):
            if not v > 0:
                continue
            seq, pos = divmod(int(f), L)
            lo, hi = max(0, pos - before), min(L, pos + after + 1)
            ids = tokens[seq, lo:hi].tolist()
            examples.append(LatentExample(
                latent=latent, activation=v, sequence=seq, position=pos, tokens=ids,
                str_tokens=_str_tokens(model, ids), focus=pos - lo, activations=ctx_acts[seq][lo:hi, row].tolist(),
            ))
        result[latent] = examples
    return result


def _final_norm_weight(model: HookedModel) -> Tensor | None:
    ln = getattr(model, "ln_final", None)
    for attr in ("gain", "weight", "w"):  # gain: offset + weight (RMSNorm with a zero-centred weight)
        w = getattr(ln, attr, None)
        if isinstance(w, Tensor):
            return w
    return None


@torch.no_grad()
def logit_effects(
    model: HookedModel, *, sae: SparseAutoencoder, latents: int | Sequence[int] | None = None, k: int = 10,
    fold_ln_weight: bool = True, hook: str | None = None,
) -> LogitEffects:
    """Direct logit effect of each latent's decoder row: W_dec[i] (⊙ ln_final weight) @ W_U -> [vocab].

    Valid for SAEs on residual-stream hooks (``hook_resid_*``, ``hook_embed``, mixer / attention / MLP outputs,
    ``ln_final.hook_normalized``); the final norm's weight is folded in (``fold_ln_weight``) and its 1/rms scale,
    which depends on the token, is left out. ``W_U`` is ``model.W_U`` [d_model, vocab] (HookedSSM: the
    unembedding's transpose; transformers: TransformerLens's ``W_U``).
    """
    name = resolve_hook(sae, hook)
    if not name.endswith(_RESIDUAL_SUFFIXES):
        raise ValueError(
            f"logit effects read a decoder row through the unembedding, which needs a residual-stream hook; "
            f"{name!r} is not one (use one of {', '.join('*' + s for s in _RESIDUAL_SUFFIXES)})"
        )
    W_U = model.W_U
    if W_U.shape[0] != sae.cfg.d_in:
        raise ValueError(f"the SAE's d_in={sae.cfg.d_in} differs from the model's d_model={W_U.shape[0]}")
    sel = list(range(sae.cfg.d_sae)) if latents is None else ([latents] if isinstance(latents, int) else list(latents))
    rows = sae.W_dec[torch.tensor(sel, device=sae.device)].to(W_U.device, W_U.dtype)  # [n, d_model]
    w = _final_norm_weight(model) if fold_ln_weight else None
    if w is not None:
        rows = rows * w.to(rows.dtype)
    effects = (rows @ W_U).float()  # [n, vocab]
    kk = min(k, effects.shape[-1])
    top = torch.topk(effects, kk, dim=-1)
    bottom = torch.topk(-effects, kk, dim=-1)
    return LogitEffects(
        latents=sel, effects=effects, top_ids=top.indices, top_values=top.values, bottom_ids=bottom.indices,
        bottom_values=-bottom.values, top_tokens=[_str_tokens(model, r.tolist()) for r in top.indices],
        bottom_tokens=[_str_tokens(model, r.tolist()) for r in bottom.indices],
    )


@torch.no_grad()
def latent_trace(model: HookedModel, tokens: Any, *, sae: SparseAutoencoder, latent: int,
                 hook: str | None = None) -> Tensor:
    """One latent's activation at each token of one sequence ``tokens`` ([L] or [1, L], any form
    :func:`interp.hooks.tokens.as_tokens` reads; a batch is refused: loop over its rows): [L] float32 on the CPU."""
    tokens = as_tokens(model, tokens, one_sequence=True)
    for batch in latent_activations(model, tokens, sae=sae, hook=hook):
        return batch.latents[0, :, int(latent)].detach().float().cpu()
    return torch.zeros(tokens.shape[1])


@dataclass
class LatentReport:
    """One latent on a corpus: ``density`` [d_sae] (:func:`activation_density` of every latent), ``examples``
    (:func:`top_activating_examples` of this latent), ``effects`` (:func:`logit_effects`, or None with
    ``effects_error`` when the SAE's hook cannot be read through the unembedding)."""

    latent: int
    density: Tensor
    examples: list[LatentExample]
    effects: LogitEffects | None
    effects_error: str | None = None


def latent_report(model: HookedModel, tokens: Any, *, sae: SparseAutoencoder, latent: int, k: int = 8,
                  hook: str | None = None) -> LatentReport:
    """What there is to see of one latent on the corpus ``tokens`` [n, L]: density, the ``k`` top examples and
    the min(10, vocab/2) most promoted and suppressed tokens (top and bottom stay apart)."""
    latent = int(latent)
    tokens = as_tokens(model, tokens)
    density = activation_density(model, tokens, sae=sae, hook=hook)
    examples = top_activating_examples(model, tokens, sae=sae, latents=[latent], k=k, hook=hook)[latent]
    try:
        k_eff = max(1, min(10, int(model.W_U.shape[-1]) // 2))
        return LatentReport(latent, density, examples,
                            logit_effects(model, sae=sae, latents=[latent], k=k_eff, hook=hook))
    except ValueError as e:
        return LatentReport(latent, density, examples, None, str(e))
