"""Per-component activation patching: one Mamba-2 head, Mamba-1 channel group or transformer head per cell.

    from interp.patching import component_sweep, LogitDiff
    sweep = component_sweep(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong))
    sweep.values            # [n_layers, n_components]: 1 = the clean behaviour restored, 0 = still corrupted
    sweep.labels[l][k]      # "L2H1" (Mamba-2 / transformer head), "L2G5" (Mamba-1 channel group)
    run_components_patched(model, corrupted, source=clean, components=["L2H1", "L3H0"])   # one patched run

A component is what :mod:`interp.hooks.cache` splits a block's mixer into (``stack_head_results``): on an SSM a
range of the out-projection's input channels ``blocks.{l}.ssm.hook_gated`` [b, L, d_inner] (Mamba-2 one head of
``head_dim`` channels, Mamba-1 a group of ``group_size`` channels, :meth:`SSMConfig.out_groups`; the other recurrent
mixers, Gated DeltaNet, KDA, mLSTM, one head's channels, RG-LRU and RWKV a group of channels); on a transformer
one head of ``blocks.{l}.attn.hook_z`` [b, L, n_heads, d_head]. A cell (layer l, component k) runs the base prompts
with that slice replaced by the source prompts' slice at ``positions`` (all of them together, as TransformerLens's
``get_act_patch_attn_head_out_all_pos``); denoising (default) runs the corrupted prompts with clean slices, noising
the reverse. Because the out-projection is linear in ``hook_gated``, patching every component of a layer at once is
patching the whole ``hook_gated`` (tested), and on a transformer the sweep equals TransformerLens's.

Cells are batched as :func:`interp.patching.patch_sweep` batches them (copies of the prompts in one forward, each
copy patched at its own cell: :func:`interp.patching.activation._run_cells`).

:func:`circuit_ground_truth`: the components whose resample ablation (noising at every position) moves the task
metric by more than a threshold, measured on every component: the reference that circuit-finding methods
(:mod:`interp.patching.sae_codes`, a cheap denoising sweep) are scored against (docs/design.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.config import MAMBA1_GROUP_SIZE, is_ssm
from interp.hooks.positions import Positions, PositionsLike

from .activation import _cells_per_forward, _pair, _run_cells, _source, check_grid
from .metrics import NormalisedMetric, PatchMetric, describe, normalise

__all__ = ["ComponentSweep", "CircuitGroundTruth", "component_sweep", "run_components_patched", "component_hook",
           "component_labels", "circuit_ground_truth", "precision_recall"]

SSM_COMPONENT_HOOK = "blocks.{layer}.ssm.hook_gated"
ATTN_COMPONENT_HOOK = "blocks.{layer}.attn.hook_z"
_LABEL = re.compile(r"L(\d+)([HG])(\d+)")


@dataclass(frozen=True)
class ComponentSweep:
    """Activation patching of each component (head / channel group) of each layer, at ``positions`` together.

    Attributes:
        values: float [n_layers, n_components], the normalised metric of each cell (clean = 1, corrupted = 0):
            row i is layer ``layers[i]``, column k component k of that layer.
        raw: float [n_layers, n_components], the metric averaged over the prompts, not normalised.
        per_prompt: float [n_layers, n_components, b], the metric of each prompt pair.
        labels: [n_layers][n_components] names, ``L{l}H{h}`` (Mamba-2 head, transformer head) / ``L{l}G{g}``
            (Mamba-1 channel group), as :meth:`InterpActivationCache.stack_head_results` names them.
        hook: the hook template patched (``blocks.{layer}.ssm.hook_gated`` / ``blocks.{layer}.attn.hook_z``).
        layers, positions: the rows' layers and the absolute positions patched (all at once in every cell).
        metric, direction ("denoise" | "noise"), clean, corrupted: as :class:`~interp.patching.PatchSweep`.
        tokens: int [b, L], the clean prompts; n_forwards: forwards the sweep ran (baselines included).
    """

    values: Tensor
    raw: Tensor
    per_prompt: Tensor
    labels: tuple[tuple[str, ...], ...]
    hook: str
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    metric: str
    direction: str
    clean: float
    corrupted: float
    tokens: Tensor
    n_forwards: int

    @property
    def effect(self) -> Tensor:
        """[n_layers, n_components]: how much each cell moves the run towards the other prompt's behaviour, in
        units of the clean-corrupted gap: ``values`` when denoising, ``1 - values`` when noising."""
        return self.values if self.direction == "denoise" else 1.0 - self.values

    def cell(self, label: str) -> float:
        """The normalised value of the component named ``label`` (``"L2H1"``)."""
        for i, row in enumerate(self.labels):
            if label in row:
                return float(self.values[i, row.index(label)])
        raise KeyError(f"{label!r} is not a component of this sweep; its first row: {self.labels[0]}")

    def top(self, k: int) -> tuple[str, ...]:
        """The ``k`` components of largest ``|effect|`` (ties: row-major order)."""
        flat = [label for row in self.labels for label in row]
        order = sorted(range(len(flat)), key=lambda i: (-abs(float(self.effect.flatten()[i])), i))
        return tuple(flat[i] for i in order[:k])


#: the component kinds, by the hook template their components are slices of, and their names in messages
_KINDS = {SSM_COMPONENT_HOOK: "SSM heads / channel groups (ssm.hook_gated)",
          ATTN_COMPONENT_HOOK: "attention heads (attn.hook_z)"}


def _kinds_by_layer(model: Any) -> list[tuple[str, ...]]:
    """For each layer, the component templates it has (a hybrid's SSM layers ``ssm.hook_gated``, its attention
    layers ``attn.hook_z``, a "parallel" layer both, an MLP-only layer none), read from the model's hooks."""
    names = model.hook_dict
    return [tuple(t for t in _KINDS if t.format(layer=layer) in names) for layer in range(model.cfg.n_layers)]


def component_hook(model: Any, *, layers: Sequence[int] | None = None, hook: str | None = None) -> str:
    """The hook template the components of ``layers`` (default every layer) are slices of: ``blocks.{layer}.ssm.
    hook_gated`` on SSM layers, ``blocks.{layer}.attn.hook_z`` on attention layers. One kind per sweep: on a hybrid
    pass ``layers`` of one kind, or ``hook`` (``"ssm.hook_gated"`` / ``"attn.hook_z"`` or the template) to pick
    one where a layer has both (Falcon-H1's parallel layers). Raises ValueError naming each layer's kind
    otherwise."""
    kinds = _kinds_by_layer(model)
    n_layers = len(kinds)
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise IndexError(f"layers={layers}: the model has layers 0..{n_layers - 1}")
    if not any(kinds):
        raise NotImplementedError(f"{type(model).__name__} has neither ssm.hook_gated nor attn.hook_z: no components")
    if hook is not None:
        template = hook if "{layer}" in hook else "blocks.{layer}." + hook.removeprefix("blocks.{layer}.")
        if template not in _KINDS:
            raise ValueError(f"hook={hook!r}: components are slices of 'ssm.hook_gated' or 'attn.hook_z'")
        candidates = [template]
    else:
        candidates = [t for t in _KINDS if all(t in kinds[layer] for layer in layers)]
    if candidates and all(candidates[0] in kinds[layer] for layer in layers):
        return candidates[0]
    types = getattr(model.cfg, "layer_types", None)
    where = "; ".join(f"{what}: layers {[i for i, k in enumerate(kinds) if t in k]}" for t, what in _KINDS.items()
                      if any(t in k for k in kinds))
    lacking = [layer for layer in layers if not kinds[layer] or (hook is not None and candidates[0] not in
                                                                  kinds[layer])]
    detail = "" if not lacking or types is None else \
        f"; layer {lacking[0]} is a {types[lacking[0]]!r} layer (cfg.layer_types) without such components"
    raise ValueError(f"component_sweep patches one kind of component per sweep, and layers {layers} do not all have "
                     f"{'it' if hook is not None else 'one kind'}{detail}. This model's {where}: pass layers= of one "
                     "kind")


def _parts(model: Any, group_size: int | None, template: str | None = None) -> tuple[str, list[tuple[Any, ...]]]:
    """(tag "H" | "G", the index into the hook's trailing axes of each component) of the components sliced from
    ``template`` (default :func:`component_hook`)."""
    cfg = model.cfg
    template = component_hook(model) if template is None else template
    if template == SSM_COMPONENT_HOOK and not is_ssm(model):
        return _recurrent_parts(model, group_size)
    if template == SSM_COMPONENT_HOOK:
        tag = "H" if cfg.family == "mamba2" and group_size is None else "G"
        return tag, [(slice(s, e),) for s, e in cfg.out_groups(group_size)]
    if group_size is not None:
        raise ValueError("group_size splits an SSM's channels; a transformer's components are its heads")
    return "H", [(h,) for h in range(cfg.n_heads)]


def _recurrent_parts(model: Any, group_size: int | None) -> tuple[str, list[tuple[Any, ...]]]:
    """The components of a recurrent mixer other than Mamba's (Gated DeltaNet, KDA, mLSTM, RG-LRU, RWKV: no
    ``cfg.out_groups``), channel ranges of ``ssm.hook_gated`` read from one token's hooks of the first such layer
    (every such layer of a model has the same mixer): one per head where the mixer has heads (``ssm.hook_y``
    [b, L, H, d_v], ``hook_gated`` their H·d_v channels head by head), else (RG-LRU, RWKV: ``hook_y`` [b, L, d]) or
    with ``group_size``, groups of ``group_size`` (default MAMBA1_GROUP_SIZE) consecutive channels."""
    layer = next(i for i in range(model.cfg.n_layers) if SSM_COMPONENT_HOOK.format(layer=i) in model.hook_dict)
    names = [f"blocks.{layer}.ssm.hook_y", SSM_COMPONENT_HOOK.format(layer=layer)]
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device),
                                        names_filter=names)
    y, width = cache[names[0]], cache[names[1]].shape[-1]
    heads = group_size is None and y.dim() == 4 and y.shape[2] * y.shape[3] == width
    size = int(y.shape[3]) if heads else (group_size or MAMBA1_GROUP_SIZE)
    if size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return "H" if heads else "G", [(slice(s, min(s + size, width)),) for s in range(0, width, size)]


def component_labels(model: Any, *, layers: Sequence[int] | None = None,
                     group_size: int | None = None) -> tuple[tuple[str, ...], ...]:
    """[n_layers][n_components] component names (``L{l}H{h}`` / ``L{l}G{g}``) of ``layers`` (default all; on a
    hybrid, layers of one kind: :func:`component_hook`)."""
    tag, parts = _parts(model, group_size, component_hook(model, layers=layers))
    layers = range(model.cfg.n_layers) if layers is None else layers
    return tuple(tuple(f"L{layer}{tag}{k}" for k in range(len(parts))) for layer in layers)


def _component_patcher(parts: list[tuple[Any, ...]], positions: Tensor):
    """A hook factory for :func:`~interp.patching.activation._run_cells` whose cells are (copy j, hook, component
    k): copy j gets the source's component k at every one of ``positions``."""

    def make(src: Tensor, copies: Tensor, comps: Tensor, b: int, pos_dim: int, src_pos: Any):
        def hook_fn(act: Tensor, hook: Any) -> Tensor:
            out = act.movedim(pos_dim, 1).clone().unflatten(0, (-1, b))  # [c, b, L, ...]
            s = src.movedim(pos_dim, 1).to(device=out.device, dtype=out.dtype)  # [b, L, ...]
            pos = positions.to(out.device)
            for j, k in zip(copies.tolist(), comps.tolist()):
                idx = (slice(None), pos, *parts[k])
                out[j][idx] = s[idx]
            return out.flatten(0, 1).movedim(1, pos_dim)

        return hook_fn

    return make


@torch.no_grad()
def component_sweep(
    model: Any,
    tokens: Any,
    *,
    corrupted: Any,
    metric: PatchMetric,
    layers: Sequence[int] | None = None,
    positions: PositionsLike = "all",
    direction: str = "denoise",
    group_size: int | None = None,
    batch_size: int | None = None,
    hook: str | None = None,
) -> ComponentSweep:
    """Activation patching of every component (head / channel group) of ``layers``, one cell per component.

    Args:
        tokens: the clean prompts [b, L]; corrupted: the corrupted prompts, same shape (pairs).
        metric: a :class:`~interp.patching.metrics.PatchMetric`.
        layers: the rows (default every layer); positions: where a cell patches its component (all together;
            default every position, TransformerLens's ``..._all_pos``).
        direction: "denoise" (corrupted run, clean components patched in) or "noise" (the reverse).
        group_size: Mamba-1 channels per component (default :data:`~interp.hooks.config.MAMBA1_GROUP_SIZE`;
            on Mamba-2 a width other than a head gives ``L{l}G{g}`` groups); not for transformers.
        batch_size: cells per forward (default as :func:`~interp.patching.patch_sweep`); 1 is one forward per cell.
        hook: the component kind, ``"ssm.hook_gated"`` or ``"attn.hook_z"`` (default: the one every layer of
            ``layers`` has). A hybrid's sweep covers layers of one kind (:func:`component_hook` raises a
            ValueError naming each layer's kind otherwise): SSM heads on its SSM layers, attention heads on its
            attention layers.

    Returns a :class:`ComponentSweep` (values normalised: clean 1, corrupted 0).
    """
    template = component_hook(model, layers=layers, hook=hook)
    g = check_grid(model, tokens, corrupted=corrupted, hook=template, layers=layers, positions=positions,
                   direction=direction)
    clean, corr, layers, pos, names = g.clean, g.corrupted, g.layers, g.positions, g.names
    b, L = clean.shape
    tag, parts = _parts(model, group_size, template)

    clean_logits, clean_cache = _source(model, clean, sorted(set(names)), False, [])
    corr_logits, corr_cache = _source(model, corr, sorted(set(names)), False, [])
    score = NormalisedMetric(metric, clean_logits, corr_logits)
    base, cache = (corr, clean_cache) if direction == "denoise" else (clean, corr_cache)
    patcher = _component_patcher(parts, torch.tensor(sorted(set(pos))))

    cells = [(name, k) for name in names for k in range(len(parts))]  # row-major over the grid
    c = _cells_per_forward(batch_size, b, L, model.cfg.d_vocab, len(cells), clean.device)
    per_prompt = torch.empty(len(cells), b)
    raw = torch.empty(len(cells))
    n_forwards = 2
    for start in range(0, len(cells), c):
        chunk = [(j, *cell) for j, cell in enumerate(cells[start:start + c])]
        logits = _run_cells(model, base, cache, chunk, False, None, patcher=patcher)
        per_prompt[start:start + len(chunk)] = metric(logits, clean_logits).float().cpu()
        raw[start:start + len(chunk)] = score.raw(logits).float().cpu()
        n_forwards += 1
    grid = (len(layers), len(parts))
    values = normalise(raw, score.clean.float().cpu(), score.corrupted.float().cpu())
    return ComponentSweep(values=values.view(grid), raw=raw.view(grid), per_prompt=per_prompt.view(*grid, b),
                          labels=tuple(tuple(f"L{layer}{tag}{k}" for k in range(len(parts))) for layer in layers),
                          hook=template, layers=tuple(layers), positions=tuple(pos), metric=describe(metric),
                          direction=direction, clean=float(score.clean), corrupted=float(score.corrupted),
                          tokens=clean.cpu(), n_forwards=n_forwards)


def _parse(model: Any, label: str, tag: str, n_parts: int) -> tuple[int, int]:
    m = _LABEL.fullmatch(label)
    if m is None or m.group(2) != tag:
        raise ValueError(f"component {label!r}: this model's components are named 'L{{layer}}{tag}{{index}}'")
    layer, k = int(m.group(1)), int(m.group(3))
    if not 0 <= layer < model.cfg.n_layers or not 0 <= k < n_parts:
        raise IndexError(f"component {label!r}: layers 0..{model.cfg.n_layers - 1}, components 0..{n_parts - 1}")
    return layer, k


@torch.no_grad()
def run_components_patched(model: Any, tokens: Any, *, source: Any, components: Sequence[str],
                           positions: PositionsLike = "all", group_size: int | None = None) -> Tensor:
    """Logits [b, L, V] of ``tokens`` with each of ``components`` (labels such as ``"L2H1"``) replaced at
    ``positions`` by its activation on ``source`` (same shape), all in one run: a sweep's cell, or a set of
    components patched together (a circuit)."""
    base, src = _pair(model, tokens, source)
    by_template: dict[str, list[tuple[int, str, int]]] = {}
    for label in components:  # each label's kind is its layer's (a hybrid mixes SSM and attention heads)
        m = _LABEL.fullmatch(label)
        layer = int(m.group(1)) if m is not None and int(m.group(1)) < model.cfg.n_layers else 0
        template = component_hook(model, layers=[layer])
        tag, parts = _parts(model, group_size, template)
        layer, k = _parse(model, label, tag, len(parts))
        by_template.setdefault(template, []).append((0, template.format(layer=layer), k))
    if not by_template:
        return model(base)
    pos = Positions.parse(positions).indices(base.shape[1])
    names = sorted({name for cells in by_template.values() for _, name, _ in cells})
    _, cache = model.run_with_cache(src, names_filter=names)
    cache = {n: cache[n] for n in names}
    fwd = []  # one hook per patched name, as _run_cells builds them, for every kind at once
    for template, cells in by_template.items():
        patcher = _component_patcher(_parts(model, group_size, template)[1], torch.tensor(sorted(set(pos))))
        for name in sorted({n for _, n, _ in cells}):
            comps = torch.tensor([k for _, n, k in cells if n == name])
            fwd.append((name, patcher(cache[name], torch.zeros_like(comps), comps, base.shape[0],
                                      model.pos_dim(name), None)))
    return model.run_with_hooks(base, fwd_hooks=fwd)


@dataclass(frozen=True)
class CircuitGroundTruth:
    """The components a task needs, by resample ablation.

    Attributes:
        components: the labels of the circuit, in row-major order.
        effect: float [n_layers, n_components], ``1 - values`` of the noising sweep: how far resample-ablating
            the component (its corrupted activation patched into the clean run at every position) moves the
            metric towards the corrupted run, in units of the clean-corrupted gap.
        threshold: a component is in the circuit iff ``|effect| > threshold``.
        sweep: the :class:`ComponentSweep` (noising, every position) it was read from.
    """

    components: tuple[str, ...]
    effect: Tensor
    threshold: float
    sweep: ComponentSweep


def circuit_ground_truth(model: Any, tokens: Any, *, corrupted: Any, metric: PatchMetric, threshold: float = 0.1,
                         positions: PositionsLike = "all", group_size: int | None = None,
                         batch_size: int | None = None) -> CircuitGroundTruth:
    """The ground-truth circuit of a task: every component whose resample ablation changes the task metric by more
    than ``threshold`` (a fraction of the clean-corrupted gap, default 0.1).

    Definition (docs/design.md): run the clean prompts ``tokens``; replace one component's activation (head /
    channel group, :func:`component_sweep`) by its activation on the paired corrupted prompt at every one of
    ``positions``; ``effect = 1 - normalised metric`` (0: nothing changes, 1: the run behaves as the corrupted
    one). Measured exhaustively: every component of every layer, one noising :func:`component_sweep`. Use many
    prompt pairs (they are the reference, not the method under test)."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    sweep = component_sweep(model, tokens, corrupted=corrupted, metric=metric, positions=positions,
                            direction="noise", group_size=group_size, batch_size=batch_size)
    effect = sweep.effect
    comps = tuple(label for i, row in enumerate(sweep.labels) for k, label in enumerate(row)
                  if abs(float(effect[i, k])) > threshold)
    return CircuitGroundTruth(components=comps, effect=effect, threshold=float(threshold), sweep=sweep)


def precision_recall(predicted: Sequence[str], truth: Sequence[str]) -> tuple[float, float]:
    """(precision, recall) of a predicted component set against the true one (each 1.0 for two empty sets)."""
    p, t = set(predicted), set(truth)
    hit = len(p & t)
    precision = hit / len(p) if p else float(not t)
    recall = hit / len(t) if t else 1.0
    return precision, recall
