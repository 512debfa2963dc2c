"""Falcon-H1 (Hugging Face ``FalconH1ForCausalLM``, model_type "falcon_h1"): every layer is "parallel", a Mamba-2
mixer (our ``SSMMixer``) and softmax attention reading the same normed input, their outputs summed into the residual,
then a gated MLP (``interp.hooks.hybrid``); the µP multipliers are HybridConfig fields (embedding, lm head, attention
in / out, key, SSM in / out, MLP gate / down) and SSMConfig knobs (``in_proj_multipliers``: the mup vector on z, x,
B, C, dt; ``gate_norm``: the gated RMSNorm before / after the gate or none; ``out_proj_bias``). Parity with the
installed Hugging Face forward (in-memory and saved folder, padded batch), every hook fires, each multiplier matters,
the SSM branch's ``hook_y`` re-scans and hidden attention are exact, the attention branch's pattern equals HF's
weights, maps dispatch per method on a parallel layer, LRP conserves, and decoding with the mixed cache equals the
full forward. Two tiny random variants: 3 layers, GQA, mamba_d_ssm != expand · hidden_size, n_groups 2, head_dim
!= hidden_size / heads, the norm before the gate, multipliers far from 1, out_proj bias without in_proj bias; and
2 layers, the norm after the gate, tied embeddings, attention / MLP / in_proj biases, d_conv 3, eager attention,
HF's default multipliers but the mup vector. A third (mamba_rms_norm False: no norm) is checked for parity."""

from __future__ import annotations

import functools
from functools import partial

import pytest
import torch

import interp
from family_checks import (assert_continuation_equals_one_forward, assert_fused_attention_matches,
                           assert_greedy_equals_argmax, assert_hidden_attention_exact, assert_hooks_fire_with_shapes,
                           assert_in_memory_model_matches_hf, assert_interaction_map_per_layer_kind,
                           assert_left_padded_generation_matches, assert_logits_match_hf, assert_lrp_conserves,
                           assert_padded_batch_matches_hf, assert_pattern_equals_hf, assert_rescan_exact,
                           assert_rollout_mixes_layers, assert_start_stop_at_layer, max_logit_error, name_has,
                           norm_weight, perturb_parameters, random_tokens, saved_pair, ssm_param_or_bias)
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState

CHUNK = 8  # lengths 8, 16 and 24 are multiples of the scan's chunk size, 13 and 21 are not
TOL = 1e-4
V = 61
FALCON_H1_CONFIGS = {
    "fh1-before": dict(vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=12, mamba_d_ssm=48, mamba_n_heads=6, mamba_d_head=8,
                       mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_chunk_size=CHUNK,
                       mamba_rms_norm=True, mamba_norm_before_gate=True, projectors_bias=True, mamba_proj_bias=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                       embedding_multiplier=3.0, lm_head_multiplier=0.4, mlp_multipliers=[1.7, 0.6],
                       key_multiplier=0.5, attention_in_multiplier=1.8, attention_out_multiplier=0.4,
                       ssm_multipliers=[0.5, 1.6, 1.5, 0.6, 0.5], ssm_in_multiplier=1.6, ssm_out_multiplier=0.45),
    "fh1-after": dict(vocab_size=V, hidden_size=32, intermediate_size=36, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, mamba_d_ssm=None, mamba_expand=2, mamba_n_heads=8, mamba_d_head="auto",
                      mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=3, mamba_chunk_size=CHUNK,
                      mamba_rms_norm=True, mamba_norm_before_gate=False, projectors_bias=True, mamba_proj_bias=True,
                      attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                      ssm_multipliers=[1.3, 0.7, 2.0, 0.5, 1.4], attn_implementation="eager"),
}
_MODELS: dict[str, tuple] = {}


def _hf_config(kind: str, **changes):
    from transformers import FalconH1Config

    return FalconH1Config(**{**FALCON_H1_CONFIGS[kind], **changes})


def make_hf_falcon_h1(kind: str, seed: int = 0, **changes):
    """A random tiny FalconH1ForCausalLM with non-trivial D, dt bias, biases, norm weights and attention, and O(1)
    logits."""
    from transformers import FalconH1ForCausalLM

    torch.manual_seed(seed)
    model = FalconH1ForCausalLM(_hf_config(kind, **changes))
    return perturb_parameters(model, [
        (ssm_param_or_bias, 0, 0.5), (norm_weight, 1, 0.2),
        (name_has("self_attn"), 0, 0.25),  # peaked patterns, so that positions (the rotary embedding) matter
        (name_has("mamba.in_proj"), 0, 0.1),  # y of O(10): fp32 keeps the exactness checks' 1e-5
        (name_has("feed_forward", "mamba"), 0, 0.2), (name_has("embed_tokens", "lm_head"), 0, 1.0)])


@pytest.fixture(params=list(FALCON_H1_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF FalconH1ForCausalLM, ours loaded from its save_pretrained folder)."""
    return saved_pair(_MODELS, request.param, _hf, tmp_path_factory)


_hf = functools.cache(make_hf_falcon_h1)  # the HF model of variant ``kind``, built once
_tokens = partial(random_tokens, V)


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig) and c.hf_model_type == "falcon_h1"
    assert c.layer_types == ["parallel"] * h.num_hidden_layers
    assert c.ssm_layers == c.attention_layers == list(range(h.num_hidden_layers))
    d_head = getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads
    assert (c.n_heads, c.n_key_value_heads, c.d_head, c.rotary_dim, c.d_mlp, c.tie_embeddings, c.attn_bias,
            c.mlp_bias) == (h.num_attention_heads, h.num_key_value_heads, d_head, d_head, h.intermediate_size,
                            h.tie_word_embeddings, h.attention_bias, h.mlp_bias)
    assert (c.embedding_multiplier, c.logits_scale, c.key_multiplier, c.attention_in_multiplier,
            c.attention_out_multiplier, c.ssm_in_multiplier, c.ssm_out_multiplier) == (
        h.embedding_multiplier, h.lm_head_multiplier, h.key_multiplier, h.attention_in_multiplier,
        h.attention_out_multiplier, h.ssm_in_multiplier, h.ssm_out_multiplier)
    assert [c.mlp_gate_multiplier, c.mlp_down_multiplier] == list(h.mlp_multipliers)
    assert (c.residual_multiplier, c.attention_scale) == (1.0, None)
    d_inner = h.mamba_d_ssm or h.mamba_expand * h.hidden_size
    assert (c.family, c.d_inner, c.H, c.P, c.G, c.d_state, c.d_conv, c.chunk_size) == (
        "mamba2", d_inner, h.mamba_n_heads, h.mamba_d_head, h.mamba_n_groups, h.mamba_d_state, h.mamba_d_conv, CHUNK)
    assert list(c.ssm.in_proj_multipliers) == list(h.ssm_multipliers)
    assert c.ssm.gate_norm == ("before" if h.mamba_norm_before_gate else "after")
    assert (c.ssm.proj_bias, c.ssm.out_proj_bias) == (h.mamba_proj_bias, h.projectors_bias)
    for block in ours.blocks:
        assert block.kind == "parallel" and hasattr(block, "ssm") and hasattr(block, "attn") and hasattr(block, "mlp")
        assert (block.ssm.in_proj.bias is not None, block.ssm.out_proj.bias is not None) == (
            h.mamba_proj_bias, h.projectors_bias)


def test_kv_and_ssm_slots_count_parallel_layers():
    """A parallel layer takes an SSM slot and a KV slot of the decoding state; layers after it count it in both."""
    c = HybridConfig.from_hf(_hf_config("fh1-before"))
    mixed = HybridConfig(**{**c.__dict__, "layer_types": ["ssm", "parallel", "attention"]})
    blocks = HookedHybrid(mixed).blocks
    assert [(b.kind, b.slot, b.kv_slot) for b in blocks] == [("ssm", 0, 0), ("parallel", 1, 0), ("attention", 1, 1)]


@pytest.mark.parametrize("field, value, message", [
    ("hidden_act", "gelu", "hidden_act 'gelu' is not supported"),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
     "rope_parameters rope_type 'linear' is not supported"),
    ("ssm_multipliers", [1.0, 1.0, 1.0, 1.0], "ssm_multipliers must hold 5 values"),
    ("mlp_multipliers", [1.0, 1.0, 1.0], "mlp_multipliers must hold 2 values"),
])
def test_unsupported_fields_refused_naming_them(field, value, message):
    cfg = _hf_config("fh1-before")
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        HybridConfig.from_hf(cfg)


def test_mixer_knobs_checked_and_default_off():
    """The SSMConfig knobs are no-ops at their defaults, Mamba-2 only, and a Mamba / Bamba checkpoint cannot hold
    them (saving refuses)."""
    from interp.hooks import SSMConfig
    from interp.hooks.loading import to_hf_config

    plain = SSMConfig(family="mamba2", d_model=32, head_dim=16)
    assert (plain.in_proj_multipliers, plain.gate_norm, plain.out_proj_bias) == (None, "after", None)
    with pytest.raises(ValueError, match="gate_norm 'none' needs family 'mamba2'"):
        SSMConfig(family="mamba1", gate_norm="none")
    with pytest.raises(ValueError, match="in_proj_multipliers"):
        SSMConfig(family="mamba2", d_model=32, head_dim=16, in_proj_multipliers=(1.0, 2.0))
    with pytest.raises(ValueError, match="cannot save this mixer"):
        to_hf_config(SSMConfig(family="mamba2", d_model=32, head_dim=16, gate_norm="before"))
    c = HybridConfig.from_hf(_hf_config("fh1-before"))
    with pytest.raises(ValueError, match="cannot save this hybrid as a Bamba checkpoint"):
        HookedHybrid(HybridConfig(**{**c.__dict__, "hf_model_type": "bamba"})).save_pretrained("/nonexistent")
    hc = HybridConfig(ssm=plain, layer_types=["ssm"], n_layers=1, d_model=32)
    assert (hc.attention_in_multiplier, hc.attention_out_multiplier, hc.key_multiplier, hc.ssm_in_multiplier,
            hc.ssm_out_multiplier, hc.mlp_gate_multiplier, hc.mlp_down_multiplier) == (1.0,) * 7


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 24])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    # min_scale: the comparison is not between near-zero logits
    assert_logits_match_hf(hf, ours, _tokens(L, seed=L), tol=TOL, min_scale=0.5)


def test_in_memory_model_equals_huggingface(pair):
    assert_in_memory_model_matches_hf(pair[0], _tokens(21, seed=3), kind=HookedHybrid, tol=TOL)


@pytest.mark.parametrize("L", [8, 13])
def test_no_gate_norm_variant_matches_huggingface(tmp_path, L):
    """mamba_rms_norm False (HF's default): y · SiLU(z), no norm weight; saved and reloaded."""
    hf = make_hf_falcon_h1("fh1-before", mamba_rms_norm=False)
    assert not any(".mamba.norm." in k for k in hf.state_dict())
    hf.save_pretrained(tmp_path)
    ours = interp.load(str(tmp_path))
    assert ours.cfg.ssm.gate_norm == "none" and not hasattr(ours.blocks[0].ssm, "norm")
    assert max_logit_error(ours, hf, _tokens(L, seed=L)) <= TOL
    assert_lrp_conserves(ours, _tokens(16, b=1, seed=7))


def test_padded_batch_matches_huggingface(pair):
    hf, ours = pair
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3, seed=1), tol=TOL)


def test_each_multiplier_matters():
    """The parity test can fail: putting any one multiplier (or one segment of the mup vector, or the norm's place
    before the gate) back to its no-op moves the logits more than ten times the parity tolerance from HF's."""
    hf = _hf("fh1-before")
    tokens = _tokens(13, seed=2)

    def block_mult(index):
        def change(m):
            for block in m.blocks:
                mults = list(block.mults)
                mults[index] = 1.0
                block.mults = tuple(mults)
        change.__name__ = ("ssm_in", "ssm_out", "attention_in", "attention_out")[index]
        return change

    def mup(index):
        def change(m):
            mults = list(m.cfg.ssm.in_proj_multipliers)
            mults[index] = 1.0
            m.cfg.ssm.in_proj_multipliers = tuple(mults)  # the mixers share this SSMConfig
        change.__name__ = f"mup_{('z', 'x', 'B', 'C', 'dt')[index]}"
        return change

    def mlp(attr):
        def change(m):
            for block in m.blocks:
                setattr(block.mlp, attr, 1.0)
        change.__name__ = attr
        return change

    def drop_embedding(m):
        m.embed.scale = 1.0

    def drop_logits(m):
        m.unembed.scale = 1.0

    def drop_key(m):
        m.cfg.key_multiplier = 1.0

    def norm_after_gate(m):
        for block in m.blocks:
            block.ssm.norm.before_gate = False

    assert max_logit_error(interp.load(hf), hf, tokens) <= TOL
    changes = [drop_embedding, drop_logits, drop_key, norm_after_gate, *map(block_mult, range(4)),
               *map(mup, range(5)), mlp("gate_multiplier"), mlp("down_multiplier")]
    for change in changes:
        mem = interp.load(hf)
        change(mem)
        assert max_logit_error(mem, hf, tokens) > 10 * TOL, change.__name__


def test_rotary_embedding_matters():
    hf = _hf("fh1-before")
    mem = interp.load(hf)
    for block in mem.blocks:
        block.attn.inv_freq.zero_()
    assert max_logit_error(mem, hf, _tokens(13, seed=2)) > 1e-3


# --- hooks ---------------------------------------------------------------------------------------
def test_run_with_cache_returns_every_hook(pair):
    _, ours = pair
    cache = assert_hooks_fire_with_shapes(ours, _tokens(13, seed=4))
    c = ours.cfg
    ssm_names = {n.split(".ssm.")[1] for n in ours.hook_dict if n.startswith("blocks.0.ssm.")}
    assert ssm_names == {f"hook_{h}" for h in ("in", "x", "z", "conv", "u", "dt", "B", "C", "state", "y", "gated",
                                               "out")}  # exactly a pure SSM's mixer hooks
    for i in range(c.n_layers):
        assert cache[f"blocks.{i}.mlp.hook_post"].shape == (2, 13, c.d_mlp)
        for name in ("hook_mixer_out", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert cache[f"blocks.{i}.{name}"].shape == (2, 13, c.d_model)


def test_residual_stream_adds_up_with_the_multipliers(pair):
    """resid_mid = resid_pre + hook_mixer_out + hook_attn_out; hook_mixer_out = ssm_out_multiplier · ssm.hook_out,
    ssm.hook_in = ssm_in_multiplier · ln1's output; resid_post = resid_mid + hook_mlp_out; hook_embed = W_E[tokens]
    and logits = ln_final(resid) @ W_U (the embedding / lm head multipliers folded in)."""
    _, ours = pair
    tokens = _tokens(13, seed=5)
    logits, cache = ours.run_with_cache(tokens)
    c = ours.cfg
    for i, block in enumerate(ours.blocks):
        g = lambda n: cache[f"blocks.{i}.{n}"]  # noqa: E731
        torch.testing.assert_close(g("hook_resid_mid"), g("hook_resid_pre") + g("hook_mixer_out") + g("hook_attn_out"))
        torch.testing.assert_close(g("hook_resid_post"), g("hook_resid_mid") + g("hook_mlp_out"))
        torch.testing.assert_close(g("hook_mixer_out"), c.ssm_out_multiplier * g("ssm.hook_out"))
        torch.testing.assert_close(g("ssm.hook_in"), c.ssm_in_multiplier * block.ln1(g("hook_resid_pre")))
    torch.testing.assert_close(cache["hook_embed"], ours.W_E[tokens])
    final = ours.ln_final(cache[f"blocks.{c.n_layers - 1}.hook_resid_post"])
    torch.testing.assert_close(logits, final @ ours.W_U, atol=1e-5, rtol=1e-5)


def test_mixer_and_mlp_equal_huggingface(pair):
    """Given HF's own inputs, our Mamba branch (in-multiplier, mup vector, gate norm), attention keys (key
    multiplier) and MLP (gate / down multipliers) equal HF's ``mamba`` (times ssm_out_multiplier), ``k_proj`` and
    ``feed_forward``."""
    hf, ours = pair
    tokens = _tokens(13, seed=6)
    seen: dict = {}
    handles = []
    for i, layer in enumerate(hf.model.layers):
        for name in ("mamba", "feed_forward"):
            handles.append(getattr(layer, name).register_forward_hook(
                lambda m, a, kw, o, key=(name, i): seen.__setitem__(key, (kw.get("hidden_states", a[0] if a else
                                                                                  None), o)), with_kwargs=True))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for h in handles:
            h.remove()
    c = ours.cfg
    for i, block in enumerate(ours.blocks):
        x_hf, out_hf = seen[("mamba", i)]
        with torch.no_grad():
            torch.testing.assert_close(block.ssm(c.ssm_in_multiplier * x_hf), out_hf, atol=1e-5, rtol=1e-4)
            x_hf, out_hf = seen[("feed_forward", i)]
            torch.testing.assert_close(block.mlp(x_hf), out_hf, atol=1e-5, rtol=1e-4)


def test_attention_pattern_equals_huggingface_weights(pair):
    hf, ours = pair
    assert_pattern_equals_hf(hf, ours, _tokens(13, seed=9), layers=ours.cfg.attention_layers)


def test_start_and_stop_at_layer(pair):
    assert_start_stop_at_layer(pair[1], _tokens(13, seed=10))


# --- the SSM branch: exact re-scan and hidden attention; maps on a parallel layer -----------------
@pytest.mark.parametrize("L", [16, 21])
def test_y_reconstructs_by_sequential_rescan(pair, L):
    _, ours = pair
    assert_rescan_exact(ours, _tokens(L, b=2, seed=11), layers=ours.cfg.ssm_layers)


@pytest.mark.parametrize("L", [16, 21])
def test_hidden_attention_reconstructs_hook_y(pair, L):
    _, ours = pair
    assert_hidden_attention_exact(ours, _tokens(L, b=2, seed=12), layers=ours.cfg.ssm_layers)


def test_interaction_map_on_a_parallel_layer(pair):
    """A parallel layer has both maps: method="auto" is hidden attention (its SSM's), method="attention" the
    head-mean softmax pattern of its attention."""
    _, ours = pair
    assert ours.cfg.layer_types == ["parallel"] * ours.cfg.n_layers  # the check's parallel case: maps that differ
    assert_interaction_map_per_layer_kind(ours, _tokens(13, b=1, seed=16))


def test_rollout_sums_both_maps_of_a_parallel_layer(pair):
    """Each parallel layer's rollout step is its head-mean pattern + mean |α| of its SSM (family_checks)."""
    assert_rollout_mixes_layers(pair[1], _tokens(12, b=1, seed=17))


def test_lrp_conserves_with_biases_zeroed(pair):
    """MambaLRP on the SSM branch (the gate rule with the norm before / after the gate), CP-LRP on the attention
    branch, the gated rule on the MLP, in the same block."""
    assert_lrp_conserves(pair[1], _tokens(16, b=1, seed=7))


# --- decoding with the mixed cache ---------------------------------------------------------------
def test_greedy_generation_equals_full_forward_argmax(pair):
    assert_greedy_equals_argmax(pair[1], _tokens(7, b=1, seed=13))


@pytest.mark.parametrize("cut", [5, 9])
def test_continuing_from_a_state_equals_one_forward(pair, cut):
    _, ours = pair
    state = assert_continuation_equals_one_forward(ours, _tokens(14, b=2, seed=14), cut=cut, state=HybridState())
    assert len(state.ssm) == len(state.keys) == ours.cfg.n_layers  # each parallel layer has both caches


def test_left_padded_generation_equals_masked_full_forward_argmax(pair):
    assert_left_padded_generation_matches(pair[1], _tokens(9, b=2, seed=15), pad=3, new=12)


def test_fused_attention_equals_the_pattern_path(pair):
    """Long forwards nobody observes the pattern of run PyTorch's fused attention: same logits (padding too)."""
    assert_fused_attention_matches(pair[1], _tokens(70, b=2, seed=21))
