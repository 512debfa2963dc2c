"""interp.patching.components: per-component patching against TransformerLens (transformer), against patching the
whole hook_gated (SSMs: the components of a layer partition its channels) and against a hand-written slice hook."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.data import tokfsm_patching_pairs
from interp.patching import (KLToClean, LogitDiff, component_figure, component_labels, component_sweep,
                             run_components_patched, run_patched)


@pytest.fixture(scope="module")
def pairs():
    return tokfsm_patching_pairs(6, seed=3)


@pytest.fixture(scope="module", params=["tokfsm-mamba", "tokfsm-mamba2"])
def ssm(request):
    return interp.load(request.param)


@pytest.fixture(scope="module")
def transformer():
    return interp.load("tokfsm-transformer")


@pytest.mark.parametrize("fused", [False, True])
def test_transformer_equals_transformer_lens_head_patching(transformer, pairs, fused):
    """component_sweep = transformer_lens.patching.get_act_patch_attn_head_out_all_pos: exactly with every block
    computed step by step; to rounding with the fused blocks (interp.hooks.transformer_fused), since TL's function
    watches one layer per forward (the others run fused) and ours all layers in one forward."""
    from transformer_lens import patching as tl_patching

    clean, corrupted, answer, wrong = pairs
    metric = LogitDiff(answer, wrong)
    transformer.set_fused_inference(fused)
    try:
        clean_logits, clean_cache = transformer.run_with_cache(clean)
        with torch.no_grad():
            ref = tl_patching.get_act_patch_attn_head_out_all_pos(
                transformer, corrupted, clean_cache, metric.normalised(clean_logits, transformer(corrupted))).cpu()
        ours = component_sweep(transformer, clean, corrupted=corrupted, metric=metric)
    finally:
        transformer.set_fused_inference(True)
    assert ours.values.shape == ref.shape == (4, 4)
    if fused:
        assert (ours.values - ref).abs().max() <= 1e-6
    else:
        assert torch.equal(ours.values, ref), (ours.values - ref).abs().max().item()
    assert ours.hook == "blocks.{layer}.attn.hook_z" and ours.labels[2][1] == "L2H1"
    assert ours.n_forwards == 3  # two baselines, one forward for all 16 cells
    assert ours.values.abs().max() > 0.1  # some head matters (the test can fail)


def test_all_components_of_a_layer_equal_the_whole_gated_patch(ssm, pairs):
    """The components partition hook_gated's channels: patching all of them at once is patching hook_gated."""
    clean, corrupted, _, _ = pairs
    for layer in range(ssm.cfg.n_layers):
        labels = component_labels(ssm, layers=[layer])[0]
        ours = run_components_patched(ssm, corrupted, source=clean, components=labels)
        ref = run_patched(ssm, corrupted, source=clean, hook=f"blocks.{layer}.ssm.hook_gated", positions="all")
        assert (ours - ref).abs().max().item() <= 1e-6
        some = run_components_patched(ssm, corrupted, source=clean, components=labels[:1])
        assert (some - ref).abs().max().item() > 1e-4  # one component alone is not the whole patch


def _hand_cell(model, base, source, layer, s, e, positions):
    """A hand-written hook: hook_gated[:, positions, s:e] of ``base`` set to the source's."""
    name = f"blocks.{layer}.ssm.hook_gated"
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[name])

        def patch(act, hook):
            act = act.clone()
            for p in positions:
                act[:, p, s:e] = cache[name][:, p, s:e]
            return act

        return model.run_with_hooks(base, fwd_hooks=[(name, patch)])


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_ssm_cell_equals_hand_written_slice_hook(ssm, pairs, direction):
    clean, corrupted, answer, wrong = pairs
    metric = KLToClean()
    positions = [13, 14, 15, 17]
    sweep = component_sweep(ssm, clean, corrupted=corrupted, metric=metric, positions=positions,
                            direction=direction, layers=[1, 3])
    groups = ssm.cfg.out_groups()
    assert sweep.values.shape == (2, len(groups)) and sweep.positions == tuple(positions)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        score = metric.normalised(ssm(clean), ssm(corrupted))
    for row, layer in enumerate((1, 3)):
        for k in (0, len(groups) - 1):
            s, e = groups[k]
            ref = score(_hand_cell(ssm, base, source, layer, s, e, positions)).item()
            assert abs(sweep.values[row, k].item() - ref) <= 1e-5
            assert abs(sweep.cell(sweep.labels[row][k]) - ref) <= 1e-5
    tag = "H" if ssm.cfg.family == "mamba2" else "G"
    assert sweep.labels[0][0] == f"L1{tag}0" and sweep.hook == "blocks.{layer}.ssm.hook_gated"


def test_labels_match_the_cache_split(ssm, pairs):
    clean = pairs[0]
    _, cache = ssm.run_with_cache(clean)
    _, labels = cache.stack_head_results(return_labels=True)
    assert [label for row in component_labels(ssm) for label in row] == labels


def test_batch_size_and_group_size(ssm, pairs):
    clean, corrupted, answer, wrong = pairs
    kw = dict(corrupted=corrupted, metric=LogitDiff(answer, wrong), layers=[0, 2])
    one = component_sweep(ssm, clean, batch_size=1, **kw)
    many = component_sweep(ssm, clean, **kw)
    assert one.n_forwards == 2 + one.values.numel() and many.n_forwards == 3
    assert (one.values - many.values).abs().max().item() <= 1e-5
    wide = component_sweep(ssm, clean, group_size=64, **kw)
    assert wide.values.shape == (2, ssm.cfg.d_inner // 64) and wide.labels[0] == ("L0G0", "L0G1")
    assert one.top(3) == tuple(sorted((lab for row in one.labels for lab in row),
                                      key=lambda lab: -abs(one.cell(lab)))[:3])


def test_errors_and_figure(ssm, transformer, pairs):
    clean, corrupted, answer, wrong = pairs
    with pytest.raises(ValueError, match="components are named"):
        run_components_patched(ssm, corrupted, source=clean, components=["L0X1"])
    with pytest.raises(IndexError):
        run_components_patched(ssm, corrupted, source=clean, components=["L9H0" if ssm.cfg.family == "mamba2"
                                                                         else "L9G0"])
    with pytest.raises(ValueError, match="group_size"):
        component_sweep(transformer, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), group_size=4)
    sweep = component_sweep(transformer, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong),
                            direction="noise")
    assert torch.equal(sweep.effect, 1 - sweep.values)
    fig = component_figure(sweep)
    assert fig.data[0].z.shape == (4, 4) and list(fig.data[0].x) == ["H0", "H1", "H2", "H3"]
