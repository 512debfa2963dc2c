"""Steering by codes: force / disable / append codes of a codebook bottleneck, as an ordinary
:class:`interp.steering.Intervention`.

    iv = code_intervention(model, hook="blocks.2.ssm.hook_out", code=17, mode="force", positions="last")
    model.generate(prompt, max_new_tokens=2, fwd_hooks=iv.hooks(model))      # recurrent decoding included
    forced_continuations(model, prompt, hook="blocks.2.ssm.hook_out", code=17)   # greedy ids without / with

:func:`code_intervention` is the one way to build a codebook steering intervention; the source it writes,
:class:`CodebookCodes`, is registered with :func:`interp.steering.register_source`, so a saved intervention
loads with :func:`interp.steering.load` (which imports this module when a saved source names it). The TokFSM
steering-by-codes test built on them lives with the task: :mod:`interp.tasks.tokfsm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from interp.hooks import HookedModel
from interp.hooks.positions import PositionsLike
from interp.steering import Direction, Intervention, Source, register_source

from .insert import CHILD, attached
from .layer import CodebookLayer

__all__ = ["CodebookCodes", "code_intervention", "forced_continuations", "MODES"]

#: what a code intervention does -> (the codebook's hook it edits, the intervention's operator)
MODES: dict[str, tuple[str, str]] = {
    "force": ("hook_scores", "replace"),
    "disable": ("hook_scores", "ablate"),
    "append": ("hook_out", "add"),
}


@register_source
class CodebookCodes(Source):
    """Force or disable codes of a codebook bottleneck, edited where the codes are chosen: at the codebook's score
    hook ``<hook>.codebook.hook_scores`` ([..., n_codes] ranking scores, or [..., G, n_codes] for per-head
    codebooks, seen flattened by the intervention).

    * ``replace`` (force): the codes' scores become +inf, so they take the top slots and push out the weakest
      selected codes (k = 1: the output *is* the forced code);
    * ``ablate`` (disable): the codes' scores become -inf, so the next best codes are taken instead.

    The edit is discrete: any ``scale`` != 0 applies it in full. Appending a code (keeping the k selected ones)
    is an ``add`` of the code vector / k at ``<hook>.codebook.hook_out``; :func:`code_intervention` builds
    either.

    Attributes: ``codes`` (ids), ``n_codes`` (codebook size), ``group`` and ``n_groups`` (per-head codebooks).
    """

    kind: ClassVar[str] = "codebook_codes"
    operators: ClassVar[tuple[str, ...]] = ("replace", "ablate")

    def __init__(self, codes: int | list[int], n_codes: int, group: int = 0, n_groups: int = 1, label: str = ""):
        self.codes = [codes] if isinstance(codes, int) else [int(c) for c in codes]
        if not self.codes or not all(0 <= c < n_codes for c in self.codes):
            raise ValueError(f"codes must be ids in 0..{n_codes - 1}, got {self.codes}")
        if not 0 <= group < n_groups:
            raise ValueError(f"group must be in 0..{n_groups - 1}, got {group}")
        self.n_codes, self.group, self.n_groups, self.label = int(n_codes), int(group), int(n_groups), label

    def __repr__(self) -> str:
        return f"CodebookCodes(codes={self.codes}, n_codes={self.n_codes}, group={self.group})"

    @property
    def d(self) -> int:
        return self.n_codes * self.n_groups

    def edit(self, x: Tensor, operator: str, scale: float, value: Any) -> Tensor:
        self._check_width(x)
        if operator not in self.operators:
            raise ValueError(f"a codebook source supports {self.operators}, not {operator!r}")
        out = x.clone()
        cols = torch.as_tensor(self.codes, device=x.device) + self.group * self.n_codes
        out[..., cols] = math.inf if operator == "replace" else -math.inf
        return out

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {"codes": self.codes, "n_codes": self.n_codes, "group": self.group, "n_groups": self.n_groups,
                    "label": self.label}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any], folder: Path | None = None,
                   **runtime: Any) -> "CodebookCodes":
        return cls(config["codes"], config["n_codes"], config.get("group", 0), config.get("n_groups", 1),
                   config.get("label", ""))


def _codebook_at(model: HookedModel, hook: str) -> CodebookLayer:
    """The codebook attached at ``hook``; ValueError naming the hooks that have one."""
    books = attached(model)
    if hook not in books:
        where = f"its codebooks are at {sorted(books)}" if books else \
            "it has none attached (interp.codebook.attach or load_codebook_model first)"
        raise ValueError(f"hook={hook!r}: this model has no codebook there; {where}.")
    return books[hook]


def _codes(code: int | Sequence[int], n_codes: int, hook: str) -> list[int]:
    codes = [int(code)] if isinstance(code, (int, np.integer)) else [int(c) for c in code]
    bad = [c for c in codes if not 0 <= c < n_codes]
    if not codes or bad:
        raise ValueError(f"Code {bad[0] if bad else code!r} is out of range: the codebook at {hook} has codes "
                         f"0..{n_codes - 1}.")
    return codes


def code_intervention(model: HookedModel, *, hook: str, code: int | Sequence[int], mode: str = "force",
                      positions: PositionsLike = "all", group: int = 0) -> Intervention:
    """An intervention on the codebook attached at ``hook``: "force" the code(s) into the top slots (operator
    ``replace`` of :class:`CodebookCodes` at ``<hook>.codebook.hook_scores``), "disable" them (``ablate`` there),
    or "append" them to the k selected codes (their vectors' sum / k added at ``<hook>.codebook.hook_out``, a
    :class:`~interp.steering.Direction`; one codebook only, not per-head ones). ``group``: the head of a per-head
    codebook. ValueError for an unknown mode, a hook without a codebook or a code out of range."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    layer = _codebook_at(model, hook)
    G, n = layer.codes.shape[:2]
    codes = _codes(code, n, hook)
    if mode == "append":
        if G != 1:
            raise ValueError("mode='append' on a per-head codebook: add the code vector at that head's slice "
                             "with an interp.steering.Direction instead")
        source: Source = Direction(layer.codes[group, codes].detach().sum(0) / layer.cfg.k, "codebook_code",
                                   {"codes": codes, "mode": mode})
    else:
        source = CodebookCodes(codes, n, group, G, label=mode)
    child_hook, operator = MODES[mode]
    return Intervention(source, hook=f"{hook}.{CHILD}.{child_hook}", operator=operator, positions=positions,
                        name=f"{mode} {codes} at {hook}")


def forced_continuations(model: HookedModel, tokens: Any, *, hook: str, code: int, max_new_tokens: int = 8,
                         group: int = 0) -> tuple[list[int], list[int]]:
    """Greedy continuations of one prompt ``tokens`` ([L] or [1, L]) without and with ``code`` forced at the
    codebook attached at ``hook``, at the last position (:func:`code_intervention`, mode "force", positions
    "last": the prompt's last token and every generated one): (baseline ids, forced ids), each
    [max_new_tokens]. ValueError for a hook without a codebook, a code out of range or a batch of prompts."""
    from interp.hooks.tokens import as_tokens

    layer = _codebook_at(model, hook)
    _codes(code, layer.cfg.n_codes, hook)
    tokens = as_tokens(model, tokens, one_sequence=True)
    iv = code_intervention(model, hook=hook, code=int(code), mode="force", positions="last", group=int(group))
    kw = dict(max_new_tokens=int(max_new_tokens), do_sample=False, stop_at_eos=False, return_type="tokens")
    with torch.no_grad():
        g0 = model.generate(tokens, **kw)[0, tokens.shape[1]:]
        g1 = model.generate(tokens, fwd_hooks=iv.hooks(model), **kw)[0, tokens.shape[1]:]
    return g0.tolist(), g1.tolist()
