"""A circuit-identification task with a known answer: a planted circuit.

    from interp.tasks.circuits import planted_circuit
    task = planted_circuit(interp.load("tokfsm-mamba2"))          # keep: PLANTED_KEEP["tokfsm-mamba2"]
    task.model                  # a copy: every component outside task.keep writes nothing to the residual stream
    task.keep                   # the known circuit, ("L0H0", "L0H1", ...)
    task.clean, task.corrupted, task.answer, task.wrong             # the prompt pairs; task.metric: LogitDiff
    task.score(sweep.top(len(task.keep)))                          # (precision, recall) of a predicted set

Construction. A component is what :mod:`interp.patching.components` patches: a Mamba-2 head or a Mamba-1 channel
group (a range of the out-projection's input channels, :meth:`SSMConfig.out_groups`), or a transformer head. In a
copy of the model, every component not in ``keep`` has its write into the residual stream removed: its columns of
``blocks.{l}.ssm.out_proj.weight`` (SSMs) or its rows ``blocks.{l}.attn.W_O[h]`` (transformers) are set to zero.
Its activations still exist, but nothing downstream reads them, so resample-ablating it changes nothing, exactly:
the components outside ``keep`` have effect 0, and the circuit of the planted model is a subset of ``keep``
(the whole of ``keep`` when each kept component matters, which the defaults were chosen for). The transformer's
MLPs and every non-component weight are left as they are.

Task: :func:`interp.data.tokfsm_patching_pairs` (a TokFSM walk, then the tens digit of the next state; the answer
is its units digit; the corrupted prompt swaps the last whole state), scored by the logit difference answer - wrong.

Defaults (:data:`PLANTED_KEEP`), per embedded model, half of its components each, chosen by backward elimination
(repeatedly drop the kept component of smallest resample-ablation effect on the planted model; 64 pairs, seed 7)
and checked on held-out pairs (seed 11): the planted model still separates clean from corrupted (mean logit
difference clean - corrupted 6.1 on tokfsm-mamba2, 4.6 on tokfsm-transformer, 9.0 on tokfsm-mamba; the full
models: 19-21), and every kept component moves the metric by more than 5% of that gap (min |effect| 0.15, 0.08,
0.05 on the held-out pairs).

What it tests: a zeroed component's contribution is exactly 0 on every prompt, so a method that reads component
outputs through the out-projection (:func:`interp.patching.sae_code_circuit`) or patches them
(:func:`interp.patching.component_sweep`) cannot rank it above a kept one that does anything; a method can only fail
by missing kept components (``bench/circuits.py --planted``). It is a check that a method finds a circuit that is
there, not a hard benchmark.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.data import tokfsm_patching_pairs
from interp.hooks.config import is_ssm
from interp.patching import LogitDiff, component_labels, precision_recall

__all__ = ["PLANTED_KEEP", "PlantedCircuit", "planted_circuit", "zero_components"]

#: the planted circuit of each embedded model (module docstring: how they were chosen)
PLANTED_KEEP: dict[str, tuple[str, ...]] = {
    "tokfsm-mamba2": ("L0H0", "L0H1", "L0H2", "L1H2", "L2H2", "L3H0", "L3H2", "L3H3"),
    "tokfsm-transformer": ("L0H0", "L0H1", "L0H2", "L0H3", "L1H1", "L1H2", "L1H3", "L2H1"),
    "tokfsm-mamba": ("L0G1", "L0G3", "L0G4", "L0G5", "L0G6", "L1G4", "L1G6", "L1G7", "L2G1", "L2G3", "L2G5",
                     "L3G0", "L3G3", "L3G5", "L3G6", "L3G7"),
}


@dataclass(frozen=True)
class PlantedCircuit:
    """A model whose circuit is known, and its task.

    Attributes:
        model: a copy of the model given, in which only the components in ``keep`` write to the residual stream.
        keep: the known circuit, component labels (``L{l}H{h}`` / ``L{l}G{g}``) in row-major order.
        labels: [n_layers][n_components] every component's label (:func:`interp.patching.component_labels`).
        clean, corrupted: int [n_pairs, L], the task's prompt pairs; answer, wrong: int [n_pairs], the token ids
            whose logit difference the task is scored by (:attr:`metric`).
    """

    model: Any
    keep: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    clean: Tensor
    corrupted: Tensor
    answer: Tensor
    wrong: Tensor

    @property
    def metric(self) -> LogitDiff:
        """The task's metric: logit[answer] - logit[wrong] at the last position."""
        return LogitDiff(self.answer, self.wrong)

    @property
    def mask(self) -> Tensor:
        """bool [n_layers, n_components]: True where the component is in :attr:`keep`."""
        keep = set(self.keep)
        return torch.tensor([[label in keep for label in row] for row in self.labels])

    def score(self, predicted: Sequence[str]) -> tuple[float, float]:
        """(precision, recall) of a predicted component set against :attr:`keep`."""
        return precision_recall(predicted, self.keep)


def _check_keep(model: Any, keep: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keep, str):
        raise TypeError(f"keep must be a sequence of component labels, got the string {keep!r}")
    labels = component_labels(model)
    flat = [label for row in labels for label in row]
    unknown = sorted(set(keep) - set(flat))
    if unknown:
        raise ValueError(f"keep: {unknown} are not components of this model; its components are "
                         f"{flat[0]} .. {flat[-1]} ({len(labels)} layers × {len(labels[0])})")
    return tuple(label for label in flat if label in set(keep))


@torch.no_grad()
def zero_components(model: Any, *, keep: Sequence[str]) -> Any:
    """A copy of ``model`` in which every component outside ``keep`` writes nothing to the residual stream: its
    out-projection columns (SSM: ``ssm.out_proj.weight[:, s:e]``) or its ``attn.W_O[h]`` rows (transformer) set
    to zero. ``model`` itself is not changed."""
    keep = set(_check_keep(model, keep))
    labels = component_labels(model)
    planted = copy.deepcopy(model)
    for layer, block in enumerate(planted.blocks):
        for k, label in enumerate(labels[layer]):
            if label in keep:
                continue
            if is_ssm(planted):
                s, e = planted.cfg.out_groups()[k]
                block.ssm.out_proj.weight[:, s:e] = 0
            else:
                block.attn.W_O[k] = 0
    return planted


def planted_circuit(model: Any, *, keep: Sequence[str] | None = None, n_pairs: int = 32,
                    seed: int = 0) -> PlantedCircuit:
    """The planted-circuit task on ``model`` (module docstring).

    Args:
        model: a TokFSM model (Mamba-1, Mamba-2 or transformer); it is copied, never changed.
        keep: the components that keep writing to the residual stream (labels as
            :func:`interp.patching.component_labels`); default :data:`PLANTED_KEEP` of the model's name
            (``model.cfg.model_name``), a ValueError for a model without a default.
        n_pairs, seed: the task's prompt pairs (:func:`interp.data.tokfsm_patching_pairs`).
    """
    if keep is None:
        name = getattr(model.cfg, "model_name", None)
        if name not in PLANTED_KEEP:
            raise ValueError(f"no default planted circuit for model {name!r} (defaults: {sorted(PLANTED_KEEP)}); "
                             "pass keep=[component labels]")
        keep = PLANTED_KEEP[name]
    keep = _check_keep(model, keep)
    clean, corrupted, answer, wrong = tokfsm_patching_pairs(n_pairs, seed=seed)
    return PlantedCircuit(model=zero_components(model, keep=keep), keep=keep, labels=component_labels(model),
                          clean=clean, corrupted=corrupted, answer=answer, wrong=wrong)
