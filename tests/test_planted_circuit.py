"""The planted-circuit task (interp.tasks.circuits): on each embedded model the resample-ablation ground truth of the
planted model is exactly ``keep`` (every other component's effect exactly 0), the planted model still separates
clean from corrupted prompts, and the model handed in is left untouched."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.data import tokfsm_patching_pairs
from interp.patching import LogitDiff, circuit_ground_truth, component_labels
from interp.tasks.circuits import PLANTED_KEEP, planted_circuit, zero_components

MODELS = ["tokfsm-mamba2", "tokfsm-transformer", "tokfsm-mamba"]


def _logit_diff(model, tokens, answer, wrong):
    logits = model(tokens)[:, -1]
    rows = torch.arange(tokens.shape[0])
    return logits[rows, answer] - logits[rows, wrong]


@pytest.mark.parametrize("name", MODELS)
def test_planted_ground_truth_is_keep_and_the_task_is_solved(name):
    model = interp.load(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = planted_circuit(model, n_pairs=64, seed=11)
    assert task.keep == PLANTED_KEEP[name] and task.labels == component_labels(model)
    assert task.model is not model
    # the original model is untouched, the copy differs exactly in the zeroed weights
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    changed = [k for k, v in task.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(("out_proj" in k) or k.endswith("W_O") for k in changed)

    gt = circuit_ground_truth(task.model, task.clean, corrupted=task.corrupted, metric=task.metric, threshold=0.02)
    assert gt.components == task.keep
    assert gt.effect[~task.mask].abs().max().item() <= 1e-6  # outside keep: exactly nothing
    assert gt.effect[task.mask].abs().min().item() > 0.02
    # a clear clean-corrupted gap: clean prompts favour the answer, corrupted ones the wrong answer
    clean = _logit_diff(task.model, task.clean, task.answer, task.wrong).mean().item()
    corr = _logit_diff(task.model, task.corrupted, task.answer, task.wrong).mean().item()
    assert clean > 1.0 and corr < -1.0 and clean - corr > 3.0
    assert gt.sweep.clean == pytest.approx(clean, rel=1e-4, abs=1e-4)
    # precision / recall against the known circuit
    assert task.score(task.keep) == (1.0, 1.0)
    assert task.score(task.keep[:1]) == (1.0, 1 / len(task.keep))


def test_zero_components_custom_keep_and_errors():
    model = interp.load("tokfsm-mamba2")
    clean, corrupted, answer, wrong = tokfsm_patching_pairs(8, seed=5)
    planted = zero_components(model, keep=["L3H0", "L1H2"])
    gt = circuit_ground_truth(planted, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), threshold=0.05)
    assert gt.components == ("L1H2", "L3H0")
    # nothing kept: no out-projection column writes
    none = zero_components(model, keep=[])
    for block in none.blocks:
        assert block.ssm.out_proj.weight.abs().max().item() == 0
    with pytest.raises(ValueError, match="not components"):
        planted_circuit(model, keep=["L9H0"])
    with pytest.raises(TypeError, match="sequence"):
        planted_circuit(model, keep="L0H0")
    task = planted_circuit(model, keep=("L3H0", "L0H1"), n_pairs=4)
    assert task.keep == ("L0H1", "L3H0") and task.clean.shape == task.corrupted.shape == (4, 18)
    assert task.mask.sum().item() == 2 and bool(task.mask[0, 1]) and bool(task.mask[3, 0])


def test_no_default_for_an_unknown_model():
    from interp.demo import tiny_model

    model = tiny_model()
    with pytest.raises(ValueError, match="no default planted circuit"):
        planted_circuit(model)
