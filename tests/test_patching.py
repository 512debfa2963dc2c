"""interp.patching: metrics (closed forms, normalisation), sweeps against the hand-written loop (SSMs) and
TransformerLens's own patching (transformer), the recurrent state as a site against a sequential re-scan, figures."""

from __future__ import annotations


import math

import pytest
import torch

import interp
from interp.data import tokfsm_patching_pairs
from interp.hooks.hook_points import UnknownHookError
from interp.hooks.scan import step
from interp.patching.activation import _PREFIX_SPAN
from interp.patching import (AnswerProb, KLToClean, LogitDiff, hook_template, patch_figure, patch_sweep,
                             run_patched)



@pytest.fixture(scope="module")
def pairs():
    return tokfsm_patching_pairs(6, seed=3)


@pytest.fixture(scope="module", params=["tokfsm-mamba", "tokfsm-mamba2"])
def ssm(request):
    return interp.load(request.param)


@pytest.fixture(scope="module")
def transformer():
    return interp.load("tokfsm-transformer")


# ---------------------------------------------------------------------------------------------------------------
# metrics
def test_metrics_closed_forms():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)  # [b, L, V]
    clean = torch.randn(3, 5, 7)
    ans, wrong = torch.tensor([1, 2, 3]), 4
    ld = LogitDiff(ans, wrong)(logits, clean)
    assert torch.equal(ld, torch.stack([logits[i, -1, ans[i]] - logits[i, -1, 4] for i in range(3)]))
    pr = AnswerProb(ans, position=2)(logits, clean)
    assert torch.allclose(pr, torch.stack([logits[i, 2].softmax(-1)[ans[i]] for i in range(3)]))
    kl = KLToClean()(logits, clean)
    p, q = clean[:, -1].softmax(-1), logits[:, -1].softmax(-1)
    assert torch.allclose(kl, (p * (p.log() - q.log())).sum(-1), atol=1e-6)
    assert KLToClean()(clean, clean).abs().max() < 1e-6
    # leading copy axes broadcast: [c, b, L, V] -> [c, b]
    stacked = torch.stack([logits, clean])
    assert torch.equal(LogitDiff(ans, wrong)(stacked, clean)[0], ld)


def test_normalised_metric_is_one_on_clean_zero_on_corrupted():
    torch.manual_seed(1)
    clean, corr = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    for metric in (LogitDiff(0, 1), AnswerProb(2), KLToClean()):
        score = metric.normalised(clean, corr)
        assert score(clean).item() == pytest.approx(1.0, abs=1e-6)
        assert score(corr).item() == pytest.approx(0.0, abs=1e-6)
        mid = 0.5 * (metric(clean, clean).mean() + metric(corr, clean).mean())
        assert ((mid - score.corrupted) / (score.clean - score.corrupted)).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="cannot be normalised"):
        LogitDiff(0, 1).normalised(clean, clean)
    with pytest.raises(ValueError, match="one per prompt"):
        LogitDiff([0, 1], 1)(clean, clean)


# ---------------------------------------------------------------------------------------------------------------
# sweeps
def _hand_loop(model, clean, corrupted, metric, template, positions, direction="denoise", **fwd):
    """One run_with_hooks per cell (what a TransformerLens user writes): normalised metric per cell."""
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        score = metric.normalised(model(clean), model(corrupted))
        out = torch.zeros(model.cfg.n_layers, len(positions))
        for layer in range(model.cfg.n_layers):
            name = template.format(layer=layer)
            _, cache = model.run_with_cache(source, names_filter=[name])
            for j, p in enumerate(positions):
                def patch(act, hook, p=p, name=name):
                    act = act.clone()
                    act[:, p] = cache[name][:, p]
                    return act
                out[layer, j] = score(model.run_with_hooks(base, fwd_hooks=[(name, patch)], **fwd)).item()
    return out


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_ssm_sweep_equals_hand_loop(ssm, pairs, direction):
    clean, corrupted, answer, wrong = pairs
    metric = LogitDiff(answer, wrong)
    positions = [0, 3, 14, 15, 16, 17]
    kw = dict(corrupted=corrupted, metric=metric, positions=positions, direction=direction)
    stacked = patch_sweep(ssm, clean, reuse_prefix=False, **kw)
    sweep = patch_sweep(ssm, clean, **kw)  # the default on an SSM: cells run from the base run's state
    ref = _hand_loop(ssm, clean, corrupted, metric, "blocks.{layer}.hook_resid_pre", positions, direction)
    assert sweep.values.shape == stacked.values.shape == (ssm.cfg.n_layers, len(positions))
    assert (stacked.values - ref).abs().max().item() <= 1e-5
    assert (sweep.values - ref).abs().max().item() <= 1e-5
    assert (sweep.per_prompt - stacked.per_prompt).abs().max().item() <= 1e-4
    # the prompts first differ at position 15: the cells at 0, 3 and 14 patch nothing and take the base run's value
    changed = [p for p in positions if not torch.equal(clean[:, :p + 1], corrupted[:, :p + 1])]
    assert changed == [15, 16, 17]
    assert stacked.n_forwards == 3  # two baselines and one forward for the 12 changed cells
    # baselines, the base states, one partial forward per _PREFIX_SPAN changed positions
    assert sweep.n_forwards == 3 + math.ceil(len(changed) / _PREFIX_SPAN)
    # positions before the first changed token: patching changes nothing (denoise 0, noise 1)
    untouched = 1.0 if direction == "noise" else 0.0
    assert (sweep.values[:, :2] - untouched).abs().max().item() <= 1e-5
    # the last position at the last layer's input carries everything: full restoration / destruction
    assert abs(sweep.values[-1, -1].item() - (1.0 - untouched)) <= 0.5


def test_batch_size_does_not_change_the_numbers(ssm, pairs):
    clean, corrupted, answer, wrong = pairs
    kw = dict(corrupted=corrupted, metric=KLToClean(), hook="mixer_out", positions=slice(13, None), layers=[0, 2])
    one = patch_sweep(ssm, clean, batch_size=1, reuse_prefix=False, **kw)
    some = patch_sweep(ssm, clean, batch_size=5, reuse_prefix=False, **kw)
    assert one.n_forwards == 2 + 6 and some.n_forwards == 2 + 2  # 13, 14 are before the first difference: no forward
    assert (one.values - some.values).abs().max().item() <= 1e-5
    assert one.hooks == ("blocks.0.hook_mixer_out", "blocks.2.hook_mixer_out") and one.positions == (13, 14, 15, 16, 17)
    # from the base state: batch_size caps the layers stacked in one partial forward
    per_cell = patch_sweep(ssm, clean, batch_size=1, **kw)
    per_position = patch_sweep(ssm, clean, **kw)
    assert per_cell.n_forwards == 3 + 6 and per_position.n_forwards == 3 + math.ceil(3 / _PREFIX_SPAN)
    for sweep in (per_cell, per_position):
        assert (sweep.values - one.values).abs().max().item() <= 1e-5


def test_prefix_sweep_rows_in_any_order(ssm, pairs):
    """Layers given out of order or twice, positions likewise: every row and column is its own cell."""
    clean, corrupted, answer, wrong = pairs
    kw = dict(corrupted=corrupted, metric=LogitDiff(answer, wrong), hook="state")
    odd = patch_sweep(ssm, clean, layers=[2, 0, 2], positions=[17, 15, 16, 15], **kw)
    ref = patch_sweep(ssm, clean, layers=[0, 2], positions=[15, 16, 17], reuse_prefix=False, **kw)
    assert odd.layers == (2, 0, 2) and odd.positions == (17, 15, 16, 15)
    for layer in (0, 2):
        for p in (15, 16, 17):
            assert abs(odd.cell(layer, p) - ref.cell(layer, p)) <= 1e-5
    assert torch.equal(odd.values[0], odd.values[2])


@pytest.mark.parametrize("fused", [False, True])
def test_transformer_sweep_equals_transformer_lens_patching(transformer, pairs, fused):
    """interp.patching equals transformer_lens.patching on the same grid and metric: exactly with every block
    computed step by step; to rounding with the fused blocks (interp.hooks.transformer_fused), since the clean
    cache TL's function patches in comes from a forward watching every hook (step by step) and ours from one
    watching only the patched hook (fused)."""
    from transformer_lens import patching as tl_patching

    clean, corrupted, answer, wrong = pairs
    metric = LogitDiff(answer, wrong)
    transformer.set_fused_inference(fused)
    try:
        clean_logits, clean_cache = transformer.run_with_cache(clean)
        tl_metric = metric.normalised(clean_logits, transformer(corrupted))
        for tl_fn, hook in ((tl_patching.get_act_patch_resid_pre, "resid_pre"),
                            (tl_patching.get_act_patch_resid_mid, "resid_mid"),
                            (tl_patching.get_act_patch_attn_out, "attn_out"),
                            (tl_patching.get_act_patch_mlp_out, "mlp_out")):
            with torch.no_grad():
                ref = tl_fn(transformer, corrupted, clean_cache, tl_metric).cpu()
            ours = patch_sweep(transformer, clean, corrupted=corrupted, metric=metric, hook=hook)
            assert ours.values.shape == ref.shape
            if fused:
                assert (ours.values - ref).abs().max() <= 1e-6, hook
            else:
                assert torch.equal(ours.values, ref), (hook, (ours.values - ref).abs().max().item())
    finally:
        transformer.set_fused_inference(True)


def test_ssm_sweep_equals_transformer_lens_patching(ssm, pairs):
    """transformer_lens.patching runs unmodified on our SSMs and gives the same grid (one forward per cell there,
    stacked cells here: float rounding only)."""
    from transformer_lens import patching as tl_patching

    clean, corrupted, answer, wrong = pairs
    metric = LogitDiff(answer, wrong)
    clean_logits, clean_cache = ssm.run_with_cache(clean)
    with torch.no_grad():
        ref = tl_patching.get_act_patch_resid_pre(ssm, corrupted, clean_cache,
                                                  metric.normalised(clean_logits, ssm(corrupted))).cpu()
    ours = patch_sweep(ssm, clean, corrupted=corrupted, metric=metric)
    assert (ours.values - ref).abs().max().item() <= 1e-5


def test_state_patch_propagates_exactly(ssm, pairs):
    """Patching blocks.{l}.ssm.hook_state at p equals a full sequential re-scan of layer l with h_p replaced
    (<= 1e-5), and the state sweep's cell is that patched run's metric."""
    clean, corrupted, answer, wrong = pairs
    layer, p = 1, 15
    name = f"blocks.{layer}.ssm.hook_state"
    logits = run_patched(ssm, corrupted, source=clean, hook=name, positions=p)

    with torch.no_grad():
        _, clean_cache = ssm.run_with_cache(clean, names_filter=[name], state_positions=[p])
        _, cache = ssm.run_with_cache(corrupted, names_filter=lambda n: n.startswith(f"blocks.{layer}.ssm."))
        mixer = ssm.blocks[layer].ssm
        u, dt, B, C = (cache[f"blocks.{layer}.ssm.hook_{h}"] for h in ("u", "dt", "B", "C"))
        h = torch.zeros_like(clean_cache[name][:, 0])
        ys = []
        for s in range(clean.shape[1]):
            y, h = step(h, u[:, s], dt[:, s], mixer.A, B[:, s], C[:, s], mixer.D.float())
            if s == p:
                h = clean_cache[name][:, 0]
                Ch = C[:, s].repeat_interleave(ssm.cfg.H // ssm.cfg.G, 1)
                y = torch.einsum("bhpn,bhn->bhp", h, Ch) + mixer.D.float()[:, None] * u[:, s]
            ys.append(y)
        y_ref = torch.stack(ys, 1)
        ref = ssm.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.ssm.hook_y", lambda y, hook: y_ref.to(y.dtype))])
        plain = ssm(corrupted)
    assert (logits - ref).abs().max().item() <= 1e-5
    assert (logits - plain)[:, :p].abs().max().item() <= 1e-5  # before p nothing moves
    assert (logits - plain)[:, -1].abs().max().item() > 1e-3  # the patch reaches the answer

    metric = LogitDiff(answer, wrong)
    sweep = patch_sweep(ssm, clean, corrupted=corrupted, metric=metric, hook="state", positions=[3, p, 17])
    assert sweep.hook == "blocks.{layer}.ssm.hook_state"
    with torch.no_grad():
        score = metric.normalised(ssm(clean), ssm(corrupted))
    assert abs(sweep.cell(layer, p) - score(logits).item()) <= 1e-5
    assert abs(sweep.cell(layer, 3)) <= 1e-5  # tokens 0..3 agree: the state there is the same


def test_ssm_only_sites(ssm, pairs):
    clean, corrupted, answer, wrong = pairs
    for hook in ("dt", "B", "C", "conv", "x"):
        sweep = patch_sweep(ssm, clean, corrupted=corrupted, metric=AnswerProb(answer), hook=hook,
                            positions=[16], layers=[0])
        assert sweep.hook == f"blocks.{{layer}}.ssm.hook_{hook}" and sweep.values.shape == (1, 1)
        assert torch.isfinite(sweep.values).all()


def test_hook_names_and_errors(ssm, transformer, pairs):
    clean, corrupted, answer, wrong = pairs
    assert hook_template(ssm, "resid_pre") == "blocks.{layer}.hook_resid_pre"
    assert hook_template(ssm, "hook_dt") == "blocks.{layer}.ssm.hook_dt"
    assert hook_template(ssm, "ssm.hook_state") == "blocks.{layer}.ssm.hook_state"
    assert hook_template(transformer, "z") == "blocks.{layer}.attn.hook_z"
    with pytest.raises(UnknownHookError, match="state"):
        hook_template(transformer, "state")
    with pytest.raises(UnknownHookError, match="layer 0 has no"):
        hook_template(ssm, "blocks.{layer}.hook_resid_pree")
    metric = LogitDiff(answer, wrong)
    with pytest.raises(ValueError, match="same shape"):
        patch_sweep(ssm, clean, corrupted=corrupted[:, :-1], metric=metric)
    with pytest.raises(ValueError, match="direction"):
        patch_sweep(ssm, clean, corrupted=corrupted, metric=metric, direction="both")
    with pytest.raises(IndexError, match="layers"):
        patch_sweep(ssm, clean, corrupted=corrupted, metric=metric, layers=[9])
    with pytest.raises(IndexError, match="positions"):
        patch_sweep(ssm, clean, corrupted=corrupted, metric=metric, positions=[40])
    sweep = patch_sweep(ssm, clean, corrupted=corrupted, metric=metric, layers=[0], positions=[-1])
    assert sweep.cell(0, -1) == sweep.cell(0, clean.shape[1] - 1)
    for bad in (clean.shape[1], -clean.shape[1] - 1):  # no wrapping: out of range names the argument
        with pytest.raises(IndexError, match="position"):
            sweep.cell(0, bad)
    with pytest.raises(KeyError, match="not in this sweep"):
        sweep.cell(1, -1)
    with pytest.raises(IndexError, match="position=30 is out of range"):
        LogitDiff(answer, wrong, position=30)(ssm(clean), ssm(clean))
    with pytest.raises(ValueError, match="reuse_prefix=True needs a model that continues from a decoding state"):
        patch_sweep(transformer, clean, corrupted=corrupted, metric=metric, reuse_prefix=True)


def test_start_at_layer(ssm, pairs):
    """TransformerLens's start_at_layer: blocks l.. on a residual stream; with a decoding state, on later
    positions only (the pieces a prefix-reusing sweep is made of)."""
    from interp.hooks.mamba import SSMState

    clean = pairs[0]
    with torch.no_grad():
        full = ssm(clean)
        resid = ssm(clean, stop_at_layer=2)
        assert torch.equal(ssm(resid, start_at_layer=2), full)
        mid = ssm(resid, start_at_layer=2, stop_at_layer=3)
        assert torch.equal(mid, ssm(clean, stop_at_layer=3))
        state = SSMState()
        ssm(clean[:, :10], state=state, return_type=None)
        later = ssm(ssm(clean, stop_at_layer=0)[:, 10:], start_at_layer=0, state=state)
        assert (later - full[:, 10:]).abs().max().item() <= 1e-4
    # the decoding states of one forward are those of reading the prompt token by token
    states = ssm.decoding_states(clean, [0, 1, 10, clean.shape[1]])
    assert states[0] is None and states[10].offset == 10
    step_state = SSMState()
    with torch.no_grad():
        for t in range(clean.shape[1]):
            ssm(clean[:, t:t + 1], state=step_state, return_type=None)
            if t + 1 in (1, 10, clean.shape[1]):
                for ours, ref in zip(states[t + 1].conv + states[t + 1].ssm, step_state.conv + step_state.ssm):
                    assert (ours - ref).abs().max().item() <= 1e-5
    with pytest.raises(IndexError, match="decoding state"):
        ssm.decoding_states(clean, [clean.shape[1] + 1])
    with pytest.raises(ValueError, match="residual stream"):
        ssm(clean, start_at_layer=1)
    with pytest.raises(IndexError, match="start_at_layer=9"):
        ssm(resid, start_at_layer=9)
    with pytest.raises(ValueError, match="needs the tokens"):
        ssm(resid, start_at_layer=2, return_type="loss")


def test_patch_figure(transformer, pairs):
    clean, corrupted, answer, wrong = pairs
    sweep = patch_sweep(transformer, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong),
                        positions=slice(14, None))
    fig = patch_figure(sweep, str_tokens=transformer.to_str_tokens(clean[0]))
    heat = fig.data[0]
    assert tuple(heat.z.shape) == (transformer.cfg.n_layers, 4)
    assert list(heat.y) == [f"layer {i}" for i in range(transformer.cfg.n_layers)]
    assert heat.x[0].startswith("14·") and heat.zmid == 0.0
    with pytest.raises(ValueError, match="str_tokens"):
        patch_figure(sweep, str_tokens=["a"])


def _directional_derivative(model, base, source_act, name, p, metric, clean_logits):
    """d m_i / dε at ε = 0 of the base run with activation a[:, p] -> a[:, p] + ε (a'[:, p] - a[:, p]) at ``name``:
    the attribution-patching estimate of cell (name, p) minus m_i(base), by another path (a scalar's gradient)."""
    eps = torch.zeros((), requires_grad=True)
    d = model.pos_dim(name)

    def nudge(act, hook):
        x = act.movedim(d, 1)
        src = source_act.movedim(d, 1)
        x = torch.cat([x[:, :p], x[:, p:p + 1] + eps * (src[:, p:p + 1] - x[:, p:p + 1]), x[:, p + 1:]], dim=1)
        return x.movedim(1, d)

    with torch.enable_grad():
        m = metric(model.run_with_hooks(base, fwd_hooks=[(name, nudge)]), clean_logits)  # [b]
        return torch.stack([torch.autograd.grad(m[i], eps, retain_graph=True)[0] for i in range(m.shape[0])])


@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer"])
def test_attribution_is_the_first_order_term_of_each_cell(name, pairs):
    from interp.patching import attribution_sweep

    model = interp.load(name)
    clean, corr, ans, wrong = pairs
    metric = LogitDiff(ans, wrong)
    for direction, base, source in (("denoise", corr, clean), ("noise", clean, corr)):
        att = attribution_sweep(model, clean, corrupted=corr, metric=metric, hook="resid_pre", direction=direction)
        assert att.values.shape == (model.cfg.n_layers, clean.shape[1]) and att.direction == direction
        with torch.no_grad():
            clean_logits = model(clean)
            m_base = metric(model(base), clean_logits)
            _, cache = model.run_with_cache(source)
        for layer, p in ((0, 3), (2, clean.shape[1] - 1), (model.cfg.n_layers - 1, 10)):
            hook = f"blocks.{layer}.hook_resid_pre"
            ref = m_base + _directional_derivative(model, base, cache[hook], hook, p, metric, clean_logits)
            torch.testing.assert_close(att.per_prompt[layer, p], ref.float(), atol=1e-4, rtol=1e-4)
    if "mamba" in name:
        with pytest.raises(NotImplementedError, match="recurrent state"):
            attribution_sweep(model, clean, corrupted=corr, metric=metric, hook="state")


def test_attribution_tracks_activation_patching():
    """The gradient estimate ranks cells as activation patching does: correlation over the resid_pre grid of the
    27-pair task (measured 0.80 on tokfsm-mamba; 0.80 to 0.96 across the three models and two site types,
    docs/benchmarks.md)."""
    from interp.patching import attribution_sweep

    model = interp.load("tokfsm-mamba")
    clean, corr, ans, wrong = tokfsm_patching_pairs(27, seed=0)
    kw = dict(corrupted=corr, metric=LogitDiff(ans, wrong), hook="resid_pre")
    act, att = patch_sweep(model, clean, **kw), attribution_sweep(model, clean, **kw)
    assert att.clean == pytest.approx(act.clean) and att.corrupted == pytest.approx(act.corrupted)
    r = torch.corrcoef(torch.stack([act.values.flatten(), att.values.flatten()]))[0, 1]
    assert r > 0.7, float(r)


@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-transformer"])
def test_integrated_gradients_completeness(name, pairs):
    """Integrated gradients with the input as the site: the estimates of all positions sum to m(clean) - m(corrupted)
    per prompt as the steps grow (measured: 64 steps within 0.4% of the gap, one step 100%+ off); ``steps=1`` is
    plain attribution patching, exactly."""
    from interp.patching import attribution_sweep

    model = interp.load(name)
    clean, corr, ans, wrong = pairs
    metric = LogitDiff(ans, wrong)
    kw = dict(corrupted=corr, metric=metric, layers=[0])
    with torch.no_grad():
        clean_logits = model(clean)
        gap = metric(clean_logits, clean_logits) - metric(model(corr), clean_logits)  # [b]
        m_base = metric(model(corr), clean_logits)
    errors = {}
    for steps in (1, 64):
        ig = attribution_sweep(model, clean, steps=steps, **kw)
        errors[steps] = ((ig.per_prompt[0] - m_base).sum(0) - gap).abs().max().item() / gap.abs().max().item()
    assert errors[64] < 0.02 and errors[1] > 10 * errors[64], errors
    assert ig.n_forwards == 1 + 64 + 1
    one, plain = attribution_sweep(model, clean, steps=1, **kw), attribution_sweep(model, clean, **kw)
    assert torch.equal(one.per_prompt, plain.per_prompt)
    for direction in ("denoise", "noise"):  # more faithful than one gradient on this task (0.97 vs 0.57 measured)
        act = patch_sweep(model, clean, corrupted=corr, metric=metric, direction=direction)
        r = {k: torch.corrcoef(torch.stack([act.values.flatten(), attribution_sweep(
            model, clean, corrupted=corr, metric=metric, direction=direction, steps=k).values.flatten()]))[0, 1]
            for k in (1, 8)}
        assert r[8] > r[1] and r[8] > 0.9, (direction, r)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        attribution_sweep(model, clean, steps=0, **kw)


@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_cells_that_patch_nothing_are_not_run(ssm, pairs, reuse_prefix):
    """A cell whose clean and corrupted activations are equal (every position before the first differing token)
    takes the base run's value without a forward; when the prompts differ from position 1 on, the cells run."""
    clean, corrupted, answer, wrong = pairs
    kw = dict(metric=LogitDiff(answer, wrong), positions=[1, 2, 3], reuse_prefix=reuse_prefix)
    early = corrupted.clone()
    early[:, 1] = (clean[:, 1] + 1) % ssm.cfg.d_vocab  # now the prompts differ at position 1
    all_run = patch_sweep(ssm, clean, corrupted=early, batch_size=1, **kw)
    none_run = patch_sweep(ssm, clean, corrupted=corrupted, batch_size=1, **kw)  # they differ at 15 only
    # every cell runs but layer 0's at 2 and 3: its resid_pre is the token embedding, and those tokens are equal
    n_cells = ssm.cfg.n_layers * 3 - 2
    assert all_run.n_forwards == (3 if reuse_prefix else 2) + n_cells
    assert none_run.n_forwards == (3 if reuse_prefix else 2)
    assert torch.equal(none_run.values, torch.zeros_like(none_run.values))  # normalised: corrupted = 0
    ref = _hand_loop(ssm, clean, early, LogitDiff(answer, wrong), "blocks.{layer}.hook_resid_pre", [1, 2, 3],
                     "denoise")
    assert (all_run.values - ref).abs().max().item() <= 1e-5
