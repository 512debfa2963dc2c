"""Activation patching: layer × position sweeps, batched over cells, on SSMs and transformers.

    from interp.patching import patch_sweep, LogitDiff
    sweep = patch_sweep(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong))   # resid_pre
    sweep.values            # [n_layers, n_positions]: 1 = the clean behaviour restored, 0 = still corrupted
    patch_sweep(model, clean, corrupted=corrupted, hook="state", metric=KLToClean())          # SSM recurrent state
    patch_sweep(model, clean, corrupted=corrupted, hook="blocks.{layer}.ssm.hook_dt", direction="noise", ...)
    run_patched(model, corrupted, source=clean, hook="blocks.2.ssm.hook_state", positions=[9])  # one patched run

A cell (layer l, position p) is one run of the *base* prompts with the hook's activation of layer l at position p
replaced by the *source* prompts' activation there: denoising (the default) runs the corrupted prompts with clean
activations patched in; noising runs the clean prompts with corrupted ones. Prompts are pairs, clean [b, L] and
corrupted [b, L], and every cell is scored on all b pairs (:mod:`interp.patching.metrics`).

Batching: the source activations are cached once; then each forward stacks ``c`` copies of the b base prompts
([c·b, L]) and patches copy j at its own cell (hooks on every layer in the batch, each patching only its copies),
so a sweep of n cells takes ceil(n / c) forwards instead of n. The numbers are those of one forward per cell (the
TransformerLens loop) up to float rounding of a bigger batch (measured identical on the embedded models;
``batch_size=1`` runs exactly that loop's forwards). Stacking saves per-forward overhead, not arithmetic: on a CPU,
where a forward of a few dozen prompts is already compute-bound, a sweep takes about as long as the loop
(``bench/patching.py``, docs/benchmarks.md).

The recurrent state (``hook="state"``, i.e. ``blocks.{layer}.ssm.hook_state``) is a site like any other: the state
h_p after position p is replaced, and the model's state hook carries the edit through the rest of the recurrence
exactly (:func:`interp.hooks.scan.apply_state_edits`); the sweep passes the forward's ``state_positions`` and finds
each cell's slot among the states the hook shows (``hook.ctx["positions"]``), so a caller never slices [b, k, H, P, N]
by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.hook_points import UnknownHookError, absolute_positions, suggest
from interp.hooks.positions import Positions, PositionsLike, check_index
from interp.hooks.tokens import as_tokens

from .metrics import NormalisedMetric, PatchMetric, describe, normalise
from .prefix import base_states, cell_groups, prefix_cells, supports_prefix

__all__ = ["PatchSweep", "patch_sweep", "run_patched", "hook_template", "DIRECTIONS", "STATE_HOOK"]

DIRECTIONS = ("denoise", "noise")
STATE_HOOK = "ssm.hook_state"
#: where a short hook name is looked for, in order ("resid_pre" -> blocks.{layer}.hook_resid_pre, "dt" -> ssm.hook_dt)
_PLACES = ("blocks.{{layer}}.hook_{h}", "blocks.{{layer}}.{h}", "blocks.{{layer}}.ssm.hook_{h}",
           "blocks.{{layer}}.attn.hook_{h}", "blocks.{{layer}}.mlp.hook_{h}")
#: rows (prompt copies) x positions x vocabulary of the logits one forward may hold, in float32 values
_LOGIT_BUDGET = 2**27
#: most rows (cells x prompts) in one forward by default. On a CPU a forward of a few dozen rows is already
#: compute-bound, and big batches fall out of cache (tokfsm-mamba, 27 pairs: 72 cells per forward 2.5 s, 8 per forward
#: 1.6 s, one per forward 1.4 s); on a GPU the per-forward overhead dominates and stacking pays.
_MAX_ROWS = {"cpu": 256, "cuda": 4096}
#: positions whose cells share one partial forward when a sweep reuses the base run's state (their copies run from
#: the first one's state): fewer, bigger forwards against a little work on positions a copy does not change yet
_PREFIX_SPAN = 2


@dataclass(frozen=True)
class PatchSweep:
    """An activation-patching sweep over layers × positions of one hook.

    Attributes:
        values: float [n_layers, n_positions], the normalised metric of each cell (clean = 1, corrupted = 0;
            :mod:`interp.patching.metrics`): row i is layer ``layers[i]``, column j position ``positions[j]``.
        raw: float [n_layers, n_positions], the metric averaged over the prompts, not normalised.
        per_prompt: float [n_layers, n_positions, b], the metric of each prompt pair.
        hook: the hook-name template (``blocks.{layer}.hook_resid_pre``); ``hooks`` the name of each row.
        layers, positions: the rows' layers and the columns' absolute positions.
        metric: the metric's name; direction: "denoise" (corrupted run, clean activations patched in) or "noise".
        clean, corrupted: the metric averaged over the prompts on the unpatched clean and corrupted runs.
        tokens: int [b, L], the clean prompts (for tick labels); n_forwards: forwards the sweep ran (baselines and
            caches included).
    """

    values: Tensor
    raw: Tensor
    per_prompt: Tensor
    hook: str
    hooks: tuple[str, ...]
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    metric: str
    direction: str
    clean: float
    corrupted: float
    tokens: Tensor
    n_forwards: int

    def cell(self, layer: int, position: int) -> float:
        """The normalised value of cell (``layer``, ``position``)."""
        L = self.tokens.shape[1]
        p = check_index(position, L, "position", of=f"prompts of {L} tokens")
        if layer not in self.layers or p not in self.positions:
            raise KeyError(f"cell ({layer}, {position}) is not in this sweep: layers {self.layers}, positions "
                           f"{self.positions}")
        return float(self.values[self.layers.index(layer), self.positions.index(p)])


def hook_template(model: Any, hook: str) -> str:
    """A hook-name template with ``{layer}``: a template is checked as given, a short name is looked for in the
    block, its mixer, its attention and its MLP (``"resid_pre"``, ``"mixer_out"``, ``"state"``, ``"dt"``, ``"z"``,
    ``"attn_out"``, ...). Raises :class:`~interp.hooks.hook_points.UnknownHookError` (with close names) if layer 0
    has no such hook."""
    if not isinstance(hook, str):
        raise TypeError(f"hook must be a hook name or a template with {{layer}}, got {type(hook).__name__}")
    names = model.hook_dict
    n_layers = model.cfg.n_layers

    def somewhere(template: str) -> bool:  # a hybrid's SSM / attention hooks exist on some layers only
        return any(template.format(layer=layer) in names for layer in range(n_layers))

    if "{layer}" in hook:
        if not somewhere(hook):
            close = suggest(hook.format(layer=0), names)
            raise UnknownHookError(f"hook template {hook!r}: layer 0 has no {hook.format(layer=0)!r}, nor has any "
                                   "other layer"
                                   + (f". Closest valid names: {close}" if close else ""))
        return hook
    short = hook.removeprefix("hook_")
    for place in _PLACES:
        template = place.format(h=short if "hook_" in place else hook)
        if somewhere(template):
            return template
    block0 = sorted({n.partition(".")[2].partition(".")[2] for n in names if n.startswith("blocks.")})
    close = suggest(hook, block0)
    raise UnknownHookError(f"hook {hook!r} is not a hook of a block of this model (give a short name such as "
                           f"'resid_pre' or a template 'blocks.{{layer}}.hook_resid_pre')"
                           + (f"; closest: {close}" if close else ""))


def _is_state(template: str) -> bool:
    return template.endswith(STATE_HOOK)


def _pair(model: Any, tokens: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    clean = as_tokens(model, tokens)
    corr = as_tokens(model, corrupted, name="corrupted")
    if clean.shape != corr.shape:
        raise ValueError(f"tokens {tuple(clean.shape)} and corrupted {tuple(corr.shape)} must be prompt pairs of the "
                         "same shape [b, L] (pad or trim them to one length)")
    return clean, corr


def _source(model: Any, tokens: Tensor, names: list[str], state: bool, positions: list[int]) -> tuple[Tensor, dict]:
    """(logits of a plain forward, {hook name: activation}) of the source prompts; states at ``positions`` only."""
    if not state:
        logits, cache = model.run_with_cache(tokens, names_filter=names)
        return logits, {n: cache[n] for n in names}
    _, cache = model.run_with_cache(tokens, names_filter=names, state_positions=list(positions))
    return model(tokens), {n: cache[n] for n in names}  # the plain forward defines the baseline


def _same_at(src: Tensor, base: Tensor, p: int, slot: int | None, pos_dim: int) -> bool:
    """Whether the source and base activations are equal (bit for bit, every prompt) at position ``p`` (for the
    state hook, at its cached ``slot``)."""
    if slot is not None:
        return torch.equal(src[:, slot], base[:, slot])
    return torch.equal(src.select(pos_dim, p), base.select(pos_dim, p))


def _patcher(src: Tensor, copies: Tensor, cell_pos: Tensor, b: int, pos_dim: int, src_pos: dict[int, int] | None):
    """Hook that sets copy ``copies[i]`` of the b prompts at absolute position ``cell_pos[i]`` to the source
    activation there.

    ``src``: the source activation [b, L, ...] (position axis ``pos_dim``), or for the state hook [b, k, H, P, N]
    at the absolute positions ``src_pos`` ({position: slot}); each cell's slot in the activation is found among the
    positions the hook shows (``hook.ctx["positions"]``: the state hook shows only the forward's state_positions)."""

    def hook_fn(act: Tensor, hook: Any) -> Tensor:
        x = act.movedim(pos_dim, 1)
        shown = {int(p): i for i, p in enumerate(absolute_positions(hook, x.shape[1]).tolist())}
        slot = torch.tensor([shown[int(p)] for p in cell_pos], device=x.device)
        want = cell_pos if src_pos is None else torch.tensor([src_pos[int(p)] for p in cell_pos])
        out = x.clone().unflatten(0, (-1, b))  # [c, b, pos, ...]
        s = src.movedim(pos_dim, 1)[:, want.to(src.device)].movedim(1, 0)  # [k, b, ...]
        out[copies.to(x.device), :, slot] = s.to(device=out.device, dtype=out.dtype)
        return out.flatten(0, 1).movedim(1, pos_dim)

    return hook_fn


def _run_cells(model: Any, base: Tensor, cache: dict[str, Tensor], cells: Sequence[tuple[int, str, int]],
               state: bool, src_pos: dict[int, int] | None, patcher: Any = None) -> Tensor:
    """One forward of c copies of ``base`` [b, L]; ``cells`` are (copy j, hook name, absolute position p): copy j
    patched at that hook and position (a copy may be patched at several). ``cache``: the source activations by hook
    name. ``patcher``: the hook factory, called as :func:`_patcher` is (default :func:`_patcher`); another factory
    may read the cells' third entry as something else than a position (a component: interp.patching.components).
    -> logits [c, b, L, V]."""
    b = base.shape[0]
    c = len({j for j, _, _ in cells})
    by_hook: dict[str, tuple[list[int], list[int]]] = {}
    for j, name, p in cells:
        js, ps = by_hook.setdefault(name, ([], []))
        js.append(j)
        ps.append(p)
    patcher = _patcher if patcher is None else patcher
    fwd = [(name, patcher(cache[name], torch.tensor(js), torch.tensor(ps), b, model.pos_dim(name), src_pos))
           for name, (js, ps) in by_hook.items()]
    kwargs: dict[str, Any] = {"state_positions": sorted({p for _, _, p in cells})} if state else {}
    return model.run_with_hooks(base.repeat(c, 1), fwd_hooks=fwd, **kwargs).unflatten(0, (c, b))


@dataclass(frozen=True)
class Grid:
    """A checked patching grid: the prompt pairs [b, L], the hook template, the rows' layers and hook names, the
    columns' absolute positions."""

    clean: Tensor
    corrupted: Tensor
    hook: str
    layers: list[int]
    positions: list[int]
    names: list[str]


def check_grid(model: Any, tokens: Any, *, corrupted: Any, hook: str, layers: Sequence[int] | None,
         positions: PositionsLike, direction: str) -> Grid:
    """The arguments every sweep takes, checked: prompt pairs of one shape, a known hook, layers in range, positions
    inside the prompts, a known direction."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    clean, corr = _pair(model, tokens, corrupted)
    template = hook_template(model, hook)
    n_layers = model.cfg.n_layers
    having = [layer for layer in range(n_layers) if template.format(layer=layer) in model.hook_dict]
    layers = having if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise IndexError(f"layers={layers}: the model has layers 0..{n_layers - 1}")
    lacking = [layer for layer in layers if layer not in having]
    if lacking:  # a hybrid: the hook is on some kinds of layer only
        types = getattr(model.cfg, "layer_types", None)
        kind = f" (a {types[lacking[0]]!r} layer, cfg.layer_types)" if types is not None else ""
        raise ValueError(f"hook {template!r}: layer {lacking[0]}{kind} has no such hook; the layers that have it: "
                         f"{having} (leave layers unset for all of them)")
    pos = Positions.parse(positions).indices(clean.shape[1])
    return Grid(clean, corr, template, layers, pos, [template.format(layer=layer) for layer in layers])


def _cells_per_forward(batch_size: int | None, b: int, L: int, V: int, n: int, device: Any) -> int:
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 (cells per forward), got {batch_size}")
        return min(int(batch_size), n)
    rows = _MAX_ROWS.get(torch.device(device).type, _MAX_ROWS["cuda"])
    return max(1, min(n, _LOGIT_BUDGET // max(b * L * V, 1), rows // max(b, 1)))


@torch.no_grad()
def patch_sweep(
    model: Any,
    tokens: Any,
    *,
    corrupted: Any,
    metric: PatchMetric,
    hook: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: PositionsLike = "all",
    direction: str = "denoise",
    batch_size: int | None = None,
    reuse_prefix: bool | None = None,
) -> PatchSweep:
    """Activation patching of ``hook`` over layers × positions, batched over cells.

    Args:
        tokens: the clean prompts [b, L] (text or ids, :func:`interp.hooks.tokens.as_tokens`).
        corrupted: the corrupted prompts, same shape; pair i is (tokens[i], corrupted[i]).
        metric: a :class:`~interp.patching.metrics.PatchMetric` (``LogitDiff``, ``AnswerProb``, ``KLToClean``).
        hook: a short name (``"resid_pre"``, ``"resid_post"``, ``"mixer_out"``, ``"attn_out"``, ``"state"``,
            ``"dt"``, ...) or a template ``"blocks.{layer}.hook_resid_pre"``; a hook with a position axis, or the
            SSM's recurrent state.
        layers: the rows (default: every layer that has ``hook``; a hybrid's ``"state"`` is on its SSM layers,
            ``"attn_out"`` on its attention layers); positions: the columns (a Positions spec, default "all").
        direction: "denoise" (run the corrupted prompts, patch clean activations in) or "noise" (the reverse).
        batch_size: cells patched per forward (each cell is a copy of the b prompts); default: as many as keep
            one forward's logits under 2^27 values and its rows (cells x b) under 256 on a CPU, 4,096 on a GPU.
            ``batch_size=1`` is one forward per cell.
        reuse_prefix: run each cell from the base run's decoding state, only the blocks and positions the patch
            can change (:mod:`interp.patching.prefix`; cells of one position share a partial forward, and
            ``batch_size`` caps the layers stacked in it). Default: on the SSMs; False stacks whole forwards of the
            cells (the only way on a transformer, and the default on a hybrid, whose decoding states hold its
            attention layers' keys and values: slower than whole forwards).

    A cell where the source activation equals the base run's (bit for bit, every prompt: on a causal model every
    position before the first token where the clean and corrupted prompts differ) patches nothing; it takes the base
    run's value without a forward.

    Returns a :class:`PatchSweep` (values normalised: clean 1, corrupted 0).
    """
    g = check_grid(model, tokens, corrupted=corrupted, hook=hook, layers=layers, positions=positions, direction=direction)
    clean, corr, template, layers, pos, names = g.clean, g.corrupted, g.hook, g.layers, g.positions, g.names
    b, L = clean.shape
    state = _is_state(template)

    if reuse_prefix is None:
        reuse_prefix = supports_prefix(model, default=True)
    elif reuse_prefix and not supports_prefix(model):
        raise ValueError(f"reuse_prefix=True needs a model that continues from a decoding state (an SSM); "
                         f"{type(model).__name__} has none: leave reuse_prefix unset")
    pos_sorted = sorted(set(pos))
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in layers] if reuse_prefix else []
    clean_names = sorted(set(names) | (set(resid_names) if direction == "noise" else set()))
    corr_names = sorted(set(names) | (set(resid_names) if direction == "denoise" else set()))
    clean_logits, clean_cache = _source(model, clean, clean_names, state, pos_sorted)
    corr_logits, corr_cache = _source(model, corr, corr_names, state, pos_sorted)
    n_forwards = 2 * (2 if state else 1)
    score = NormalisedMetric(metric, clean_logits, corr_logits)
    base, cache, base_cache, base_logits = (corr, clean_cache, corr_cache, corr_logits) if direction == "denoise" \
        else (clean, corr_cache, clean_cache, clean_logits)
    src_pos = {p: i for i, p in enumerate(pos_sorted)} if state else None

    cells = [(name, p) for name in names for p in pos]  # row-major over the grid
    c = _cells_per_forward(batch_size, b, L, model.cfg.d_vocab, len(cells), clean.device)
    per_prompt = torch.empty(len(cells), b)
    raw = torch.empty(len(cells))
    # a cell whose source activation equals the base run's there (every position before the first token where the
    # prompts differ, on a causal model) patches nothing: it takes the base run's value, without a forward
    unchanged = [i for i, (name, p) in enumerate(cells)
                 if _same_at(cache[name], base_cache[name], p, src_pos[p] if state else None, model.pos_dim(name))]
    if unchanged:
        per_prompt[unchanged] = metric(base_logits[None], clean_logits).float().cpu()
        raw[unchanged] = score.raw(base_logits[None]).float().cpu()
    skip = {cells[i] for i in unchanged}
    layer_of = dict(zip(layers, names))
    if reuse_prefix:
        groups = [(min(p for _, p in kept), kept) for _, group in cell_groups(layers, pos, c, _PREFIX_SPAN)
                  if (kept := [(lay, p) for lay, p in group if (layer_of[lay], p) not in skip])]
        states = base_states(model, base, positions=[start for start, _ in groups]) if groups else {}
        resid = {layer: base_cache[f"blocks.{layer}.hook_resid_pre"] for layer in layers}
        n_forwards += 1
        index = {(layer, p): [row * len(pos) + j for row, lay in enumerate(layers) if lay == layer
                              for j, q in enumerate(pos) if q == p] for layer in layers for p in pos}
        for start, group in groups:
            hooks = []
            for layer in sorted({lay for lay, _ in group}):
                name = template.format(layer=layer)
                mine = [(i, p) for i, (lay, p) in enumerate(group) if lay == layer]
                hooks.append((name, _patcher(cache[name], torch.tensor([i for i, _ in mine]),
                                             torch.tensor([p for _, p in mine]), b, model.pos_dim(name), src_pos)))
            logits = prefix_cells(model, resid_pre=resid, base_logits=base_logits, state=states[start],
                                  cells=group, start=start, fwd_hooks=hooks, state_site=state)
            m, r = metric(logits, clean_logits).float().cpu(), score.raw(logits).float().cpu()
            for i, cell in enumerate(group):
                for flat in index[cell]:
                    per_prompt[flat], raw[flat] = m[i], r[i]
            n_forwards += 1
    todo = [] if reuse_prefix else [i for i, cell in enumerate(cells) if cell not in skip]
    for start in range(0, len(todo), c):
        flat = todo[start:start + c]
        logits = _run_cells(model, base, cache, [(j, *cells[i]) for j, i in enumerate(flat)], state, src_pos)
        per_prompt[flat] = metric(logits, clean_logits).float().cpu()
        raw[flat] = score.raw(logits).float().cpu()  # the same ops as score(one cell's logits)
        n_forwards += 1
    grid = (len(layers), len(pos))
    values = normalise(raw, score.clean.float().cpu(), score.corrupted.float().cpu())
    return PatchSweep(values=values.view(grid), raw=raw.view(grid), per_prompt=per_prompt.view(*grid, b),
                      hook=template, hooks=tuple(names), layers=tuple(layers), positions=tuple(pos),
                      metric=describe(metric), direction=direction, clean=float(score.clean),
                      corrupted=float(score.corrupted), tokens=clean.cpu(), n_forwards=n_forwards)


@torch.no_grad()
def run_patched(model: Any, tokens: Any, *, source: Any, hook: str, positions: PositionsLike) -> Tensor:
    """Logits [b, L, V] of ``tokens`` with ``hook`` (a full hook name, e.g. ``"blocks.2.ssm.hook_state"``) at
    ``positions`` replaced by its activation on ``source`` (same shape as ``tokens``): one patched run, the cell of
    a sweep. For the recurrent state the edit runs through the rest of the recurrence."""
    base, src = _pair(model, tokens, source)
    if hook not in model.hook_dict:
        hook_template(model, hook)  # raises with suggestions when hook is not a template either
        raise UnknownHookError(f"run_patched takes one full hook name (e.g. 'blocks.0.hook_resid_pre'), got {hook!r}")
    pos = sorted(set(Positions.parse(positions).indices(base.shape[1])))
    state = _is_state(hook)
    if state:
        _, cache = model.run_with_cache(src, names_filter=[hook], state_positions=pos)
    else:
        _, cache = model.run_with_cache(src, names_filter=[hook])
    src_pos = {p: i for i, p in enumerate(pos)} if state else None
    return _run_cells(model, base, {hook: cache[hook]}, [(0, hook, p) for p in pos], state, src_pos)[0]
