"""Every downstream analysis on the recurrent families of issue #18, with no family-specific code: tiny random
RWKV-4 (HookedRWKV), RecurrentGemma (RG-LRU + local attention), xLSTM (mLSTM), Kimi-Linear (KDA + MLA attention +
MoE), OLMo-Hybrid (Gated DeltaNet + attention) and Qwen3-Next (Gated DeltaNet in its layout, gated attention, MoE)
models, the checks of tests/test_hybrid_downstream.py (which makes them on the Mamba hybrids) parametrised over
these families: activation caching round trip, patching sweeps (residual stream, recurrent state, attention output)
equal hand loops of ``run_with_hooks`` and the decoding-state cells, attribution patching equals its gradient by
hand, path patching of adjacent sites is activation patching, component sweeps per layer kind, DLA is exact, the
logit / tuned lens, a probe, an SAE trained and spliced, steered generation from the recurrent state equals the
full forward, codebooks on each layer's own mixer output, and the app's patching and maps pages."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import interp
from interp.hooks.config import MAMBA1_GROUP_SIZE
from interp.patching import LogitDiff, attribution_sweep, component_sweep, patch_sweep, path_patch
from test_hybrid_downstream import attribution_by_hand, hand_cell, random_pairs, train_topk_sae
from test_kimi_linear import make_hf_kimi_linear
from test_olmo_hybrid import make_hf_olmo_hybrid
from test_qwen3_next import make_hf_qwen3_next
from test_recurrent_gemma import make_hf_recurrent_gemma
from test_rwkv import make_hf_rwkv
from test_xlstm import make_hf_xlstm

CHUNK = 4  # the chunked families' chunk size here: the prompts of 9 tokens end inside a chunk
FAMILIES = {  # family: (make the HF model, its kind in the family's test file)
    "rwkv": (make_hf_rwkv, "rescaled"),
    "recurrent_gemma": (make_hf_recurrent_gemma, "mqa"),
    "xlstm": (make_hf_xlstm, "single"),
    "kimi_linear": (make_hf_kimi_linear, "lora-moe"),
    "olmo_hybrid": (make_hf_olmo_hybrid, "gqa-rope"),
    "qwen3_next": (make_hf_qwen3_next, "gqa-moe"),
}


@functools.cache
def tiny(family: str):
    """The family's tiny random model, loaded in memory; chunked mixers at chunk size CHUNK."""
    make, kind = FAMILIES[family]
    model = interp.load(make(kind))
    for sub in ("delta", "kda"):
        if getattr(model.cfg, sub, None) is not None:
            getattr(model.cfg, sub).chunk_size = CHUNK
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny forwards run fastest on one thread


@pytest.fixture(params=list(FAMILIES))
def model(request):
    return tiny(request.param)


def layer_types(model) -> list[str]:
    """The kind of each layer (``cfg.layer_types``; RWKV's blocks are all recurrent)."""
    return list(getattr(model.cfg, "layer_types", None) or ["rwkv"] * model.cfg.n_layers)


def recurrent_layers(model) -> list[int]:
    return [i for i in range(model.cfg.n_layers) if f"blocks.{i}.ssm.hook_state" in model.hook_dict]


def attention_layers(model) -> list[int]:
    return [i for i in range(model.cfg.n_layers) if f"blocks.{i}.hook_attn_out" in model.hook_dict]


# ---------------------------------------------------------------------------------------------------------------
# interp.activations: cache_activations + ActivationStore
# ---------------------------------------------------------------------------------------------------------------
def test_activation_cache_round_trip(model, tmp_path):
    """The stored rows of the residual stream and of a recurrent mixer's hook_y equal run_with_cache's."""
    from interp.activations import ActivationStore, cache_activations

    layer = recurrent_layers(model)[0]
    hooks = [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", f"blocks.{layer}.ssm.hook_y"]
    batches = [random_pairs(model, b=3, L=10, seed=s)[0] for s in range(3)]
    manifest = cache_activations(model, batches, hook=hooks, out=tmp_path, shard_tokens=16, drop_bos=False,
                                 drop_pad=False, progress=False)
    store = ActivationStore(tmp_path)
    assert manifest.complete and len(store) == 3 * 3 * 10 and len(manifest.shards) > 1
    meta = store.row_meta()
    caches = [model.run_with_cache(t, names_filter=hooks)[1] for t in batches]
    for hook in hooks:
        ref = torch.cat([c[hook].reshape(*c[hook].shape[:2], -1) for c in caches])
        torch.testing.assert_close(store.all(hook), ref[meta["seq_idx"], meta["pos"]], atol=0, rtol=0, msg=hook)


# ---------------------------------------------------------------------------------------------------------------
# interp.patching
# ---------------------------------------------------------------------------------------------------------------
def test_patch_sweeps_equal_hand_loops(model):
    """Sweeps of the residual stream, the recurrent state and the attention output (on the layers that have each
    site): nothing moves before the corrupted position; a cell equals one run_with_hooks; cells run from the
    decoding state (reuse_prefix=True, the recurrent state + keys / values after the prefix) equal whole forwards."""
    clean, corrupted, answer, wrong = random_pairs(model)
    metric = LogitDiff(answer, wrong)
    clean_logits = model(clean)
    sites = {"resid_pre": list(range(model.cfg.n_layers)), "state": recurrent_layers(model),
             "attn_out": attention_layers(model)}
    for site, layers in sites.items():
        if not layers:
            continue
        whole = patch_sweep(model, clean, corrupted=corrupted, metric=metric, hook=site)
        assert list(whole.layers) == layers
        assert (whole.raw[:, :2] - whole.corrupted).abs().max() < 1e-4  # nothing differs before position 2
        assert (whole.raw[:, 2:] - whole.corrupted).abs().max() > 1e-3  # the patch moves the metric
        fast = patch_sweep(model, clean, corrupted=corrupted, metric=metric, hook=site, reuse_prefix=True,
                           positions=[2, 5])
        torch.testing.assert_close(fast.raw, whole.raw[:, [2, 5]], atol=1e-4, rtol=1e-4)
        layer, p = layers[-1], 5
        fwd = {"state_positions": [p]} if site == "state" else {}
        want = hand_cell(model, corrupted, clean, whole.hook.format(layer=layer), p, metric, clean_logits, **fwd)
        assert abs(float(whole.raw[whole.layers.index(layer), p]) - float(want)) < 1e-4, (site, layer)


def test_attribution_sweep_is_the_gradient(model):
    """Attribution patching of a recurrent mixer's output: m(corrupted) + (clean − corrupted) activation · the
    metric's gradient there, checked against the gradient by hand."""
    clean, corrupted, answer, wrong = random_pairs(model)
    metric = LogitDiff(answer, wrong)
    layer = recurrent_layers(model)[-1]
    att = attribution_sweep(model, clean, corrupted=corrupted, metric=metric, hook="mixer_out", layers=[layer])
    want = attribution_by_hand(model, clean, corrupted, metric, att.hooks[0])
    torch.testing.assert_close(att.per_prompt[0], want, atol=1e-4, rtol=1e-4)
    assert att.values[0, :2].abs().max() < 1e-6  # nothing differs before position 2


def test_path_patch_adjacent_and_component_sweeps(model):
    """Path patching from a recurrent mixer's output to the next residual site is activation patching of that
    output; component sweeps patch the recurrent mixer's heads (channel groups on RG-LRU and RWKV, which have
    none) on recurrent layers and attention heads on attention layers, one kind per sweep: a cell is one
    run_with_hooks with that slice of ``ssm.hook_gated`` patched at every position."""
    clean, corrupted, answer, wrong = random_pairs(model)
    metric = LogitDiff(answer, wrong)
    kw = dict(corrupted=corrupted, metric=metric)
    rec = recurrent_layers(model)
    sweep = patch_sweep(model, clean, hook="mixer_out", layers=[rec[0]], positions=[2, 5], **kw)
    for p in (2, 5):
        path = path_patch(model, clean, sender=sweep.hooks[0], receiver=f"blocks.{rec[0]}.hook_resid_mid",
                          positions=[p], **kw)
        assert abs(path.value - sweep.cell(rec[0], p)) < 1e-4, (p, path.value, sweep.cell(rec[0], p))
    attn = attention_layers(model)
    if attn:
        heads = component_sweep(model, clean, layers=attn, hook="attn.hook_z", **kw)
        assert heads.hook == "blocks.{layer}.attn.hook_z" and heads.values.shape == (len(attn), model.cfg.n_heads)
        with pytest.raises(ValueError, match="one kind of component per sweep"):
            component_sweep(model, clean, layers=[rec[0], attn[0]], **kw)
    comps = component_sweep(model, clean, layers=rec, **kw)
    name = "blocks.{layer}.ssm.hook_gated".format(layer=rec[-1])
    _, cache = model.run_with_cache(clean, names_filter=[name])
    width = cache[name].shape[-1]
    n = len(comps.labels[0])
    assert comps.hook == "blocks.{layer}.ssm.hook_gated" and comps.values.shape == (len(rec), n) and n > 1
    grouped = layer_types(model)[rec[0]] in ("rwkv", "rglru")  # no heads: groups of MAMBA1_GROUP_SIZE channels
    size = MAMBA1_GROUP_SIZE if grouped else width // n  # consecutive channel ranges covering hook_gated
    assert n == -(-width // size)
    k = n - 1
    assert comps.labels[-1][k] == f"L{rec[-1]}{'G' if grouped else 'H'}{k}"

    def patch(act, hook):
        act = act.clone()
        act[..., k * size:(k + 1) * size] = cache[name][..., k * size:(k + 1) * size]
        return act

    with torch.no_grad():
        want = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)]), model(clean)).mean()
    assert abs(float(comps.raw[-1, k]) - float(want)) < 1e-4


# ---------------------------------------------------------------------------------------------------------------
# interp.lens
# ---------------------------------------------------------------------------------------------------------------
def test_dla_exact_and_lenses(model):
    """DLA: one row per sublayer output (RWKV's halved as often as its rescaled stream is after them), summing
    exactly to the logit difference (before the soft cap on RecurrentGemma and xLSTM: the linear part); per head
    refused with its message; the logit lens's last row is the model's argmax; an untrained tuned lens is the logit
    lens."""
    from interp.lens import TunedLens, direct_logit_attribution, logit_lens, tuned_lens

    toks = random_pairs(model)[0]
    d = direct_logit_attribution(model, toks, answer=[3, 4], wrong=[5, 6])
    n = model.cfg.n_layers
    assert d.labels[:2] == ["embed", "0_mixer_out" if 0 in recurrent_layers(model) else "0_attn_out"]
    assert len(d.labels) == 1 + 2 * n  # every block: its mixer's output, then its MLP's / MoE's
    torch.testing.assert_close(d.values.sum(0) + d.bias, d.target, atol=1e-4, rtol=1e-4)
    capped = "unembed.hook_pre_cap" in model.hook_dict
    assert capped == (getattr(model.cfg, "logits_soft_cap", None) is not None)
    logits, cache = model.run_with_cache(toks, names_filter=["unembed.hook_pre_cap"] if capped else [])
    linear = cache["unembed.hook_pre_cap"] if capped else logits
    torch.testing.assert_close(d.target, (linear[:, -1, [3, 4]].diagonal() - linear[:, -1, [5, 6]].diagonal()))
    with pytest.raises(NotImplementedError, match=r"per-head / per-channel decomposition of .*decompose_resid"):
        direct_logit_attribution(model, toks, answer=3, wrong=5, per_head=True)
    lens = logit_lens(model, toks[0])
    assert lens.hooks[-1] == f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    np.testing.assert_array_equal(lens.top_id[-1], model(toks[:1])[0].argmax(-1).numpy())
    untrained = tuned_lens(model, toks[0], lens=TunedLens.for_model(model))
    np.testing.assert_allclose(untrained.top_prob, lens.top_prob, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# interp.probes
# ---------------------------------------------------------------------------------------------------------------
def test_probe_reads_the_token(model):
    """collect_rows gathers the kept rows of the first recurrent layer's residual stream (equal to
    run_with_cache's), on which a linear probe reads the current token far above chance (1/8)."""
    from interp.probes import LogisticProbe, accuracy, collect_rows

    tokens = torch.randint(3, 11, (48, 10), generator=torch.Generator().manual_seed(1))
    hook = f"blocks.{recurrent_layers(model)[0]}.hook_resid_post"
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False
    rows = collect_rows(model, tokens, hook=hook, keep=keep)
    X, y = rows.acts[hook], rows.gather(tokens)
    _, cache = model.run_with_cache(tokens[:4], names_filter=[hook])
    first = rows.seq < 4
    torch.testing.assert_close(X[first], cache[hook][:, 1:].reshape(-1, model.cfg.d_model).to(X.dtype),
                               atol=1e-4, rtol=1e-4)  # a batch of 4, not 48: the chunked kernels' rounding
    train = rows.seq < 36
    probe = LogisticProbe(C=1.0).fit(X[train], y[train])
    acc = accuracy(y[~train], probe.predict(X[~train]))
    assert acc > 0.9, acc


# ---------------------------------------------------------------------------------------------------------------
# interp.sae
# ---------------------------------------------------------------------------------------------------------------
def test_sae_trains_and_splices(model):
    from interp.sae import splice_metrics, spliced
    from interp.sae.metrics import explained_variance

    hook = f"blocks.{recurrent_layers(model)[0]}.hook_mixer_out"
    tokens = random_pairs(model, b=16, L=12, seed=3)[0]
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].flatten(0, 1)  # [n, d_model]
    sae = train_topk_sae(acts, hook, d_sae=64, batch=64, steps=60)
    ev = float(explained_variance(acts, sae.decode(sae.encode(acts))))
    assert ev > 0.6, ev
    m = splice_metrics(model, tokens[:4], sae=sae)
    assert m.kl_sae < m.kl_zero  # the reconstruction beats zero-ablation
    with spliced(model, sae=sae):
        _, c2 = model.run_with_cache(tokens[:2], names_filter=[f"{hook}.sae.hook_sae_acts_post"])
    assert (c2[f"{hook}.sae.hook_sae_acts_post"] > 0).sum(-1).max() <= 8


# ---------------------------------------------------------------------------------------------------------------
# generation with the recurrent state, steering
# ---------------------------------------------------------------------------------------------------------------
def test_steered_generation_from_the_recurrent_state(model):
    """Steered greedy generation (the recurrent state + KV cache carried between steps) equals the full forward's
    argmax with the same hooks and differs from plain generation; a decoding state after p tokens, continued on
    the rest, gives the full forward's logits."""
    from interp.steering import Direction, Intervention

    prompt = random_pairs(model, L=7)[0]
    plain = model.generate(prompt, max_new_tokens=5, stop_at_eos=False, do_sample=False)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    iv = Intervention(Direction(v), f"blocks.{model.cfg.n_layers // 2}.hook_resid_post", "add", 8.0)
    out = model.generate(prompt, max_new_tokens=5, stop_at_eos=False, do_sample=False, fwd_hooks=iv.hooks(model))
    assert not torch.equal(out, plain) and torch.equal(out[:, :prompt.shape[1]], prompt)
    full = model.run_with_hooks(out[:, :-1], fwd_hooks=iv.hooks(model))
    assert torch.equal(full[:, prompt.shape[1] - 1:].argmax(-1), out[:, prompt.shape[1]:])
    tokens = random_pairs(model, L=11)[0]
    whole = model(tokens)
    states = model.decoding_states(tokens, [3, 6])
    for p in (3, 6):
        rest = model(tokens[:, p:], state=states[p].copy())
        torch.testing.assert_close(rest, whole[:, p:], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# interp.codebook
# ---------------------------------------------------------------------------------------------------------------
def test_codebooks_on_mixer_outputs(model):
    """mixer_output_hooks gives each layer its own mixer's output (ssm.hook_out on recurrent layers, hook_attn_out
    on attention layers); codebooks there run, give codes per position and detach to the model as it was."""
    from interp.codebook import attach, collect_codes, detach, make_codebooks, mixer_output_hooks

    sites = mixer_output_hooks(model)
    rec, attn = set(recurrent_layers(model)), set(attention_layers(model))
    assert sites == [f"blocks.{i}.ssm.hook_out" if i in rec else f"blocks.{i}.hook_attn_out"
                     for i in range(model.cfg.n_layers) if i in rec | attn]
    prompt = random_pairs(model, L=7)[0]
    before = model(prompt)
    attach(model, make_codebooks(model, hook=sites, n_codes=8, k=2))
    try:
        run = collect_codes(model, prompt)
        after = model(prompt)
    finally:
        detach(model)
    assert set(run.ids) == set(sites) and all(v.shape[:2] == prompt.shape for v in run.ids.values())
    assert torch.isfinite(after).all() and not torch.allclose(after, before)
    torch.testing.assert_close(model(prompt), before)


# ---------------------------------------------------------------------------------------------------------------
# the app's page logic
# ---------------------------------------------------------------------------------------------------------------
def test_patching_page(model):
    from interp.tasks.patching import PatchingPairs, patching_view

    clean, corrupted, answer, wrong = random_pairs(model)
    pairs = PatchingPairs(clean, corrupted, answer, wrong, [str(t) for t in clean[0].tolist()], "random")
    view = patching_view(model, pairs, hook="state", metric="logit_diff", dla=True)
    assert list(view.sweep.layers) == recurrent_layers(model)
    assert view.figure is not None and view.dla_figure is not None and "forward passes" in view.caption
    att = patching_view(model, pairs, hook="mixer_out", metric="logit_diff", method="attribution")
    assert att.sweep.values.shape[1] == clean.shape[1]


def test_maps_page(model):
    from interp.attention.methods import default_method, layer_kinds, layers_for, methods_for
    from interp.attention.views import map_view, thumbnail_maps

    tokens = random_pairs(model, b=1)[0]
    L = tokens.shape[1]
    kinds = layer_kinds(model)
    assert len(kinds) == model.cfg.n_layers
    sources = methods_for(model)
    assert "lrp" in sources
    for method in sources:
        layers = layers_for(model, method)
        if layers:
            assert map_view(model, tokens, method=method, layer=layers[-1]).values.shape == (L, L), method
    thumbs = thumbnail_maps(model, tokens, method=default_method(model, recurrent_layers(model)[0]))
    assert {k[0] for k in thumbs.keys} == set(range(model.cfg.n_layers)) and thumbs.maps.shape[1:] == (L, L)
