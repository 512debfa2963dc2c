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
from interp.steering.tokfsm import tokfsm_next_states, tokfsm_prompts

from .analysis import collect_codes
from .insert import CHILD, attached

__all__ = ["code_intervention", "tokfsm_state_codes", "tokfsm_transition_codes", "tokfsm_code_steering",
           "tokfsm_code_steering_table", "STEERING_MODES"]

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


@torch.no_grad()
def tokfsm_transition_codes(model: Any, n_seq: int = 256, seed: int = 7, fsm: TokFSM | None = None) -> dict[str, Tensor]:
    """The codes that carry "the previous state was S" into the next state: {site: int64 [n_states, 10]}, the
    code selected most often at tens-digit tokens whose previous state is S and whose digit is d (-1: unseen)."""
    fsm = fsm or TokFSM()
    tokens = tokfsm_dataset(n_seq, seed=seed)
    lab = tokfsm_labels(tokens, fsm)
    keep = (lab["prev_state"] >= 0) & (lab["digit_pos"] == 0) & (tokens < 10)
    run = collect_codes(model, tokens, keep_inputs=False)
    out = {}
    for site, ids in run.ids.items():
        n_codes = run.n_codes[site]
        key = (lab["prev_state"][keep] * 10 + tokens[keep]) * n_codes + ids[..., 0][keep]
        counts = torch.bincount(key, minlength=fsm.n_states * 10 * n_codes).view(fsm.n_states, 10, n_codes)
        best = counts.argmax(-1)
        out[site] = torch.where(counts.sum(-1) > 0, best, torch.full_like(best, -1))
    return out


STEERING_MODES = ("prompt", "last", "follow")


def tokfsm_code_steering(model: Any, state_codes: dict[str, Tensor], target_state: int, n_prompts: int = 64,
                         n_states: int = 8, seed: int = 0, sites: Sequence[str] | None = None, mode: str = "prompt",
                         transition_codes: dict[str, Tensor] | None = None) -> dict[str, float]:
    """Force the codes of ``target_state`` at every site and score the next generated state as
    :func:`interp.steering.tokfsm_transition_success` does (greedy, recurrent / KV-cached decoding).

    ``mode``: "prompt" forces S's codes (:func:`tokfsm_state_codes`) at the prompt's last position only;
    "last" at the last position of every forward, i.e. also at each generated token; "follow" at the prompt's
    last position, then, at the generated tens digit d, the codes of "previous state S, digit d"
    (``transition_codes``, :func:`tokfsm_transition_codes`). Returns ``steered`` / ``baseline`` (unsteered)
    shares of next states that are out-edges of the target, and ``steered_first_digit`` /
    ``baseline_first_digit``: the first generated digit is the tens digit of some out-edge."""
    if mode not in STEERING_MODES:
        raise ValueError(f"mode must be one of {STEERING_MODES}, got {mode!r}")
    fsm = TokFSM()
    sites = list(state_codes) if sites is None else list(sites)
    prompts = tokfsm_prompts(n_prompts, n_states=n_states, seed=seed, lead_to=target_state)
    L = prompts.shape[1]

    def forced(table: dict[str, Tensor], index: tuple, where: PositionsLike) -> list[Intervention]:
        return [code_intervention(model, s, int(table[s][index]), "force", where) for s in sites
                if int(table[s][index]) >= 0]

    units = forced(state_codes, (target_state,), "last" if mode == "last" else [L - 1])
    if mode == "follow":
        if transition_codes is None:
            transition_codes = tokfsm_transition_codes(model)
        nxt = torch.full((n_prompts,), -1, dtype=torch.long)
        first_tok = model.generate(prompts.to(model.device), max_new_tokens=1, fwd_hooks=Compose(units).hooks(model),
                                   stop_at_eos=False, return_type="tokens").cpu()[:, L]
        for d in first_tok.unique().tolist():
            idx = first_tok == d
            if d >= 10:
                continue
            ivs = units + forced(transition_codes, (target_state, d), [L])
            nxt[idx] = tokfsm_next_states(model, prompts[idx], Compose(ivs).hooks(model))
    else:
        nxt = tokfsm_next_states(model, prompts, Compose(units).hooks(model) if units else [])
    edges = torch.from_numpy(np.array(fsm.edges[target_state]))
    tens = torch.as_tensor(sorted({int(e) // 10 for e in fsm.edges[target_state]}))
    base = tokfsm_next_states(model, prompts)
    out = {}
    for key, n in (("steered", nxt), ("baseline", base)):
        out[key] = float(torch.isin(n, edges).double().mean())
        out[f"{key}_first_digit"] = float(((n >= 0) & torch.isin(n // 10, tens)).double().mean())
    return out


def tokfsm_code_steering_table(model: Any, state_codes: dict[str, Tensor], targets: Sequence[int],
                               n_prompts: int = 32, seed: int = 0, mode: str = "prompt", **kw: Any) -> dict[str, Any]:
    """:func:`tokfsm_code_steering` over several target states: per-target rows and the means."""
    if mode == "follow" and kw.get("transition_codes") is None:
        kw["transition_codes"] = tokfsm_transition_codes(model)
    rows = [{"target": int(t), **tokfsm_code_steering(model, state_codes, int(t), n_prompts, seed=seed + i, mode=mode,
                                                      **kw)}
            for i, t in enumerate(targets)]
    keys = ("steered", "baseline", "steered_first_digit", "baseline_first_digit")
    return {"rows": rows, **{k: float(np.mean([r[k] for r in rows])) for k in keys}, "n_trials": n_prompts * len(rows),
            "mode": mode}
