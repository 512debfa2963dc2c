"""Logit lens: each layer's residual stream read through the final norm and the unembedding.

    from interp.lens import logit_lens, logit_lens_figure
    lens = logit_lens(model, tokens)                           # every position of the prompt
    lens = logit_lens(model, tokens, start=300, length=32)     # a window of a long prompt
    lens.top_id, lens.top_prob      # [n_layers, P]: each layer's top-1 token and its probability
    lens.true_prob                  # [n_layers, P]: probability of the token that comes next in the prompt
    fig = logit_lens_figure(lens, model.to_str_tokens(tokens[0]), vocab, value="true")
    rows = lens.table(position=-1, vocab=vocab)               # one row per layer, in the figure's order

The read-out itself, ``model.unembed(model.ln_final(resid))``, is :func:`resid_logits`, the one place it is
written (the tuned lens, :mod:`interp.lens.tuned`, reads its translated residuals through it too).

Layer order (``LAYER_ORDER``): row k of every array is the read-out of ``blocks.{k}.hook_resid_post``
(embedding side first). Figures draw the embedding side at the bottom and the final layer at the top (as
:func:`interp.demo.logit_lens_figure` does), and tables list the layers in that same visual order, final
layer in the first row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from interp.hooks import HookedModel
from interp.hooks.positions import check_index
from interp.hooks.tokens import as_tokens

__all__ = ["LogitLens", "logit_lens", "logit_lens_figure", "lens_window", "vocabulary", "LAYER_ORDER", "VALUES",
           "WINDOW", "MAX_WINDOW", "clamp_window", "resid_logits"]

LAYER_ORDER = "bottom-to-top"  # embedding side at the bottom of a figure, final layer at the top
VALUES = {"top": "top-1 probability", "true": "p(true next token)"}  # what a figure's colour can show


@dataclass(frozen=True)
class LogitLens:
    """The logit lens (or a tuned lens, :func:`interp.lens.tuned.tuned_lens`) of one prompt over a window of positions.

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
        p = check_index(position, self.n_tokens, "position", of=f"a prompt of {self.n_tokens} tokens")
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


def resid_logits(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """The logits the model reads from a residual stream ``resid`` [..., d_model]: its final norm, then its
    unembedding, as its forward applies them (``model.unembed(model.ln_final(resid))``; SSMs and transformers
    alike) -> [..., d_vocab]. Differentiable in ``resid``."""
    return model.unembed(model.ln_final(resid))


def _one_prompt(model: HookedModel, tokens: Any, fn: str) -> torch.Tensor:
    """``tokens`` as [1, L]; ValueError naming ``fn`` for a batch."""
    tokens = as_tokens(model, tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"{fn}() reads one prompt, tokens [L] or [1, L]; got tokens of shape "
                         f"{tuple(tokens.shape)}: take one lens per row")
    return tokens


@torch.no_grad()
def _read_lens(model: HookedModel, tokens: torch.Tensor, start: int, length: int | None,
               translate: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> LogitLens:
    """The lens of one prompt [1, L]: row k reads ``blocks.{k}.hook_resid_post`` through ``translate(k, resid)``
    (None: as it is, the logit lens) and :func:`resid_logits`."""
    L = tokens.shape[1]
    lo, hi = lens_window(L, start, length)
    hooks = tuple(f"blocks.{k}.hook_resid_post" for k in range(model.cfg.n_layers))
    _, cache = model.run_with_cache(tokens, names_filter=list(hooks))
    nxt = torch.full((hi - lo,), -1, dtype=torch.long)
    nxt[: max(0, min(hi, L - 1) - lo)] = tokens[0, lo + 1:hi + 1].cpu()
    top_id, top_prob, true_prob = [], [], []
    for k, h in enumerate(hooks):
        resid = cache[h][:, lo:hi]  # [1, P, d_model]
        if translate is not None:
            resid = translate(k, resid)
        probs = resid_logits(model, resid)[0].float().softmax(-1).cpu()  # [P, vocab]
        top = probs.max(-1)
        top_id.append(top.indices)
        top_prob.append(top.values)
        true = probs.gather(-1, nxt.clamp_min(0)[:, None])[:, 0]
        true_prob.append(torch.where(nxt >= 0, true, torch.full_like(true, float("nan"))))
    return LogitLens(hooks=hooks, positions=np.arange(lo, hi), top_id=torch.stack(top_id).numpy(),
                     top_prob=torch.stack(top_prob).numpy(), next_id=nxt.numpy(),
                     true_prob=torch.stack(true_prob).numpy(), n_tokens=L)


@torch.no_grad()
def logit_lens(model: HookedModel, tokens: Any, *, start: int = 0, length: int | None = None) -> LogitLens:
    """The logit lens of one prompt ``tokens`` (a text, ids [L] or [1, L]) over positions
    ``start .. start + length - 1``.

    The whole prompt runs (a position's residual stream depends on its prefix); only the window is read out,
    one layer at a time, so memory stays at [P, vocab]. Works for every hookable model (SSMs and
    transformers): :func:`resid_logits`, ``model.unembed(model.ln_final(resid))``. A batch [b, L] with b > 1
    raises ValueError: take one lens per row."""
    return _read_lens(model, _one_prompt(model, tokens, "logit_lens"), start, length)


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


