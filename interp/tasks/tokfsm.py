"""The TokFSM task's steering tests: toward a target state with directions, and with codebook codes.

Built on the task-free analyses (:mod:`interp.steering`, :mod:`interp.codebook`) and the TokFSM data set
(:mod:`interp.data.tokfsm`).

State steering with directions
------------------------------

The trial: a prompt is a valid TokFSM prefix (BOS + ``n_states`` states, so it ends right after a complete
state) whose second-to-last state has an edge to the target state S while its last state is not S, so that
S could have been the last state; the model generates the next two digit tokens greedily (one prefill, then
recurrent / KV-cached decoding); the trial succeeds when the generated state is one of S's 10 out-edges,
i.e. the model continues *as if the last state were S*. The unsteered baseline is the chance that the true
last state's continuation happens to be an edge of S (about 0.1).

The steering writes "the current state is S" at one hook, at the two digit positions of the prompt's last
state, with a direction per digit phase (tens, units):

* source ``"mean_difference"``: mean activation where the current state is S minus the mean over all
  states, at that hook and digit phase;
* source ``"probe"``: the direction of a 100-class "current state" probe (:func:`state_probe`, fitted
  without standardising) for class S at that hook and phase, with the length of the class mean's
  displacement (:meth:`Direction.from_probe`).

With ``erase=False`` the direction is added (operator ``add``, CAA). With ``erase=True`` (the default) the
current state is first erased by LEACE (fitted on the state labels at that hook and phase) and the direction
added after it, one affine map h -> E(h) + v (operator ``affine``): the state is *replaced* by S rather than
pushed toward it, so what is left of the true last state does not compete with S. ``scale`` interpolates
from the unsteered activation (0) to the replaced one (1) and beyond.

Which hook and operator (measured 2026-11-22 with ``python -m interp.tasks.tokfsm MODEL``: ten target
states x 64 prompts, KL on 64 neutral prompts; table in ``docs/benchmarks.md``):

* the hook is ``blocks.0.hook_resid_pre`` (the token embedding) for all three models. The second generated
  digit is decided at the first generated position, which reads the last state through block 0 (layer 0's
  attention over the digit tokens, block 0's convolution and recurrent state); an edit of any later hook at
  the last state's positions leaves that reading untouched. :func:`tokfsm_patching_success` (replace the
  hook's activations there by those of the prompt that does end in S) gives 1.00 at the embedding but 0.52
  on the transformer at ``blocks.0.hook_resid_mid`` already, 0.71 / 0.53 on Mamba-1 / Mamba-2 at
  ``blocks.1.hook_resid_pre``, and pure addition at every later hook of the transformer stays <= 0.40;
* the operator is erase + add (the default): 1.00 at scale 1 on all three models with both sources. Pure
  addition reaches >= 0.9 on the Mambas (Mamba-1 0.99 at scale 3, Mamba-2 1.00 at scale 4, both sources) but
  not on the transformer, where it peaks at 0.66 (mean difference) / 0.68 (probe) at scale 3 and falls
  beyond: the added direction leaves the true digit's embedding in place, and a scale large enough to
  outvote it swamps what the blocks write at those positions (directions normalised to the mean activation
  norm, ``normalize=True``, peak at the same 0.64 / 0.68).

    steer = tokfsm_state_steering(model, target_state=42, prompt_len=17, hook="blocks.0.hook_resid_pre")
    prompts = tokfsm_prompts(128, n_states=8, seed=1, lead_to=42)
    tokfsm_transition_success(model, prompts, 42, steer.hooks(model))

Steering by codebook codes
--------------------------

The TokFSM steering-by-codes test of the codebook-features paper:

    codes = tokfsm_state_codes(model)                      # {site: int64 [100]}: each state's code per site
    tokfsm_code_steering(model, codes, target_state=42)    # share of next transitions valid for state 42
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.codebook.analysis import collect_codes
from interp.codebook.steering import code_intervention
from interp.data.tokfsm import TokFSM, tokfsm_dataset, tokfsm_labels
from interp.hooks.hook_points import absolute_positions
from interp.hooks.positions import position_mask
from interp.steering.evaluate import DoseResponse, kl_cost
from interp.steering.intervention import Compose, Intervention, _pos_dim
from interp.hooks.positions import PositionsLike
from interp.steering.sources import AffineMap, Direction

__all__ = ["tokfsm_prompts", "tokfsm_next_states", "tokfsm_transition_success", "StateActivations",
           "tokfsm_state_activations", "state_probe", "tokfsm_state_steering", "tokfsm_steering_curve",
           "tokfsm_patching_success", "TARGET_STATES", "tokfsm_state_codes", "tokfsm_transition_codes",
           "tokfsm_code_steering", "tokfsm_code_steering_table", "STEERING_MODES", "tokfsm_prompt_text", "is_tokfsm_model",
           "tokfsm_probe_sweep", "tokfsm_code_states"]

PHASES = (0, 1)  # tens digit, units digit


def tokfsm_prompts(n: int, n_states: int = 8, seed: int = 0, lead_to: int | None = None,
                   fsm: TokFSM | None = None) -> Tensor:
    """``n`` valid TokFSM prefixes: LongTensor [n, 1 + 2 n_states] (BOS, then whole states).

    With ``lead_to=S``, only walks whose second-to-last state has an edge to S and whose last state is not S
    (rejection sampling), so that replacing the last state by S leaves a valid walk."""
    fsm = fsm or TokFSM()
    rng = np.random.default_rng(seed)
    if lead_to is None:
        return torch.as_tensor(fsm.encode(fsm.sample_states(n, n_states, rng)))
    if n_states < 2:
        raise ValueError("lead_to needs prompts of at least two states")
    kept: list[np.ndarray] = []
    for _ in range(1000):
        states = fsm.sample_states(max(16 * n, 256), n_states, rng)
        ok = fsm.adjacency[states[:, -2], lead_to] & (states[:, -1] != lead_to)
        kept.append(states[ok])
        if sum(len(k) for k in kept) >= n:
            return torch.as_tensor(fsm.encode(np.concatenate(kept)[:n]))
    raise ValueError(f"state {lead_to} has no in-edge that a walk reaches: cannot build prompts leading to it")


@torch.no_grad()
def tokfsm_next_states(model: Any, prompts: Tensor, fwd_hooks: Sequence = ()) -> Tensor:
    """The state the model generates after each prompt (two greedy tokens): int64 [n] (-1 if not two digits)."""
    L = prompts.shape[1]
    out = model.generate(prompts.to(model.device), max_new_tokens=2, fwd_hooks=list(fwd_hooks), stop_at_eos=False,
                         return_type="tokens").cpu()
    gen = out[:, L:L + 2]
    ok = (gen < 10).all(1)
    return torch.where(ok, gen[:, 0] * 10 + gen[:, 1], torch.full_like(gen[:, 0], -1))


def tokfsm_transition_success(model: Any, prompts: Tensor, target_state: int, fwd_hooks: Sequence = (),
                              fsm: TokFSM | None = None) -> float:
    """Fraction of prompts after which the generated state is an out-edge of ``target_state``."""
    fsm = fsm or TokFSM()
    nxt = tokfsm_next_states(model, prompts, fwd_hooks).numpy()
    valid = fsm.is_valid_transition(np.full_like(nxt, target_state), nxt)
    return float(np.mean(valid))


@dataclass
class StateActivations:
    """Activations at one hook on TokFSM data, with per-row labels.

    Attributes: ``hook``; ``X`` float [n, d]; ``state``, ``digit_pos`` int64 [n] (every row has a state)."""

    hook: str
    X: Tensor
    state: Tensor
    digit_pos: Tensor

    def phase(self, p: int) -> tuple[Tensor, Tensor]:
        """(X [n_p, d], state [n_p]) of the rows of digit phase ``p`` (0 tens, 1 units)."""
        m = self.digit_pos == p
        return self.X[m], self.state[m]


def tokfsm_state_activations(model: Any, hook: str, n_seq: int = 256, seed: int = 1,
                             batch_size: int = 64) -> StateActivations:
    """Run ``model`` on ``n_seq`` TokFSM sequences and keep ``hook`` at every position with a known state."""
    from interp.probes import collect_rows

    tokens = tokfsm_dataset(n_seq, seed=seed)
    lab = tokfsm_labels(tokens)
    rows = collect_rows(model, tokens, hook=hook, keep=lab["state"] >= 0, batch_size=batch_size)
    return StateActivations(hook, rows.acts[hook], rows.gather(lab["state"]), rows.gather(lab["digit_pos"]))


def state_probe(X: Tensor, y: Tensor) -> Any:
    """The 100-class "current state" probe whose direction the ``"probe"`` source uses:
    ``LogisticProbe(C=1.0, standardize=False)`` fitted on (X [n, d], y [n]).

    Not standardised: the L2-penalised weights then lie in the span of the activations, so the direction
    stays where the activations live. A standardised probe's weights mapped back to activation space are
    w_j / σ_j per coordinate, which inflates the coordinates the activations barely vary along; at the
    embedding (10 distinct rows per digit phase) that direction is at cosine 0.62 to the class mean's
    displacement on the transformer (0.87 on the Mambas), against 0.998 unstandardised, and erase + probe
    steering of tokfsm-transformer drops from 1.00 to 0.83 over ten target states."""
    from interp.probes import LogisticProbe

    return LogisticProbe(C=1.0, standardize=False).fit(X, y)


def tokfsm_state_steering(
    model: Any,
    target_state: int,
    prompt_len: int,
    hook: str = "blocks.0.hook_resid_pre",
    source: str = "mean_difference",
    scale: float = 1.0,
    acts: StateActivations | None = None,
    probes: dict[int, Any] | None = None,
    erase: bool = True,
    erasers: dict[int, AffineMap] | None = None,
    normalize: bool = False,
) -> Compose:
    """Steering toward "the current state is ``target_state``" at ``hook``, on the last state's two digits.

    Args:
        prompt_len: length of the prompts (BOS + whole states): the edits sit at absolute positions
            ``prompt_len - 2`` (tens digit, phase 0) and ``prompt_len - 1`` (units digit, phase 1).
        source: ``"mean_difference"`` or ``"probe"``.
        acts: activations at ``hook`` (default: :func:`tokfsm_state_activations`).
        probes: for ``source="probe"``, fitted 100-class state probes per phase {0: probe, 1: probe} (default:
            :func:`state_probe` fitted on ``acts``).
        erase: LEACE-erase the current state before adding (operator ``affine``), or only add (``add``).
        erasers: precomputed LEACE erasers per phase (default: fitted on ``acts``).
        normalize: rescale each phase's direction to the mean norm of the activations at ``hook`` and that
            phase, so that ``scale`` counts typical activation norms, the same for every state and source
            (default: the length of the class mean's displacement, see ``source``).

    Returns:
        a :class:`Compose` of two interventions (one per digit phase).
    """
    if source not in ("mean_difference", "probe"):
        raise ValueError(f"source must be 'mean_difference' or 'probe', got {source!r}")
    if prompt_len < 3 or prompt_len % 2 == 0:
        raise ValueError(f"a TokFSM prompt ending after a whole state has odd length >= 3, got {prompt_len}")
    acts = acts if acts is not None else tokfsm_state_activations(model, hook)
    if acts.hook != hook:
        raise ValueError(f"activations are from {acts.hook!r}, not {hook!r}")
    items = []
    for phase, pos in zip(PHASES, (prompt_len - 2, prompt_len - 1)):
        X, y = acts.phase(phase)
        if not bool((y == target_state).any()):
            raise ValueError(f"state {target_state} never occurs in the activations: collect more sequences")
        if source == "mean_difference":
            d = Direction.mean_difference(X[y == target_state], X, state=int(target_state), phase=phase)
        else:
            probe = (probes or {}).get(phase)
            if probe is None:
                probe = state_probe(X, y)
            d = Direction.from_probe(probe, int(target_state), X, y, phase=phase)
        if normalize:
            size = float(X.norm(dim=1).mean())
            d = Direction(d.vector / d.vector.norm().clamp(min=1e-12) * size, d.label,
                          {**d.meta, "normalized_to": size})
        name = f"state {target_state} phase {phase}"
        if erase:
            eraser = (erasers or {}).get(phase) or AffineMap.leace(X, y, concept="state", phase=phase)
            items.append(Intervention(eraser.then_add(d), hook, "affine", scale, positions=[pos], name=name))
        else:
            items.append(Intervention(d, hook, "add", scale, positions=[pos], name=name))
    return Compose(items)


def tokfsm_steering_curve(
    model: Any,
    target_states: Sequence[int],
    scales: Sequence[float],
    hook: str = "blocks.0.hook_resid_pre",
    source: str = "mean_difference",
    erase: bool = True,
    n_trials: int = 64,
    n_states: int = 8,
    n_neutral: int = 64,
    seed: int = 0,
    acts: StateActivations | None = None,
    probes: dict[int, Any] | None = None,
    normalize: bool = False,
) -> DoseResponse:
    """Dose-response of TokFSM state steering, averaged over ``target_states``.

    Per target state S: ``n_trials`` prompts leading to S (:func:`tokfsm_prompts` with ``lead_to=S``;
    behaviour = fraction of generated transitions valid for S, :func:`tokfsm_transition_success`); the KL
    cost is measured on ``n_neutral`` random prefixes of the same length. Each row holds the means over the
    target states plus ``per_state``; the first row is the unsteered baseline. ``normalize``: see
    :func:`tokfsm_state_steering`."""
    fsm = TokFSM()
    prompt_len = 1 + 2 * n_states
    acts = acts if acts is not None else tokfsm_state_activations(model, hook)
    if source == "probe" and probes is None:
        probes = {p: state_probe(*acts.phase(p)) for p in PHASES}
    erasers = {p: AffineMap.leace(*acts.phase(p), concept="state", phase=p) for p in PHASES} if erase else None
    neutral = tokfsm_prompts(n_neutral, n_states, seed=seed + 10_000, fsm=fsm)
    per_state = {}
    for S in target_states:
        prompts = tokfsm_prompts(n_trials, n_states, seed=seed + int(S), lead_to=int(S), fsm=fsm)
        steer = tokfsm_state_steering(model, int(S), prompt_len, hook, source, 1.0, acts, probes, erase, erasers,
                                      normalize)
        rows = [{"scale": 0.0, "behaviour": tokfsm_transition_success(model, prompts, int(S), (), fsm),
                 "kl": 0.0, "kl_last": 0.0}]
        for s in scales:
            iv = steer.with_scale(float(s))
            rows.append({"scale": float(s),
                         "behaviour": tokfsm_transition_success(model, prompts, int(S), iv.hooks(model), fsm),
                         **dataclasses.asdict(kl_cost(model, neutral, intervention=iv))})
        per_state[int(S)] = rows
    label = f"{'erase + ' if erase else ''}{source}{' (normalized)' if normalize else ''}"
    out = []
    for k, s in enumerate([0.0, *map(float, scales)]):
        cells = [per_state[S][k] for S in per_state]
        out.append({"scale": s, "label": "baseline" if k == 0 else label,
                    "behaviour": float(np.mean([c["behaviour"] for c in cells])),
                    "kl": float(np.mean([c["kl"] for c in cells])),
                    "kl_last": float(np.mean([c["kl_last"] for c in cells])),
                    "per_state": {S: per_state[S][k]["behaviour"] for S in per_state}})
    return DoseResponse(out, f"{label} @ {hook}", {"target_states": [int(t) for t in target_states],
                                                   "n_trials": n_trials, "prompt_len": prompt_len, "erase": erase,
                                                   "normalize": normalize})


@torch.no_grad()
def tokfsm_patching_success(model: Any, hook: str, target_states: Sequence[int], n_trials: int = 64,
                            n_states: int = 8, seed: int = 0) -> dict[str, Any]:
    """The trial of :func:`tokfsm_transition_success` with the activations of ``hook`` at the last state's
    two positions *replaced* by those of the same prompt whose last state is S (activation patching).

    This is the reference for any edit of ``hook`` at those positions: it changes everything there from
    ``hook`` on exactly as the model would with S in the prompt, but leaves what lies upstream of ``hook``
    at those positions untouched, in particular the keys and values that attention layers before ``hook``
    give the later (generated) positions to read. Where it stays well below 1, no edit of ``hook`` at these
    positions, additive or not, reliably makes the model continue from S.

    Returns ``{"success": mean over target states, "per_state": {S: rate}}`` (same prompts as
    :func:`tokfsm_steering_curve` with the same ``seed``)."""
    fsm = TokFSM()
    L = 1 + 2 * n_states
    pd = _pos_dim(model, hook)
    per_state = {}
    for S in target_states:
        prompts = tokfsm_prompts(n_trials, n_states, seed=seed + int(S), lead_to=int(S), fsm=fsm)
        to_S = prompts.clone()
        to_S[:, -2], to_S[:, -1] = int(S) // 10, int(S) % 10
        _, cache = model.run_with_cache(to_S.to(model.device), names_filter=lambda n: n == hook)
        src = cache[hook].movedim(pd, 1)

        def patch(act: Tensor, hook: Any, src: Tensor = src) -> Tensor:
            x = act.movedim(pd, 1)
            pos = absolute_positions(hook, x.shape[1], x.device)
            sel = position_mask(pos, (L - 2, L - 1))  # the last state's two digits, in a prompt or a decoding step
            if not bool(sel.any()):
                return act
            x = x.clone()
            x[:, sel] = src[:, pos[sel].to(src.device)].to(x.dtype)
            return x.movedim(1, pd)

        per_state[int(S)] = tokfsm_transition_success(model, prompts, int(S), [(hook, patch)], fsm)
    return {"success": float(np.mean(list(per_state.values()))), "per_state": per_state}


# ----------------------------------------------------------------------------------------------------------------
# steering by codebook codes


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
    :func:`tokfsm_transition_success` does (greedy, recurrent / KV-cached decoding).

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
        return [code_intervention(model, hook=s, code=int(table[s][index]), mode="force", positions=where)
                for s in sites if int(table[s][index]) >= 0]

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


# ----------------------------------------------------------------------------------------------------------------
# command line


def is_tokfsm_model(name: str | None) -> bool:
    """Whether the embedded model ``name`` was trained on TokFSM (its model card says so,
    :func:`interp.zoo.model_task`): only then do TokFSM measurements (state probes, TokFSM corpora) mean anything."""
    from interp.zoo import model_task

    return model_task(name) == "tokfsm"


def tokfsm_prompt_text(n_states: int = 16, seed: int = 0) -> str:
    """A valid TokFSM prompt as text: "<bos>" then ``n_states`` sampled 2-digit states (1 + 2·n_states tokens)."""
    states = TokFSM().sample_states(1, n_states, np.random.default_rng(seed))[0]
    return "<bos>" + "".join(f"{int(s):02d}" for s in states)


def tokfsm_probe_sweep(model: Any, n_seq: int, seq_len: int = 33, seed: int = 0) -> Any:
    """Layer × position probes of the TokFSM state on ``n_seq`` sampled sequences (:func:`interp.probes.probe_sweep`
    at the positions "tens digit" / "units digit"): its result (``.rows``, ``.figure()``). The control task types
    tokens by their trigram (``control_context=2``): with 10 digit tokens a per-token control is decodable
    everywhere (docs/benchmarks.md, issue 6)."""
    from interp.probes import probe_sweep

    tokens = tokfsm_dataset(int(n_seq), seed=seed, seq_len=seq_len)
    lab = tokfsm_labels(tokens)
    return probe_sweep(model, tokens, labels=lab["state"], seed=seed, control_context=2,
                       positions={"tens digit": lab["digit_pos"] == 0, "units digit": lab["digit_pos"] == 1})


def tokfsm_code_states(corpus: Tensor, fires: Tensor, top: int = 10) -> tuple[list[dict[str, Any]], int]:
    """The FSM states on the units-digit tokens of ``corpus`` [n, L] where a code fires (``fires`` [n, L] bool,
    e.g. :attr:`interp.codebook.CodeReport.fires`): (rows {state, count, precision, recall} of the ``top`` most
    frequent states, most frequent first; the number of units-digit tokens where it fires). precision = count /
    firing units digits, recall = count / units digits of that state."""
    lab = tokfsm_labels(corpus)
    units = (lab["digit_pos"] == 1) & (lab["state"] >= 0)
    hit = units & fires
    n_states = TokFSM().n_states
    count = torch.bincount(lab["state"][hit], minlength=n_states)
    total = torch.bincount(lab["state"][units], minlength=n_states)
    n_hit = int(hit.sum())
    order = [int(s) for s in torch.argsort(count, descending=True, stable=True) if count[s] > 0]
    return [{"state": s, "count": int(count[s]), "precision": float(count[s]) / max(1, n_hit),
             "recall": float(count[s]) / max(1, int(total[s]))} for s in order[:top]], n_hit


TARGET_STATES = (1, 3, 7, 17, 25, 29, 47, 58, 77, 81)  # np.random.default_rng(0).choice(100, 10, replace=False)


def _sweep_hooks(model: Any) -> list[str]:
    hooks = []
    for i in range(model.cfg.n_layers):
        hooks += [f"blocks.{i}.{h}" for h in ("hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out")]
    hooks.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    return [h for h in hooks if h in model.hook_dict]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m interp.tasks.tokfsm MODEL``: the steering sweep behind ``docs/benchmarks.md``.

    For each hook (default: every block's resid_pre, resid_mid, attn_out, mlp_out and the last resid_post
    that the model has) and source, the dose-response of :func:`tokfsm_steering_curve` (10 target states,
    64 prompts each, KL on 64 neutral prompts), one line per scale; ``--patch`` adds the activation-patching
    reference of :func:`tokfsm_patching_success` per hook."""
    import argparse
    import time

    import interp

    ap = argparse.ArgumentParser(prog="python -m interp.tasks.tokfsm", description=main.__doc__)
    ap.add_argument("model", help="a TokFSM model name (tokfsm-mamba, tokfsm-mamba2, tokfsm-transformer)")
    ap.add_argument("--hooks", default=None, help="comma-separated hook names (default: see above)")
    ap.add_argument("--sources", default="mean_difference,probe")
    ap.add_argument("--scales", default=None, help="comma-separated (default: 0.5..64 for add, 0.25..1.5 erase)")
    ap.add_argument("--erase", action="store_true", help="erase + add (LEACE then add) instead of add")
    ap.add_argument("--normalize", action="store_true", help="directions at the mean activation norm")
    ap.add_argument("--states", default=",".join(map(str, TARGET_STATES)), help="target states")
    ap.add_argument("--trials", type=int, default=64, help="prompts per target state")
    ap.add_argument("--patch", action="store_true", help="also the activation-patching reference per hook")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = interp.load(args.model, dtype=torch.float32)
    hooks = args.hooks.split(",") if args.hooks else _sweep_hooks(model)
    states = [int(t) for t in args.states.split(",")]
    default = "0.25,0.5,0.75,1,1.5" if args.erase else "0.5,1,1.5,2,3,4,6,8,16,32,64"
    scales = [float(x) for x in (args.scales or default).split(",")]
    print(f"{args.model}: {'erase + add' if args.erase else 'add'}{' (normalized)' if args.normalize else ''}, "
          f"target states {states}, {args.trials} prompts each; behaviour = fraction valid for S, KL in nats")
    for hook in hooks:
        t0 = time.perf_counter()
        acts = tokfsm_state_activations(model, hook)
        if args.patch:
            ref = tokfsm_patching_success(model, hook, states, args.trials)
            print(f"{hook:28s} activation patching at the last state's digits: {ref['success']:.3f}")
        for source in args.sources.split(","):
            c = tokfsm_steering_curve(model, states, scales, hook, source, args.erase, args.trials,
                                      n_neutral=64, acts=acts, normalize=args.normalize)
            print(f"{hook:28s} {c.rows[1]['label']:36s} baseline {c.baseline['behaviour']:.3f}")
            for r in c.rows[1:]:
                print(f"{'':28s} scale {r['scale']:6g}  valid for S {r['behaviour']:.3f} (worst state "
                      f"{min(r['per_state'].values()):.3f})  KL {r['kl']:.3f}  KL last {r['kl_last']:.3f}")
        print(f"{'':28s} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
