"""Every downstream analysis on hybrid models (interp.hooks.HookedHybrid), with no family-specific code: the
embedded, trained ``copy-hybrid`` (Mamba-2, attention, Mamba-2) and tiny random Jamba (Mamba-1 + MoE),
Nemotron-H (MLP-only layers) and Zamba2 (shared attention) models. Patching sweeps equal hand loops of
``run_with_hooks`` (the SSM state and decoding from a mixed recurrent + KV state included), component sweeps
patch SSM heads on SSM layers and attention heads on attention layers (one kind per sweep, a clear error
otherwise), path patching of adjacent sites is activation patching, DLA is exact; a probe reads the copied
token; SAEs train and splice on an SSM layer's and an attention layer's output; steering changes generation;
codebooks sit on each layer's own mixer output; lenses and the app's page functions return their results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp.data import COPY_N_SYMBOLS, sample_copy_batch
from interp.patching import (LogitDiff, attribution_sweep, component_sweep, hook_template, patch_sites, patch_sweep,
                             path_patch, run_components_patched)
from test_jamba import make_hf_jamba
from test_nemotron_h import make_hf_nemotron_h
from test_zamba2 import make_hf_zamba2

N, K = 6, 3  # copy length; the prompt ends after the copy's first K-1 symbols, the answer is a_K


@pytest.fixture(scope="module")
def hybrid():
    return interp.load("copy-hybrid")


@pytest.fixture(scope="module")
def tiny():
    """{family: a tiny random HookedHybrid}: Jamba (Mamba-1 + MoE, layers ssm/ssm/attention/ssm), Nemotron-H
    (mlp layers), Zamba2 (shared attention)."""
    return {"jamba": interp.load(make_hf_jamba("jamba")), "nemotron_h": interp.load(make_hf_nemotron_h("nemotron_h")),
            "zamba2": interp.load(make_hf_zamba2("one-block"))}


def copy_pairs(b: int = 4, seed: int = 0):
    """Copy prompts ``BOS a_1..a_N SEP a_1..a_{K-1}`` (answer a_K) and their corruption (a_K replaced in the first
    half by another symbol, the wrong answer)."""
    batch = sample_copy_batch(b, np.random.default_rng(seed), n_range=N)
    clean = batch.tokens[:, :N + 1 + K]
    answer = batch.tokens[:, K].clone()
    wrong = (answer + 5) % COPY_N_SYMBOLS
    corrupted = clean.clone()
    corrupted[:, K] = wrong
    return clean, corrupted, answer, wrong


def random_pairs(model, b: int = 2, L: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (b, L), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 7) % model.cfg.d_vocab
    answer, wrong = torch.tensor([1] * b), torch.tensor([2] * b)
    return clean, corrupted, answer, wrong


def hand_cell(model, base, source, name, position, metric, clean_logits, **fwd):
    """One cell by hand: ``name`` at ``position`` of the base run replaced by the source run's value there."""
    _, cache = model.run_with_cache(source, names_filter=[name], **fwd)
    src = cache[name]
    state = name.endswith("ssm.hook_state")

    def patch(act, hook):
        act = act.clone()
        if state:  # [b, k, H, P, N]: the hook shows the states at state_positions only
            act[:, 0] = src[:, 0]
        else:
            act[:, position] = src[:, position]
        return act

    logits = model.run_with_hooks(base, fwd_hooks=[(name, patch)], **fwd)
    return metric(logits, clean_logits).mean().detach()


def attribution_by_hand(model, clean, corrupted, metric, name):
    """Attribution patching of hook ``name`` by hand: m(corrupted) + (clean - corrupted) activation · the metric's
    gradient there, [L, b]."""
    _, src = model.run_with_cache(clean, names_filter=[name])
    seen = {}

    def leaf(a, hook):
        seen["a"] = a.detach().requires_grad_(True)
        return seen["a"]

    base = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, leaf)]), None)
    base.sum().backward()
    return base.detach()[None] + ((src[name] - seen["a"].detach()) * seen["a"].grad).sum(-1).T  # [L, b]


def train_topk_sae(acts, hook, *, d_sae=128, batch=128, steps=80):
    """A top-8 SAE trained on rows of ``acts`` [n, d] for ``steps`` batches (seeded)."""
    from interp.sae import SAEConfig, train_sae

    cfg = SAEConfig(d_in=acts.shape[1], d_sae=d_sae, architecture="topk", k=8, batch_size=batch,
                    total_training_tokens=batch * steps, lr=3e-3, checkpoint_every=0, log_every=1000,
                    dead_window_tokens=batch * steps * 5 // 8, seed=0, hook_name=hook)
    g = torch.Generator().manual_seed(0)

    def stream():
        for _ in range(steps):
            yield acts[torch.randint(0, len(acts), (batch,), generator=g)]

    return train_sae(cfg, stream, progress=False, device="cpu").sae


# ---------------------------------------------------------------------------------------------------------------
# interp.patching
# ---------------------------------------------------------------------------------------------------------------
def test_copy_hybrid_copies(hybrid):
    clean, corrupted, answer, wrong = copy_pairs()
    assert (hybrid(clean)[:, -1].argmax(-1) == answer).all()
    assert (hybrid(corrupted)[:, -1].argmax(-1) == wrong).all()  # the model copies what the source says


@pytest.mark.parametrize("site", ["resid_pre", "state", "attn_out"])
def test_patch_sweep_equals_hand_loop(hybrid, site):
    """The sweep (whole forwards, the default on a hybrid; on every layer that has the site) equals one
    run_with_hooks per cell, and reuse_prefix=True (cells run from the base run's mixed decoding states) agrees."""
    clean, corrupted, answer, wrong = copy_pairs()
    metric = LogitDiff(answer, wrong)
    sweep = patch_sweep(hybrid, clean, corrupted=corrupted, metric=metric, hook=site)
    expected_layers = {"resid_pre": (0, 1, 2), "state": (0, 2), "attn_out": (1,)}[site]
    assert sweep.layers == expected_layers and sweep.values.shape == (len(expected_layers), clean.shape[1])
    prefix = patch_sweep(hybrid, clean, corrupted=corrupted, metric=metric, hook=site, reuse_prefix=True,
                         positions=[1, K, 8])
    torch.testing.assert_close(prefix.raw, sweep.raw[:, [1, K, 8]], atol=1e-4, rtol=1e-4)
    clean_logits = hybrid(clean)
    for layer in expected_layers:
        for p in (K, clean.shape[1] - 1):
            name = sweep.hook.format(layer=layer)
            fwd = {"state_positions": [p]} if site == "state" else {}
            want = hand_cell(hybrid, corrupted, clean, name, p, metric, clean_logits, **fwd)
            assert abs(float(sweep.raw[sweep.layers.index(layer), p]) - float(want)) < 1e-4, (site, layer, p)
    if site == "resid_pre":  # the answer is read from the source position, then moved by attention
        assert sweep.cell(0, K) > 0.9 and sweep.cell(2, K) < 0.1 and sweep.cell(2, clean.shape[1] - 1) > 0.9


def test_decoding_states_continue_the_forward(hybrid):
    """A mixed state (SSM states + attention keys / values) after p tokens, continued on the rest, gives the full
    forward's logits: decoding_states is one forward per position, checked against the whole forward."""
    clean = copy_pairs()[0]
    full = hybrid(clean)
    states = hybrid.decoding_states(clean, [0, 3, 7])
    assert states[0] is None and len(states[3].keys) == 1 and len(states[3].ssm) == 2
    for p in (3, 7):
        state = states[p].copy()
        rest = hybrid(clean[:, p:], state=state)
        torch.testing.assert_close(rest, full[:, p:], atol=1e-4, rtol=1e-4)
        assert states[p].keys[0].shape[1] == p  # the snapshot is untouched by the continuation


def test_sweep_layers_without_the_site_are_refused(hybrid):
    clean, corrupted, answer, wrong = copy_pairs(2)
    with pytest.raises(ValueError, match=r"layer 1 \(a 'attention' layer, cfg.layer_types\) has no such hook.*"
                                         r"\[0, 2\]"):
        patch_sweep(hybrid, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), hook="state", layers=[0, 1])
    sites = patch_sites(hybrid)
    assert sites[:7] == ["resid_pre", "resid_mid", "resid_post", "mixer_out", "attn_out", "mlp_out", "state"]
    assert hook_template(hybrid, "attn_out") == "blocks.{layer}.hook_attn_out"


def test_attribution_sweep(hybrid):
    """Attribution patching of the attention layer's output: m(corrupted) + (clean - corrupted) activation · the
    metric's gradient there, checked against the gradient by hand; large where activation patching is large."""
    clean, corrupted, answer, wrong = copy_pairs()
    metric = LogitDiff(answer, wrong)
    kw = dict(corrupted=corrupted, metric=metric)
    act = patch_sweep(hybrid, clean, hook="attn_out", **kw)
    att = attribution_sweep(hybrid, clean, hook="attn_out", **kw)
    assert att.layers == act.layers == (1,) and att.values.shape == act.values.shape
    want = attribution_by_hand(hybrid, clean, corrupted, metric, "blocks.1.hook_attn_out")
    torch.testing.assert_close(att.per_prompt[0], want, atol=1e-4, rtol=1e-4)
    last = clean.shape[1] - 1
    assert att.cell(1, last) > 0.2 and act.cell(1, last) > 0.5  # the attention layer carries the copy
    assert abs(att.cell(1, 0)) < 1e-6 and abs(act.cell(1, 0)) < 1e-6  # nothing differs at position 0


def test_component_sweep_per_layer_kind(hybrid):
    clean, corrupted, answer, wrong = copy_pairs()
    metric = LogitDiff(answer, wrong)
    with pytest.raises(ValueError, match=r"one kind of component per sweep.*ssm.hook_gated\): layers \[0, 2\]; "
                                         r"attention heads \(attn.hook_z\): layers \[1\]"):
        component_sweep(hybrid, clean, corrupted=corrupted, metric=metric)
    attn = component_sweep(hybrid, clean, corrupted=corrupted, metric=metric, layers=[1])
    ssm = component_sweep(hybrid, clean, corrupted=corrupted, metric=metric, layers=[0, 2])
    assert attn.hook == "blocks.{layer}.attn.hook_z" and attn.labels == (("L1H0", "L1H1", "L1H2", "L1H3"),)
    assert ssm.hook == "blocks.{layer}.ssm.hook_gated" and ssm.values.shape == (2, hybrid.cfg.ssm.n_heads)
    # a cell is one run_with_hooks with that head's slice patched at every position
    clean_logits = hybrid(clean)
    _, cache = hybrid.run_with_cache(clean, names_filter=["blocks.1.attn.hook_z", "blocks.2.ssm.hook_gated"])
    P = hybrid.cfg.ssm.head_dim

    def head(name, idx):
        def fn(act, hook):
            act = act.clone()
            act[(slice(None), slice(None), *idx)] = cache[name][(slice(None), slice(None), *idx)]
            return act
        return fn

    for sweep, label, name, idx in ((attn, "L1H2", "blocks.1.attn.hook_z", (2,)),
                                    (ssm, "L2H1", "blocks.2.ssm.hook_gated", (slice(P, 2 * P),))):
        logits = hybrid.run_with_hooks(corrupted, fwd_hooks=[(name, head(name, idx))])
        raw = sweep.raw.flatten()[[x for row in sweep.labels for x in row].index(label)]
        assert abs(float(raw) - float(metric(logits, clean_logits).mean().detach())) < 1e-4
    # patching every head of the attention layer is patching its whole hook_z; labels of both kinds in one run
    every = run_components_patched(hybrid, corrupted, source=clean, components=list(attn.labels[0]))
    whole = hybrid.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_z",
                                                         lambda a, hook: cache["blocks.1.attn.hook_z"])])
    torch.testing.assert_close(every, whole, atol=1e-5, rtol=1e-5)
    both = run_components_patched(hybrid, corrupted, source=clean, components=["L1H2", "L2H1"])
    assert torch.isfinite(both).all() and not torch.allclose(both, every)


def test_component_sweep_refuses_mlp_layers(tiny):
    model = tiny["nemotron_h"]  # M - M * - M: layer 1 is an MLP layer
    clean, corrupted, answer, wrong = random_pairs(model)
    with pytest.raises(ValueError, match=r"layer 1 is a 'mlp' layer \(cfg.layer_types\) without such components"):
        component_sweep(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), layers=[0, 1])
    sweep = component_sweep(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), layers=[3])
    assert sweep.hook == "blocks.{layer}.attn.hook_z"


def test_path_patch_adjacent_is_activation_patching(hybrid):
    clean, corrupted, answer, wrong = copy_pairs(2)
    kw = dict(corrupted=corrupted, metric=LogitDiff(answer, wrong))
    last = clean.shape[1] - 1
    # Bamba's layout: every mixer is followed by an MLP sublayer, so the site adjacent to a mixer is resid_mid
    adjacent = (("mixer_out", 0, "blocks.0.hook_resid_mid"), ("state", 2, "blocks.2.hook_resid_mid"),
                ("attn_out", 1, "blocks.1.hook_resid_mid"), ("mlp_out", 1, "blocks.2.hook_resid_pre"))
    for site, layer, receiver in adjacent:
        sweep = patch_sweep(hybrid, clean, hook=site, layers=[layer], positions=[K, last], **kw)
        for p in (K, last) if site == "mixer_out" else (last,):
            path = path_patch(hybrid, clean, sender=sweep.hooks[0], receiver=receiver, positions=[p], **kw)
            assert abs(path.value - sweep.cell(layer, p)) < 1e-4, (site, p, path.value, sweep.cell(layer, p))


@pytest.mark.parametrize("family", ["jamba", "nemotron_h", "zamba2"])
def test_tiny_families_patch(tiny, family):
    """Sweeps of the residual stream, the state and the attention output on every family (MoE, MLP-only and
    shared-attention layers included): nothing moves before the corrupted position; cells run from the mixed
    decoding state (reuse_prefix=True) equal whole forwards, except on Zamba2, whose shared attention reads the
    token embeddings, which a partial forward lacks (refused by the model with its message)."""
    model = tiny[family]
    clean, corrupted, answer, wrong = random_pairs(model)
    metric = LogitDiff(answer, wrong)
    for site in ("resid_pre", "state", "attn_out"):
        whole = patch_sweep(model, clean, corrupted=corrupted, metric=metric, hook=site)
        assert (whole.raw[:, :2] - whole.corrupted).abs().max() < 1e-4  # nothing differs before position 2
        if family == "zamba2":
            with pytest.raises(ValueError, match="shared attention block, which reads the token embeddings"):
                patch_sweep(model, clean, corrupted=corrupted, metric=metric, hook=site, reuse_prefix=True)
            continue
        fast = patch_sweep(model, clean, corrupted=corrupted, metric=metric, hook=site, reuse_prefix=True,
                           positions=[2, 5])
        torch.testing.assert_close(fast.raw, whole.raw[:, [2, 5]], atol=1e-4, rtol=1e-4)
    types = model.cfg.layer_types
    attn_layers = [i for i, t in enumerate(types) if "attention" in t]
    sweep = component_sweep(model, clean, corrupted=corrupted, metric=metric, layers=attn_layers, hook="attn.hook_z")
    assert sweep.hook == "blocks.{layer}.attn.hook_z" and sweep.values.shape == (len(attn_layers), model.cfg.n_heads)


# ---------------------------------------------------------------------------------------------------------------
# interp.lens: direct logit attribution (exact), logit lens, tuned lens
# ---------------------------------------------------------------------------------------------------------------
def test_direct_logit_attribution_is_exact(hybrid, tiny):
    """One row per sublayer output (what each block adds: mixer / attention / MLP / MoE output; on Zamba2's
    shared-attention layers the SSM mixer's only), summing exactly to the logit difference; per head refused."""
    from interp.lens import direct_logit_attribution

    clean, _, answer, wrong = copy_pairs()
    d = direct_logit_attribution(hybrid, clean, answer=answer, wrong=wrong)
    assert d.labels == ["embed", "0_mixer_out", "0_mlp_out", "1_attn_out", "1_mlp_out", "2_mixer_out", "2_mlp_out"]
    torch.testing.assert_close(d.values.sum(0) + d.bias, d.target, atol=1e-3, rtol=1e-4)
    assert d.target.min() > 5 and d.values[d.labels.index("1_attn_out")].mean() > 1  # the copy, via attention
    for family, model in tiny.items():
        toks = random_pairs(model)[0]
        d = direct_logit_attribution(model, toks, answer=[3, 4], wrong=[5, 6])
        torch.testing.assert_close(d.values.sum(0) + d.bias, d.target, atol=1e-4, rtol=1e-4, msg=family)
    with pytest.raises(NotImplementedError, match=r"hybrid model \(cfg.layer_types\).*decompose_resid"):
        direct_logit_attribution(hybrid, clean, answer=answer, wrong=wrong, per_head=True)


def test_logit_and_tuned_lens(hybrid):
    from interp.lens import TunedLens, logit_lens, tuned_lens

    clean = copy_pairs()[0]
    lens = logit_lens(hybrid, clean[0])
    assert lens.hooks[-1] == "blocks.2.hook_resid_post" and lens.top_id.shape == (len(lens.hooks), clean.shape[1])
    np.testing.assert_array_equal(lens.top_id[-1], hybrid(clean[:1])[0].argmax(-1).numpy())
    untrained = tuned_lens(hybrid, clean[0], lens=TunedLens.for_model(hybrid))
    np.testing.assert_array_equal(untrained.top_prob, lens.top_prob)


# ---------------------------------------------------------------------------------------------------------------
# interp.probes
# ---------------------------------------------------------------------------------------------------------------
def test_probe_reads_the_next_copied_token(hybrid):
    """At copy positions the residual stream after the attention layer holds the token to copy (a linear probe
    reads it far above chance 1/16), which the token itself does not tell."""
    from interp.probes import LogisticProbe, accuracy, collect_rows

    batch = sample_copy_batch(48, np.random.default_rng(3), n_range=8)
    nxt = torch.cat([batch.tokens[:, 1:], torch.full_like(batch.tokens[:, :1], -1)], 1)
    hook = "blocks.1.hook_resid_post"
    rows = collect_rows(hybrid, batch.tokens, hook=hook, keep=batch.loss_mask)
    X, y = rows.acts[hook], rows.gather(nxt)
    train = rows.seq < 36
    probe = LogisticProbe(C=1.0).fit(X[train], y[train])
    acc = accuracy(y[~train], probe.predict(X[~train]))
    assert acc > 0.8, acc
    tok_acc = float((rows.tokens[~train] == y[~train]).float().mean())
    assert tok_acc < 0.3


# ---------------------------------------------------------------------------------------------------------------
# interp.sae: trained on an SSM layer's and the attention layer's output, spliced
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hook", ["blocks.0.hook_mixer_out", "blocks.1.hook_attn_out"])
def test_sae_trains_and_splices(hybrid, hook):
    from interp.sae import splice_metrics, spliced
    from interp.sae.metrics import explained_variance

    batch = sample_copy_batch(32, np.random.default_rng(4), n_range=8)
    _, cache = hybrid.run_with_cache(batch.tokens, names_filter=[hook])
    acts = cache[hook][batch.attention_mask.bool()]  # [n, d_model]
    sae = train_topk_sae(acts, hook)
    ev = float(explained_variance(acts, sae.decode(sae.encode(acts))))
    assert ev > 0.7, ev
    m = splice_metrics(hybrid, batch.tokens[:8], sae=sae)
    assert m.explained_variance > 0.7 and m.kl_sae < m.kl_zero  # the reconstruction beats zero-ablation
    with spliced(hybrid, sae=sae):
        _, c2 = hybrid.run_with_cache(batch.tokens[:2], names_filter=[f"{hook}.sae.hook_sae_acts_post"])
    assert (c2[f"{hook}.sae.hook_sae_acts_post"] > 0).sum(-1).max() <= 8


# ---------------------------------------------------------------------------------------------------------------
# interp.steering: generation with hooks on the mixed recurrent + KV cache
# ---------------------------------------------------------------------------------------------------------------
def test_steering_changes_generation_and_decodes_exactly(hybrid):
    from interp.steering import Direction, Intervention
    from interp.steering.sources import token_direction

    prompt = copy_pairs(2)[0]
    plain = hybrid.generate(prompt, max_new_tokens=4, stop_at_eos=False, do_sample=False)
    target = int((prompt[0, 1] + 3) % COPY_N_SYMBOLS)
    iv = Intervention(Direction(token_direction(hybrid, target)), "blocks.1.hook_resid_post", "add", 40.0)
    steered = hybrid.generate(prompt, max_new_tokens=4, stop_at_eos=False, do_sample=False, fwd_hooks=iv.hooks(hybrid))
    assert not torch.equal(steered, plain) and torch.equal(steered[:, :prompt.shape[1]], prompt)
    # every step of the cached decoding equals the full forward with the same hooks
    full = hybrid.run_with_hooks(steered[:, :-1], fwd_hooks=iv.hooks(hybrid))
    L = prompt.shape[1]
    assert torch.equal(full[:, L - 1:].argmax(-1), steered[:, L:])


# ---------------------------------------------------------------------------------------------------------------
# interp.codebook: a codebook on each layer's own mixer output
# ---------------------------------------------------------------------------------------------------------------
def test_codebooks_on_mixer_outputs(hybrid, tiny):
    from interp.codebook import attach, collect_codes, detach, make_codebooks, mixer_output_hooks

    assert mixer_output_hooks(hybrid) == ["blocks.0.ssm.hook_out", "blocks.1.hook_attn_out", "blocks.2.ssm.hook_out"]
    assert mixer_output_hooks(tiny["nemotron_h"]) == ["blocks.0.ssm.hook_out", "blocks.2.ssm.hook_out",
                                                      "blocks.3.hook_attn_out", "blocks.5.ssm.hook_out"]
    zamba = tiny["zamba2"]  # shared-attention layers: the shared block's attention and the SSM mixer
    assert mixer_output_hooks(zamba)[:3] == ["blocks.0.ssm.hook_out", "blocks.0.hook_attn_out", "blocks.1.ssm.hook_out"]
    clean = copy_pairs(2)[0]
    before = hybrid(clean)
    sites = mixer_output_hooks(hybrid)
    books = make_codebooks(hybrid, hook=sites, n_codes=16, k=2)
    attach(hybrid, books)
    try:
        run = collect_codes(hybrid, clean)
        after = hybrid(clean)
    finally:
        detach(hybrid)
    assert set(run.ids) == set(sites) and all(v.shape[:2] == clean.shape for v in run.ids.values())
    assert torch.isfinite(after).all() and not torch.allclose(after, before)
    torch.testing.assert_close(hybrid(clean), before)  # detached: the model as it was


# ---------------------------------------------------------------------------------------------------------------
# the app's page logic
# ---------------------------------------------------------------------------------------------------------------
def test_patching_page(hybrid):
    from interp.tasks.patching import patching_pairs, patching_view

    pairs = patching_pairs(hybrid, task="typed", clean="<bos>da8440<sep>da", corrupted="<bos>da3440<sep>da",
                           answer="8", wrong="3")
    view = patching_view(hybrid, pairs, hook="state", metric="logit_diff", dla=True)
    assert view.sweep.layers == (0, 2) and view.sweep.clean > 5 > -5 > view.sweep.corrupted
    assert view.figure is not None and view.dla_figure is not None and "forward passes" in view.caption
    attn = patching_view(hybrid, pairs, hook="attn_out", metric="logit_diff", method="attribution")
    assert attn.sweep.layers == (1,)
    with pytest.raises(ValueError, match="one kind of component per sweep"):
        patching_view(hybrid, pairs, hook="resid_pre", metric="logit_diff", components=True)


def test_maps_page(hybrid, tiny):
    from interp.attention.methods import MethodNotApplicable, layer_kinds, methods_for
    from interp.attention.views import map_view, thumbnail_maps

    tokens = copy_pairs(1)[0]
    L = tokens.shape[1]
    assert layer_kinds(hybrid) == ["ssm", "transformer", "ssm"]
    per_layer = [methods_for(kind) for kind in layer_kinds(hybrid)]  # what applies, per layer kind
    assert "hidden" in per_layer[0] and "attention" in per_layer[1] and "hidden" not in per_layer[1]
    # the page's source menu: every method that applies to some layer
    assert {"hidden", "attention", "unified", "lrp"} <= set(methods_for(hybrid))
    # the page's layer menu: the layers each source maps
    from interp.attention.methods import layers_for

    assert layers_for(hybrid, "attention") == [1] and layers_for(hybrid, "hidden") == [0, 2]
    assert layers_for(hybrid, "lrp") == [0, 1, 2]
    attn = map_view(hybrid, tokens, method="attention", layer=1)
    _, cache = hybrid.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_pattern"])
    np.testing.assert_allclose(attn.values, cache["blocks.1.attn.hook_pattern"][0].abs().mean(0).numpy(), atol=1e-6)
    assert map_view(hybrid, tokens, method="hidden", layer=0).values.shape == (L, L)
    with pytest.raises(MethodNotApplicable):
        map_view(hybrid, tokens, method="attention", layer=0)
    assert map_view(hybrid, tokens, method="hidden", rollout=True).values.shape == (L, L)
    thumbs = thumbnail_maps(hybrid, tokens, method="hidden")  # the attention layer: its softmax pattern per head
    assert [k for k in thumbs.keys if k[0] == 1] == [(1, h) for h in range(hybrid.cfg.n_heads)]
    assert {k[0] for k in thumbs.keys} == {0, 1, 2} and thumbs.maps.shape[1:] == (L, L)
    nem = tiny["nemotron_h"]
    thumbs = thumbnail_maps(nem, torch.arange(8)[None], method="hidden")
    assert {k[0] for k in thumbs.keys} == {0, 2, 3, 5}  # no thumbnail for the MLP-only layers


@pytest.mark.parametrize("family", ["jamba", "nemotron_h", "zamba2"])
def test_tiny_families_downstream(tiny, family):
    """On Jamba (MoE), Nemotron-H (MLP-only layers) and Zamba2 (shared attention): steered generation from the
    mixed cache equals the full forward's argmax with the same hooks; the logit lens's last row is the model's
    argmax; codebooks on every mixer output run and detach cleanly; thumbnails cover the token-mixing layers."""
    from interp.attention.views import thumbnail_maps
    from interp.codebook import attach, detach, make_codebooks, mixer_output_hooks
    from interp.lens import logit_lens
    from interp.steering import Direction, Intervention

    model = tiny[family]
    n = model.cfg.n_layers
    prompt = random_pairs(model, L=7)[0]
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    iv = Intervention(Direction(v), f"blocks.{n // 2}.hook_resid_post", "add", 3.0)
    out = model.generate(prompt, max_new_tokens=5, stop_at_eos=False, do_sample=False, fwd_hooks=iv.hooks(model))
    full = model.run_with_hooks(out[:, :-1], fwd_hooks=iv.hooks(model))
    assert torch.equal(full[:, prompt.shape[1] - 1:].argmax(-1), out[:, prompt.shape[1]:])
    lens = logit_lens(model, prompt[0])
    np.testing.assert_array_equal(lens.top_id[-1], model(prompt[:1])[0].argmax(-1).numpy())
    before = model(prompt)
    attach(model, make_codebooks(model, hook=mixer_output_hooks(model), n_codes=8))
    try:
        assert torch.isfinite(model(prompt)).all()
    finally:
        detach(model)
    torch.testing.assert_close(model(prompt), before)
    thumbs = thumbnail_maps(model, prompt[:1], method="hidden")
    mixing = [i for i, t in enumerate(model.cfg.layer_types) if t != "mlp"]
    assert sorted({k[0] for k in thumbs.keys}) == mixing
