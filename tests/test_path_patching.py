"""Path patching (interp.patching.path): adjacent sites equal activation patching; a path to the last block's output
equals the sender's direct effect computed by hand; on the SSMs and the transformer; errors."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.data import tokfsm_patching_pairs
from interp.hooks.hook_points import UnknownHookError
from interp.patching import LogitDiff, patch_sweep, path_patch


@pytest.fixture(scope="module")
def pairs():
    return tokfsm_patching_pairs(6, seed=5)


@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_adjacent_path_is_activation_patching(name, direction, pairs):
    """Nothing lies between a block's component and the next block's input: the path is the whole effect."""
    model = interp.load(name)
    clean, corr, ans, wrong = pairs
    kw = dict(corrupted=corr, metric=LogitDiff(ans, wrong), direction=direction)
    sites = [("mixer_out", 1, "2.hook_resid_pre"), ("state", 1, "2.hook_resid_pre")] if "mamba" in name else \
        [("mlp_out", 0, "1.hook_resid_pre"), ("attn_out", 1, "1.hook_resid_mid")]
    for site, layer, receiver in sites:
        sweep = patch_sweep(model, clean, hook=site, layers=[layer], positions=[14, 16], **kw)
        sender = sweep.hooks[0]
        path = path_patch(model, clean, sender=sender, receiver=f"blocks.{receiver}", positions=[16], **kw)
        assert abs(path.value - sweep.cell(layer, 16)) <= 1e-4, (site, path.value, sweep.cell(layer, 16))
        assert path.direction == direction and path.positions == (16,)
    assert abs(sweep.cell(layer, 16)) > 1e-3 if direction == "denoise" else True  # the cells are not trivial


@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-transformer"])
def test_direct_path_to_the_output(name, pairs):
    """Receiver = the last block's output: the metric of (corrupted final residual + the sender's clean - corrupted
    difference) read out by the final norm and unembedding, by hand."""
    model = interp.load(name)
    clean, corr, ans, wrong = pairs
    metric = LogitDiff(ans, wrong)
    n = model.cfg.n_layers
    sender = "blocks.0.hook_mixer_out" if "mamba" in name else "blocks.0.hook_attn_out"
    final = f"blocks.{n - 1}.hook_resid_post"
    path = path_patch(model, clean, corrupted=corr, metric=metric, sender=sender, receiver=final)
    assert final not in path.frozen and sender not in path.frozen
    assert f"blocks.{n - 1}.hook_{'mixer_out' if 'mamba' in name else 'mlp_out'}" in path.frozen
    with torch.no_grad():
        _, c = model.run_with_cache(clean, names_filter=[sender])
        _, k = model.run_with_cache(corr, names_filter=[sender, final])
        resid = k[final] + c[sender] - k[sender]
        logits = model(resid, start_at_layer=n)
        score = metric.normalised(model(clean), model(corr))
        total = patch_sweep(model, clean, corrupted=corr, metric=metric, hook=sender.split(".")[-1], layers=[0],
                            positions=[17])
    assert abs(path.value - score(logits).item()) <= 1e-4
    torch.testing.assert_close(path.per_prompt, metric(logits, model(clean)).float(), atol=1e-3, rtol=1e-4)
    assert total.values.shape == (1, 1)  # the direct path is one part of the total effect, not all of it


def test_path_patching_errors(pairs):
    model = interp.load("tokfsm-mamba")
    clean, corr, ans, wrong = pairs
    kw = dict(corrupted=corr, metric=LogitDiff(ans, wrong))
    with pytest.raises(ValueError, match="must come after"):
        path_patch(model, clean, sender="blocks.2.hook_mixer_out", receiver="blocks.1.hook_resid_pre", **kw)
    with pytest.raises(ValueError, match="must come after"):
        path_patch(model, clean, sender="blocks.2.ssm.hook_dt", receiver="blocks.2.ssm.hook_y", **kw)
    with pytest.raises(ValueError, match="cannot be a receiver"):
        path_patch(model, clean, sender="blocks.0.hook_mixer_out", receiver="blocks.2.ssm.hook_state", **kw)
    with pytest.raises(UnknownHookError, match="sender"):
        path_patch(model, clean, sender="blocks.0.hook_mixer", receiver="blocks.2.hook_resid_pre", **kw)
    with pytest.raises(ValueError, match="direction"):
        path_patch(model, clean, sender="blocks.0.hook_mixer_out", receiver="blocks.2.hook_resid_pre",
                   direction="sideways", **kw)
