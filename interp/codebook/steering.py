"""Code interventions (force / append / disable a code during generation) and the TokFSM steering-by-codes
test of the codebook-features paper.

    iv = code_intervention(model, "blocks.2.ssm.hook_out", code=17, mode="force", positions="last")
    model.generate(prompt, max_new_tokens=2, fwd_hooks=iv.hooks(model))      # recurrent decoding included
    codes = tokfsm_state_codes(model)                      # {site: int64 [100]}: each state's code per site
    tokfsm_code_steering(model, codes, target_state=42)    # share of next transitions valid for state 42

Interventions are :class:`interp.steering.Intervention` objects (save, load, compose like any other).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.data.tokfsm import TokFSM, tokfsm_dataset, tokfsm_labels
from interp.steering import Compose, Intervention, codebook_code
from interp.steering.positions import PositionsLike
from interp.steering.tokfsm import tokfsm_prompts, tokfsm_transition_success

from .analysis import collect_codes
from .insert import CHILD, attached

__all__ = ["code_intervention", "tokfsm_state_codes", "tokfsm_code_steering", "tokfsm_code_steering_table"]

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


@torch.no_grad()
def tokfsm_state_codes(model: Any, n_seq: int = 256, seed: int = 7, digit_pos: int = 1,
                       fsm: TokFSM | None = None) -> dict[str, Tensor]:
    """Each TokFSM state's code at every codebook site: {site: int64 [n_states]}, the code selected most often
    (slot 0) on tokens of that state at digit position ``digit_pos`` (1: the units digit, where the prefix
    determines the state), on ``n_seq`` sequences of seed ``seed`` (-1 for a state never seen)."""
    fsm = fsm or TokFSM()
    tokens = tokfsm_dataset(n_seq, seed=seed)
    lab = tokfsm_labels(tokens, fsm)
    keep = (lab["state"] >= 0) & (lab["digit_pos"] == digit_pos)
    run = collect_codes(model, tokens, keep_inputs=False)
    out = {}
    for site, ids in run.ids.items():
        if ids.dim() != 3:
            raise ValueError(f"{site}: per-head codebooks have one code per head; pick codes per head instead")
        n_codes = run.n_codes[site]
        pair = lab["state"][keep] * n_codes + ids[..., 0][keep]
        counts = torch.bincount(pair, minlength=fsm.n_states * n_codes).view(fsm.n_states, n_codes)
        best = counts.argmax(1)
        out[site] = torch.where(counts.sum(1) > 0, best, torch.full_like(best, -1))
    return out


def tokfsm_code_steering(model: Any, state_codes: dict[str, Tensor], target_state: int, n_prompts: int = 64,
                         n_states: int = 8, seed: int = 0, sites: Sequence[str] | None = None,
                         positions: PositionsLike = "last") -> dict[str, float]:
    """Force the codes of ``target_state`` at ``positions`` of every site (default: the last position) and score
    the next generated transition (:func:`interp.steering.tokfsm_transition_success`): {"steered", "baseline"}."""
    sites = list(state_codes) if sites is None else list(sites)
    prompts = tokfsm_prompts(n_prompts, n_states=n_states, seed=seed, lead_to=target_state)
    ivs = [code_intervention(model, s, int(state_codes[s][target_state]), "force", positions)
           for s in sites if int(state_codes[s][target_state]) >= 0]
    hooks = Compose(ivs).hooks(model) if ivs else []
    return {"steered": tokfsm_transition_success(model, prompts, target_state, hooks),
            "baseline": tokfsm_transition_success(model, prompts, target_state)}


def tokfsm_code_steering_table(model: Any, state_codes: dict[str, Tensor], targets: Sequence[int],
                               n_prompts: int = 32, seed: int = 0, **kw: Any) -> dict[str, Any]:
    """:func:`tokfsm_code_steering` over several target states: per-target rows and the means."""
    rows = [{"target": int(t), **tokfsm_code_steering(model, state_codes, int(t), n_prompts, seed=seed + i, **kw)}
            for i, t in enumerate(targets)]
    return {"rows": rows, "steered": float(np.mean([r["steered"] for r in rows])),
            "baseline": float(np.mean([r["baseline"] for r in rows])), "n_trials": n_prompts * len(rows)}
