"""Code interventions: force / append / disable a code during generation.

    iv = code_intervention(model, "blocks.2.ssm.hook_out", code=17, mode="force", positions="last")
    model.generate(prompt, max_new_tokens=2, fwd_hooks=iv.hooks(model))      # recurrent decoding included

Interventions are :class:`interp.steering.Intervention` objects (save, load, compose like any other). The TokFSM
steering-by-codes test built on them lives with the task: :mod:`interp.tasks.tokfsm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from interp.steering import Intervention, codebook_code
from interp.hooks.positions import PositionsLike

from .insert import CHILD, attached

__all__ = ["code_intervention", "forced_continuations"]

_MODE_HOOK = {"force": "hook_scores", "disable": "hook_scores", "append": "hook_out"}
_MODE_OPERATOR = {"force": "replace", "disable": "ablate", "append": "add"}


def code_intervention(model: Any, site: str, code: int | Sequence[int], mode: str = "force",
                      positions: PositionsLike = "all", group: int = 0) -> Intervention:
    """An intervention on the codebook at ``site``: "force" the code(s) into the top slots, "disable" them,
    or "append" them to the k selected codes (their vectors / k added to the output)."""
    if mode not in _MODE_HOOK:
        raise ValueError(f"mode must be one of {tuple(_MODE_HOOK)}, got {mode!r}")
    books = attached(model)
    if site not in books:
        raise KeyError(f"no codebook at {site!r}; codebooks are at {sorted(books)}")
    codes = [int(code)] if isinstance(code, (int, np.integer)) else [int(c) for c in code]
    source = codebook_code(books[site], codes, mode, group)
    return Intervention(source, hook=f"{site}.{CHILD}.{_MODE_HOOK[mode]}", operator=_MODE_OPERATOR[mode],
                        positions=positions, name=f"{mode} {codes} at {site}")


def forced_continuations(model: Any, tokens: Any, site: str, code: int, max_new_tokens: int = 8,
                         group: int = 0) -> tuple[list[int], list[int]]:
    """Greedy continuations of one prompt ``tokens`` ([L] or [1, L]) without and with ``code`` forced at ``site``
    at the last position (:func:`code_intervention`, mode "force", positions "last": the prompt's last token and
    every generated one): (baseline ids, forced ids), each [max_new_tokens]. ValueError for an unknown site or
    code."""
    import torch

    from interp.hooks.tokens import as_tokens

    books = attached(model)
    if site not in books:
        raise ValueError(f"This codebook model has no codebook at {site!r}.")
    if not 0 <= int(code) < books[site].cfg.n_codes:
        raise ValueError(f"Code {code} is out of range: the codebook at {site} has codes "
                         f"0..{books[site].cfg.n_codes - 1}.")
    tokens = as_tokens(model, tokens, one_sequence=True)
    iv = code_intervention(model, site, int(code), "force", positions="last", group=int(group))
    kw = dict(max_new_tokens=int(max_new_tokens), do_sample=False, stop_at_eos=False, return_type="tokens")
    with torch.no_grad():
        g0 = model.generate(tokens, **kw)[0, tokens.shape[1]:]
        g1 = model.generate(tokens, fwd_hooks=iv.hooks(model), **kw)[0, tokens.shape[1]:]
    return g0.tolist(), g1.tolist()
