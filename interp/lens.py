"""Logit lens and direct logit attribution: each layer's residual stream read through the final norm and the
unembedding, and each component's share of one prediction's logit.

    from interp.lens import logit_lens, logit_lens_figure
    lens = logit_lens(model, tokens)                           # every position of the prompt
    lens = logit_lens(model, tokens, start=300, length=32)     # a window of a long prompt
    lens.top_id, lens.top_prob      # [n_layers, P]: each layer's top-1 token and its probability
    lens.true_prob                  # [n_layers, P]: probability of the token that comes next in the prompt
    fig = logit_lens_figure(lens, model.to_str_tokens(tokens[0]), vocab, value="true")
    rows = lens.table(position=-1, vocab=vocab)               # one row per layer, in the figure's order

    dla = direct_logit_attribution(model, tokens, answer=7, wrong=3)     # per block; per_head=True: per head / group
    dla.values.sum(0) + dla.bias == dla.target                          # [b]: exact (the final norm's scale frozen)

Layer order (``LAYER_ORDER``): row k of every array is the read-out of ``blocks.{k}.hook_resid_post``
(embedding side first). Figures draw the embedding side at the bottom and the final layer at the top (as
:func:`interp.demo.logit_lens_figure` does), and tables list the layers in that same visual order, final
layer in the first row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from interp.hooks import HookedModel
from interp.hooks.tokens import as_tokens

__all__ = ["LogitLens", "logit_lens", "logit_lens_figure", "lens_window", "vocabulary", "LAYER_ORDER", "VALUES",
           "WINDOW", "MAX_WINDOW", "clamp_window", "LogitAttribution", "direct_logit_attribution",
           "logit_attribution_figure"]

LAYER_ORDER = "bottom-to-top"  # embedding side at the bottom of a figure, final layer at the top
VALUES = {"top": "top-1 probability", "true": "p(true next token)"}  # what a figure's colour can show


@dataclass(frozen=True)
class LogitLens:
    """The logit lens of one prompt over a window of positions.

    Attributes:
        hooks: the read-out hooks, one per row (``blocks.{k}.hook_resid_post``), embedding side first.
        positions: int [P], the absolute prompt positions of the columns.
        top_id: int [n_layers, P], each layer's top-1 token.
        top_prob: float [n_layers, P], its probability.
        next_id: int [P], the prompt's token at position p + 1 (-1 at the prompt's last position).
        true_prob: float [n_layers, P], each layer's probability of ``next_id`` (nan where there is none).
        n_tokens: the length L of the whole prompt.
    """

    hooks: tuple[str, ...]
    positions: np.ndarray
    top_id: np.ndarray
    top_prob: np.ndarray
    next_id: np.ndarray
    true_prob: np.ndarray
    n_tokens: int

    @property
    def layer_labels(self) -> list[str]:
        """Row labels ``"layer k"``, in row order (embedding side first)."""
        return [f"layer {k}" for k in range(len(self.hooks))]

    def values(self, value: str = "top") -> np.ndarray:
        """[n_layers, P] of ``value``: "top" (top-1 probability) or "true" (p of the true next token)."""
        if value not in VALUES:
            raise ValueError(f"value must be one of {list(VALUES)}, got {value!r}")
        return self.top_prob if value == "top" else self.true_prob

    def table(self, position: int, vocab: Sequence[str]) -> list[dict[str, Any]]:
        """One row per layer at absolute ``position`` (negative: from the prompt's end), in the figures'
        visual order (final layer first): layer, hook, top token, p(top), true next token, p(true next)."""
        p = int(position) % self.n_tokens
        hits = np.flatnonzero(self.positions == p)
        if not hits.size:
            raise ValueError(f"position {p} is outside the window {self.positions[0]}..{self.positions[-1]}")
        c = int(hits[0])
        nxt = int(self.next_id[c])
        rows = [{"layer": self.layer_labels[k], "hook": self.hooks[k], "top token": vocab[int(self.top_id[k, c])],
                 "p(top)": float(self.top_prob[k, c]), "true next token": vocab[nxt] if nxt >= 0 else None,
                 "p(true next)": float(self.true_prob[k, c])} for k in range(len(self.hooks))]
        return rows[::-1]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays (for an .npz export), rows in row order (embedding side first)."""
        return {"positions": self.positions, "top_id": self.top_id, "top_prob": self.top_prob,
                "next_id": self.next_id, "true_prob": self.true_prob, "hooks": np.array(self.hooks)}


def lens_window(n_tokens: int, start: int = 0, length: int | None = None) -> tuple[int, int]:
    """(start, stop) of a window of ``length`` positions from ``start`` (None: to the end); ValueError if it
    does not lie in a prompt of ``n_tokens``."""
    if not 0 <= int(start) < n_tokens:
        raise ValueError(f"window start {start} is outside the prompt's positions 0..{n_tokens - 1}")
    stop = n_tokens if length is None else int(start) + int(length)
    if length is not None and (int(length) < 1 or stop > n_tokens):
        raise ValueError(f"a window of {length} positions from {start} does not fit a {n_tokens}-token prompt")
    return int(start), stop


WINDOW = 64  # prompts longer than this are read through a window of positions; its default length
MAX_WINDOW = 256  # the most positions one logit-lens figure shows


def clamp_window(n_tokens: int, start: int = 0, length: int = WINDOW) -> tuple[int, int]:
    """(start, length) of the window to show of an ``n_tokens`` prompt: the whole prompt up to :data:`WINDOW`
    tokens, else ``start`` and ``length`` brought inside the prompt (at most :data:`MAX_WINDOW` positions)."""
    if n_tokens <= WINDOW:
        return 0, n_tokens
    start = min(max(int(start), 0), n_tokens - 1)
    return start, min(max(int(length), 1), MAX_WINDOW, n_tokens - start)


@torch.no_grad()
def logit_lens(model: HookedModel, tokens: Any, *, start: int = 0, length: int | None = None) -> LogitLens:
    """The logit lens of one prompt ``tokens`` (a text, ids [L] or [1, L]) over positions
    ``start .. start + length - 1``.

    The whole prompt runs (a position's residual stream depends on its prefix); only the window is read out,
    one layer at a time, so memory stays at [P, vocab]. Works for every hookable model (SSMs and
    transformers): ``model.unembed(model.ln_final(resid))``. A batch [b, L] with b > 1 raises ValueError:
    take one lens per row."""
    tokens = as_tokens(model, tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"logit_lens() reads one prompt, tokens [L] or [1, L]; got tokens of shape "
                         f"{tuple(tokens.shape)}: take one lens per row")
    L = tokens.shape[1]
    lo, hi = lens_window(L, start, length)
    hooks = tuple(f"blocks.{k}.hook_resid_post" for k in range(model.cfg.n_layers))
    _, cache = model.run_with_cache(tokens, names_filter=list(hooks))
    nxt = torch.full((hi - lo,), -1, dtype=torch.long)
    nxt[: max(0, min(hi, L - 1) - lo)] = tokens[0, lo + 1:hi + 1].cpu()
    top_id, top_prob, true_prob = [], [], []
    for h in hooks:
        resid = cache[h][:, lo:hi]  # [1, P, d_model]
        probs = model.unembed(model.ln_final(resid))[0].float().softmax(-1).cpu()  # [P, vocab]
        top = probs.max(-1)
        top_id.append(top.indices)
        top_prob.append(top.values)
        true = probs.gather(-1, nxt.clamp_min(0)[:, None])[:, 0]
        true_prob.append(torch.where(nxt >= 0, true, torch.full_like(true, float("nan"))))
    return LogitLens(hooks=hooks, positions=np.arange(lo, hi), top_id=torch.stack(top_id).numpy(),
                     top_prob=torch.stack(top_prob).numpy(), next_id=nxt.numpy(),
                     true_prob=torch.stack(true_prob).numpy(), n_tokens=L)


def vocabulary(model: HookedModel) -> list[str]:
    """Every token id's string: [d_vocab] (cell text of a lens figure, labels of next-token distributions)."""
    n = int(model.cfg.d_vocab)
    return [str(t) for t in model.to_str_tokens(torch.arange(n))]


def logit_lens_figure(lens: LogitLens, str_tokens: Sequence[str], vocab: Sequence[str], value: str = "top",
                      title: str | None = None) -> Any:
    """Heatmap of a logit lens: layers (embedding side at the bottom) × window positions, coloured by ``value``
    ("top": top-1 probability, "true": probability of the true next token), each cell showing its layer's
    top-1 token; hover adds both probabilities and the true next token.

    ``str_tokens``: the whole prompt's L tokens (x labels ``"{position}·{token}"``); ``vocab``: every token id's
    string (the cell text)."""
    import plotly.graph_objects as go

    from interp.attention.figures import token_labels

    if len(str_tokens) != lens.n_tokens:
        raise ValueError(f"{len(str_tokens)} tokens for a lens of a {lens.n_tokens}-token prompt")
    x = [token_labels(str_tokens)[int(p)] for p in lens.positions]
    text = [[str(vocab[int(t)]) for t in row] for row in lens.top_id]
    nxt = ["(end of prompt)" if int(t) < 0 else repr(str(vocab[int(t)])) for t in lens.next_id]
    hover = [[f"top-1 {text[k][c]!r}: p {lens.top_prob[k, c]:.3f}<br>true next {nxt[c]}: p {lens.true_prob[k, c]:.3f}"
              for c in range(len(lens.positions))] for k in range(len(lens.hooks))]
    fig = go.Figure(go.Heatmap(
        z=lens.values(value), x=x, y=lens.layer_labels, text=text, texttemplate="%{text}", textfont={"size": 10},
        hovertext=hover, hovertemplate="%{y}, position %{x}<br>%{hovertext}<extra></extra>", zmin=0.0, zmax=1.0,
        colorscale="Viridis", hoverongaps=False, colorbar={"title": {"text": VALUES[value], "side": "right"}},
    ))
    first, last = int(lens.positions[0]), int(lens.positions[-1])
    window = "" if (first, last) == (0, lens.n_tokens - 1) else f", positions {first}–{last} of {lens.n_tokens}"
    fig.update_layout(
        title=title or f"Logit lens: {VALUES[value]} of each layer's read-out{window}",
        height=160 + 36 * len(lens.hooks), margin={"l": 70, "r": 20, "t": 50, "b": 80},
        xaxis={"title": {"text": "position·token"}, "type": "category", "tickangle": -60},
        yaxis={"title": {"text": "residual stream after block"}, "type": "category", "autorange": True},
    )
    return fig


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
            ``values.sum(0) + bias == target`` up to float rounding.
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
    target = logits[rows, position, answer] - (0 if wrong is None else logits[rows, position, wrong])
    direction = model.W_U[:, answer] - (0 if wrong is None else model.W_U[:, wrong])  # [d_model, b]
    bias = model.b_U[answer] - (0 if wrong is None else model.b_U[wrong])
    ln_bias = getattr(model.ln_final, "b", None)  # a transformer's final LayerNorm; the SSMs' RMSNorm has none
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
