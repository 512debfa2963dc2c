"""Patching on prompt pairs, as the app's Patching page shows it: the pairs (the built-in TokFSM task, or two typed
prompts, checked), the metric and the sweep by name, and what is drawn (heat map, caption, per-component view,
direct logit attribution). Every number comes from :mod:`interp.patching` and :mod:`interp.lens`.

    pairs = patching_pairs(model, task="tokfsm", n=8)                       # interp.data.tokfsm_patching_pairs
    pairs = patching_pairs(model, task="typed", clean="<bos>0841", corrupted="<bos>0847", answer="7", wrong="3")
    view = patching_view(model, pairs, hook="state", metric="logit_diff", method="activation", components=True)
    view.sweep              # the PatchSweep of patch_sweep / attribution_sweep with these arguments
    view.figure             # patch_figure(view.sweep, str_tokens=pairs.str_tokens)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.data import tokfsm_patching_pairs
from interp.hooks.tokens import prompt_tokens, str_tokens
from interp.lens import LogitAttribution, direct_logit_attribution, logit_attribution_figure
from interp.patching import (AnswerProb, ComponentSweep, KLToClean, LogitDiff, PatchMetric, PatchSweep,
                             attribution_sweep, component_figure, component_sweep, patch_figure, patch_sweep)

__all__ = ["TASKS", "METRICS", "METHODS", "DIRECTIONS", "PatchingPairs", "PatchingView", "patching_pairs",
           "patch_metric", "patching_view"]

TASKS = {"tokfsm": "the built-in TokFSM task", "typed": "two typed prompts"}
METRICS = {"logit_diff": "logit difference (answer − wrong)", "answer_prob": "probability of the answer",
           "kl": "KL(clean ‖ run), next token"}
METHODS = {"activation": "activation patching", "attribution": "attribution patching (gradient)",
           "ig": "attribution patching, integrated gradients"}
DIRECTIONS = {"denoise": "denoise: clean into the corrupted run", "noise": "noise: corrupted into the clean run"}


@dataclass(frozen=True)
class PatchingPairs:
    """Prompt pairs of one token length.

    Attributes:
        clean, corrupted: int [b, L], pair i is (clean[i], corrupted[i]).
        answer, wrong: int [b] token ids (the clean and the corrupted prompts' next token), or None where not given.
        str_tokens: the L tokens of the first clean prompt (the heat map's ticks); source: where the pairs come from.
    """

    clean: Tensor
    corrupted: Tensor
    answer: Tensor | None
    wrong: Tensor | None
    str_tokens: list[str]
    source: str


def _single_token(model: Any, text: str, what: str) -> Tensor | None:
    if not text:
        return None
    try:
        return torch.tensor([int(model.to_single_token(text))])
    except Exception as e:  # noqa: BLE001 - the tokenizers fail differently (ValueError, AssertionError)
        ids = model.to_tokens(text, prepend_bos=False)[0].tolist() if getattr(model, "tokenizer", None) else []
        raise ValueError(f"The {what} {text!r} is not a single token of this model (it tokenises to {ids}); "
                         "type exactly one token.") from e


def patching_pairs(model: Any, *, task: str, n: int = 8, seed: int = 0, clean: str = "", corrupted: str = "",
                   answer: str = "", wrong: str = "", max_tokens: int = 2048) -> PatchingPairs:
    """The prompt pairs of ``task``: "tokfsm", ``n`` pairs of :func:`interp.data.tokfsm_patching_pairs` (the answer
    known; for the embedded TokFSM models), or "typed", the prompts ``clean`` / ``corrupted`` (one pair, tokenised
    as the app tokenises a prompt: :func:`interp.hooks.tokens.prompt_tokens`) with the single tokens ``answer`` /
    ``wrong`` (either may be empty). ValueError, saying what to change, for prompts of different token lengths or
    an answer that is not one token."""
    if task == "tokfsm":
        c, k, a, w = tokfsm_patching_pairs(int(n), seed=seed)
        return PatchingPairs(c, k, a, w, str_tokens(model, c[0]), f"{int(n)} pairs of {TASKS[task]}")
    if task != "typed":
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    c, k = (prompt_tokens(model, text, max_tokens) for text in (clean, corrupted))
    if c.shape != k.shape:
        raise ValueError(f"The clean prompt is {c.shape[1]} tokens long and the corrupted prompt {k.shape[1]}: "
                         "patching matches positions, so the two prompts need the same token length.\n"
                         f"clean: {str_tokens(model, c)}\ncorrupted: {str_tokens(model, k)}")
    a, w = _single_token(model, answer, "answer"), _single_token(model, wrong, "wrong answer")
    return PatchingPairs(c, k, a, w, str_tokens(model, c), TASKS[task])


def patch_metric(name: str, pairs: PatchingPairs) -> PatchMetric:
    """The metric ``name`` (a key of :data:`METRICS`) on ``pairs``' answers; ValueError when it needs an answer
    the pairs lack."""
    if name == "kl":
        return KLToClean()
    if name not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {name!r}")
    if pairs.answer is None or (name == "logit_diff" and pairs.wrong is None):
        raise ValueError(f"The {METRICS[name]} needs " + ("an answer and a wrong answer token" if name == "logit_diff"
                         else "an answer token") + f"; type them, or choose the metric {METRICS['kl']!r}.")
    return LogitDiff(pairs.answer, pairs.wrong) if name == "logit_diff" else AnswerProb(pairs.answer)


@dataclass(frozen=True)
class PatchingView:
    """What the Patching page draws (:func:`patching_view`).

    Attributes:
        sweep: the layer × position :class:`~interp.patching.PatchSweep`; figure: its heat map (``patch_figure``,
            token ticks); caption: its metric on the unpatched runs, the method and its cost, in words.
        components, component_figure: the per-component activation-patching sweep and its heat map, or None.
        dla, dla_figure: direct logit attribution of the clean prompts (per head / channel group; per sublayer
            output on a hybrid) and its bars, or None.
    """

    sweep: PatchSweep
    figure: Any
    caption: str
    components: ComponentSweep | None = None
    component_figure: Any = None
    dla: LogitAttribution | None = None
    dla_figure: Any = None


def patching_view(model: Any, pairs: PatchingPairs, *, hook: str, metric: str, direction: str = "denoise",
                  method: str = "activation", steps: int = 8, components: bool = False,
                  dla: bool = False) -> PatchingView:
    """The sweep of ``method`` ("activation": :func:`~interp.patching.patch_sweep`; "attribution" and "ig" with
    ``steps``: :func:`~interp.patching.attribution_sweep`) of ``hook`` over every layer and position of ``pairs``,
    scored by ``metric`` (:func:`patch_metric`); with ``components``, :func:`~interp.patching.component_sweep`
    (activation patching of each head / channel group at every position); with ``dla``,
    :func:`~interp.lens.direct_logit_attribution` of the clean prompts."""
    m = patch_metric(metric, pairs)
    kw = dict(corrupted=pairs.corrupted, metric=m, hook=hook, direction=direction)
    if method == "activation":
        sweep = patch_sweep(model, pairs.clean, **kw)
    elif method in METHODS:
        sweep = attribution_sweep(model, pairs.clean, steps=1 if method == "attribution" else int(steps), **kw)
    else:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    how = METHODS[method] + (f", {int(steps)} steps" if method == "ig" else "")
    caption = (f"{sweep.metric} on {pairs.source}: clean run {sweep.clean:.4g}, corrupted run {sweep.corrupted:.4g} "
               f"(the cells are normalised: clean 1, corrupted 0). {how}, {DIRECTIONS[direction]}; "
               f"{sweep.n_forwards} forward passes.")
    out = dict(sweep=sweep, figure=patch_figure(sweep, str_tokens=pairs.str_tokens), caption=caption)
    if components:
        comp = component_sweep(model, pairs.clean, corrupted=pairs.corrupted, metric=m, direction=direction)
        out.update(components=comp, component_figure=component_figure(comp))
    if dla:
        if pairs.answer is None:
            raise ValueError("Direct logit attribution needs an answer token (and a wrong one for a difference).")
        # per sublayer on a hybrid (cfg.layer_types) and on RWKV (a channel-wise mixer without heads)
        per_head = not isinstance(getattr(model.cfg, "layer_types", None), list) and \
            getattr(model.cfg, "family", None) != "rwkv"
        d = direct_logit_attribution(model, pairs.clean, answer=pairs.answer, wrong=pairs.wrong, per_head=per_head)
        out.update(dla=d, dla_figure=logit_attribution_figure(d))
    return PatchingView(**out)
