"""Direct logit attribution: each component's direct share of one prediction's logit (difference).

    from interp.lens import direct_logit_attribution, logit_attribution_figure
    dla = direct_logit_attribution(model, tokens, answer=7, wrong=3)     # per block; per_head=True: per head / group
    dla.values.sum(0) + dla.bias == dla.target                          # [b]: exact (the final norm's scale frozen)
    fig = logit_attribution_figure(dla)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.hooks import HookedModel
from interp.hooks.tokens import as_tokens

__all__ = ["LogitAttribution", "direct_logit_attribution", "logit_attribution_figure"]


@dataclass(frozen=True)
class LogitAttribution:
    """Direct logit attribution of one prediction (:func:`direct_logit_attribution`).

    Attributes:
        values: float [n_components, b], each component's direct contribution to ``target`` (its residual-stream
            output through the final norm, with the norm's scale taken from the actual run, times the unembedding
            direction of answer minus wrong).
        labels: the components' names ("embed", then per block "{l}_mixer_out" on an SSM, "{l}_attn_out" /
            "{l}_mlp_out" on a transformer; per head: "L{l}H{h}" and the like, see
            ``ActivationCache.get_full_resid_decomposition``).
        bias: float [b], what no component carries: the unembedding bias and the final LayerNorm's bias along the
            direction (0 on the SSMs, whose RMSNorm has no bias and whose unembedding has none).
        target: float [b], logit[answer] - logit[wrong] (or logit[answer] without ``wrong``) at ``position``;
            ``values.sum(0) + bias == target`` up to float rounding. On a model whose logits are soft-capped
            (``cfg.logits_soft_cap``: RecurrentGemma, xLSTM) the logits before the cap (``unembed.hook_pre_cap``),
            the part that is linear in the residual stream.
    """

    values: torch.Tensor
    labels: list[str]
    bias: torch.Tensor
    target: torch.Tensor
    position: int


def _ids(ids: Any, b: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        return t.expand(b)
    if t.numel() != b:
        raise ValueError(f"{name} must be one token id or one per prompt ({b}), got {t.numel()}")
    return t


@torch.no_grad()
def direct_logit_attribution(model: HookedModel, tokens: Any, *, answer: Any, wrong: Any = None, position: int = -1,
                             per_head: bool = False) -> LogitAttribution:
    """Each component's direct share of the logit (difference) at ``position``: the residual stream there is the sum
    of the embedding and every block's output (per head / channel group with ``per_head``), and the final norm is
    linear once its scale is frozen at the run's value, so the logit splits exactly into one term per component plus
    the biases (TransformerLens's ``decompose_resid`` / ``get_full_resid_decomposition`` and ``logit_attrs``, which
    work on the SSMs too).

    tokens: [b, L]; answer, wrong: one token id or one per prompt (``wrong`` None: the answer's logit alone).
    """
    tokens = as_tokens(model, tokens)
    b = tokens.shape[0]
    answer = _ids(answer, b, "answer").to(tokens.device)
    wrong = None if wrong is None else _ids(wrong, b, "wrong").to(tokens.device)
    logits, cache = model.run_with_cache(tokens)
    if per_head:
        stack, labels = cache.get_full_resid_decomposition(pos_slice=position, expand_neurons=False,
                                                           return_labels=True)
    else:
        stack, labels = cache.decompose_resid(pos_slice=position, return_labels=True)
    values = cache.logit_attrs(stack, answer, incorrect_tokens=wrong, pos_slice=position)  # [n, b]
    rows = torch.arange(b, device=logits.device)
    if "unembed.hook_pre_cap" in cache.cache_dict:  # a logits soft cap (RecurrentGemma, xLSTM): the linear logits
        logits = cache["unembed.hook_pre_cap"]
    target = logits[rows, position, answer] - (0 if wrong is None else logits[rows, position, wrong])
    direction = model.W_U[:, answer] - (0 if wrong is None else model.W_U[:, wrong])  # [d_model, b]
    bias = model.b_U[answer] - (0 if wrong is None else model.b_U[wrong])
    # a final LayerNorm's bias (TransformerLens's ``b``, RWKV's ``bias``); the RMSNorms have none
    ln_bias = getattr(model.ln_final, "b", getattr(model.ln_final, "bias", None))
    if ln_bias is not None:
        bias = bias + ln_bias @ direction
    return LogitAttribution(values.float().cpu(), list(labels), bias.float().cpu(), target.float().cpu(),
                            int(position))


def logit_attribution_figure(dla: LogitAttribution, title: str | None = None) -> Any:
    """A bar per component: its contribution averaged over the prompts (plotly)."""
    import plotly.graph_objects as go

    mean = dla.values.mean(1).tolist()
    fig = go.Figure(go.Bar(x=dla.labels, y=mean, marker_color=["#c0392b" if v < 0 else "#2471a3" for v in mean]))
    fig.update_layout(title=title or f"direct logit attribution at position {dla.position} "
                      f"(bias {float(dla.bias.mean()):.3g}, total {float(dla.target.mean()):.3g})",
                      xaxis_title="component", yaxis_title="contribution to the logit (difference)",
                      template="plotly_white", height=360)
    return fig
