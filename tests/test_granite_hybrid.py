"""Granite-4.0-H (Hugging Face ``GraniteMoeHybridForCausalLM``, model_type "granitemoehybrid"): Mamba-2 mixers (our
``SSMMixer``, Bamba's) interleaved with softmax attention, each followed by a shared gated MLP and, with
``num_local_experts`` > 0, a mixture of experts added to it (``interp.hooks.hybrid``); Granite's scalar multipliers
(embedding, residual, attention scale, logits) are the generic HybridConfig fields. Parity with the installed Hugging
Face forward (in-memory and saved folder, padded batch), every hook fires, each multiplier matters, the router /
experts / shared MLP equal HF's, the SSM layers' ``hook_y`` re-scans and hidden attention are exact, and decoding
with the mixed cache equals the full forward. Two tiny random variants: [ssm, attention, ssm, ssm] with MoE (4
experts, top-2), GQA, rope, multipliers far from 1 and the checkpoints' legacy layer names; and [attention, ssm, ssm,
attention] dense (no experts), no positional embedding, tied embeddings, attention biases, n_groups 2, d_conv 3,
eager attention, HF's default multipliers (attention_multiplier 1, not d_head ** -0.5)."""

from __future__ import annotations

import functools
from functools import partial

import pytest
import torch

import interp
from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_hidden_attention_exact, assert_hooks_fire_with_shapes,
                           assert_in_memory_model_matches_hf, assert_interaction_map_per_layer_kind,
                           assert_left_padded_generation_matches, assert_logits_match_hf, assert_lrp_conserves,
                           assert_padded_batch_matches_hf, assert_pattern_equals_hf, assert_rescan_exact,
                           assert_residual_stream_adds_up, assert_rollout_mixes_layers, assert_start_stop_at_layer,
                           max_logit_error, name_has, norm_weight, perturb_parameters, random_tokens, saved_pair,
                           ssm_param_or_bias)
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState

CHUNK = 8  # lengths 8 and 24 are multiples of the scan's chunk size, 13 and 21 are not
TOL = 1e-4
V = 61
GRANITE_CONFIGS = {
    "granite-moe": dict(vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=24, shared_intermediate_size=40, num_local_experts=4,
                        num_experts_per_tok=2, layer_types=["mamba", "attention", "mamba", "mamba"],
                        mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=CHUNK,
                        position_embedding_type="rope", rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                        embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.9,
                        logits_scaling=6.0),
    "granite-dense": dict(vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, intermediate_size=24, shared_intermediate_size=36,
                          num_local_experts=0, layer_types=["full_attention", "linear_attention", "linear_attention",
                                                            "full_attention"],
                          mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=3,
                          mamba_chunk_size=CHUNK, tie_word_embeddings=True, attention_bias=True, mamba_proj_bias=True,
                          rms_norm_eps=1e-5, attn_implementation="eager"),
}
_MODELS: dict[str, tuple] = {}


def _hf_config(kind: str, **changes):
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(**{**GRANITE_CONFIGS[kind], **changes})


def make_hf_granite(kind: str, seed: int = 0):
    """A random tiny GraniteMoeHybridForCausalLM with non-trivial D, dt bias, conv bias, norm weights, attention,
    router, experts and shared MLP, and O(1) logits."""
    from transformers import GraniteMoeHybridForCausalLM

    torch.manual_seed(seed)
    model = GraniteMoeHybridForCausalLM(_hf_config(kind))
    scale = model.config.attention_multiplier
    return perturb_parameters(model, [
        (ssm_param_or_bias, 0, 0.5), (norm_weight, 1, 0.2),
        # peaked patterns, so that positions (the rotary embedding) matter; the dense variant's q·k is scaled by 1,
        # not d_head ** -0.5
        (name_has("self_attn"), 0, 0.4 if scale < 1 else 0.2),
        (name_has("router"), 0, 1.0),  # routing that differs from token to token
        (name_has("experts", "shared_mlp"), 0, 0.2), (name_has("embed_tokens", "lm_head"), 0, 1.0)])


@pytest.fixture(params=list(GRANITE_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF GraniteMoeHybridForCausalLM, ours loaded from its save_pretrained folder)."""
    return saved_pair(_MODELS, request.param, _hf, tmp_path_factory)


_hf = functools.cache(make_hf_granite)  # the HF model of variant ``kind``, built once
_tokens = partial(random_tokens, V)


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig) and c.hf_model_type == "granitemoehybrid"
    assert c.layer_types == ["ssm" if t == "linear_attention" else "attention" for t in h.layers_block_type]
    assert len(c.ssm_layers) >= 2 and len(c.attention_layers) >= 1
    d_head = h.hidden_size // h.num_attention_heads
    assert (c.n_heads, c.n_key_value_heads, c.d_head, c.d_mlp, c.tie_embeddings, c.attn_bias) == (
        h.num_attention_heads, h.num_key_value_heads, d_head, h.shared_intermediate_size, h.tie_word_embeddings,
        h.attention_bias)
    assert c.rotary_dim == (d_head if h.position_embedding_type == "rope" else 0)
    assert (c.embedding_multiplier, c.residual_multiplier, c.attention_scale) == (
        h.embedding_multiplier, h.residual_multiplier, h.attention_multiplier)
    assert c.logits_scale == pytest.approx(1 / h.logits_scaling)
    assert c.moe_layers == (list(range(h.num_hidden_layers)) if h.num_local_experts else [])
    assert (c.moe_normalize_topk, c.moe_shared_mlp, c.moe_d_mlp) == (True, True, h.intermediate_size)
    assert (c.family, c.H, c.P, c.G, c.d_state, c.d_conv, c.chunk_size) == (
        "mamba2", h.mamba_n_heads, h.mamba_d_head, h.mamba_n_groups, h.mamba_d_state, h.mamba_d_conv, CHUNK)
    for i, kind in enumerate(c.layer_types):
        block = ours.blocks[i]
        assert hasattr(block, "ssm" if kind == "ssm" else "attn")
        assert not hasattr(block, "attn" if kind == "ssm" else "ssm")
        assert hasattr(block, "mlp") and hasattr(block, "moe") == (i in c.moe_layers)


@pytest.mark.parametrize("field, value, message", [
    ("hidden_act", "gelu", "hidden_act 'gelu' is not supported"),
    ("position_embedding_type", "alibi", "position_embedding_type 'alibi' is not supported"),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
     "rope_parameters rope_type 'linear' is not supported"),
])
def test_unsupported_fields_refused_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        HybridConfig.from_hf(_hf_config("granite-moe", **{field: value}))


def test_unsupported_layer_type_refused():
    cfg = _hf_config("granite-moe")
    cfg.layer_types = ["linear_attention", "moe", "linear_attention", "full_attention"]
    with pytest.raises(ValueError, match=r"layer_types entries \['moe'\] are not supported"):
        HybridConfig.from_hf(cfg)


def test_legacy_layer_names_read_the_same():
    """The released checkpoints' config.json say "mamba" / "attention" (HF remaps them when it builds the config;
    a config whose names were not remapped reads the same)."""
    cfg = _hf_config("granite-moe")
    cfg.layer_types = ["mamba", "attention", "mamba", "mamba"]
    assert HybridConfig.from_hf(cfg).layer_types == ["ssm", "attention", "ssm", "ssm"]


def test_nope_ignores_rope_parameters():
    """With position_embedding_type None HF builds no rotary embedding, whatever rope_parameters says."""
    cfg = HybridConfig.from_hf(_hf_config("granite-dense", rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                           "rope_theta": 1e4}))
    assert cfg.rotary_dim == 0


def test_shared_mlp_needs_mlp_sublayer():
    cfg = HybridConfig.from_hf(_hf_config("granite-moe"))
    with pytest.raises(ValueError, match="moe_shared_mlp"):
        HybridConfig(**{**cfg.__dict__, "mlp_sublayer": False, "moe_layers": []})


def test_multipliers_default_to_no_ops():
    """The generic fields are no-ops at their defaults (Bamba / Nemotron-H / Jamba leave them there)."""
    c = HybridConfig.from_hf(_hf_config("granite-dense"))
    plain = HybridConfig(ssm=c.ssm, layer_types=c.layer_types, n_layers=c.n_layers, d_model=c.d_model)
    assert (plain.embedding_multiplier, plain.residual_multiplier, plain.attention_scale, plain.logits_scale) == (
        1.0, 1.0, None, 1.0)
    assert (plain.moe_normalize_topk, plain.moe_shared_mlp, plain.moe_d_mlp) == (False, False, None)


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 24])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    # min_scale: the comparison is not between near-zero logits
    assert_logits_match_hf(hf, ours, _tokens(L, seed=L), tol=TOL, min_scale=0.5)


def test_in_memory_model_equals_huggingface(pair):
    assert_in_memory_model_matches_hf(pair[0], _tokens(21, seed=3), kind=HookedHybrid, tol=TOL)


def test_each_multiplier_matters():
    """The parity test can fail: on the variant with multipliers far from 1, putting any one of them (or the
    router's renormalisation, or the shared MLP beside the experts) back to its no-op moves the logits more than ten
    times the parity tolerance from HF's."""
    hf = _hf("granite-moe")
    tokens = _tokens(13, seed=2)

    def drop_embedding(m):
        m.embed.scale = 1.0

    def drop_residual(m):
        for block in m.blocks:
            block.residual_multiplier = 1.0

    def drop_attention_scale(m):
        m.cfg.attention_scale = None  # back to d_head ** -0.5

    def drop_logits_scale(m):
        m.unembed.scale = 1.0

    def unnormalised_routing(m):
        for block in m.blocks:
            block.moe.normalize_topk = False

    def no_shared_mlp(m):
        for block in m.blocks:
            del block.mlp

    assert max_logit_error(interp.load(hf), hf, tokens) <= TOL
    for change in (drop_embedding, drop_residual, drop_attention_scale, drop_logits_scale, unnormalised_routing,
                   no_shared_mlp):
        mem = interp.load(hf)
        change(mem)
        assert max_logit_error(mem, hf, tokens) > 10 * TOL, change.__name__


def test_rotary_embedding_matters():
    hf = _hf("granite-moe")
    mem = interp.load(hf)
    for block in mem.blocks:
        if block.kind == "attention":
            block.attn.inv_freq.zero_()
    assert max_logit_error(mem, hf, _tokens(13, seed=2)) > 1e-3


def test_padded_batch_matches_huggingface(pair):
    hf, ours = pair
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3, seed=1), tol=TOL)


# --- hooks ---------------------------------------------------------------------------------------
def test_run_with_cache_returns_every_hook(pair):
    _, ours = pair
    cache = assert_hooks_fire_with_shapes(ours, _tokens(13, seed=4))
    c = ours.cfg
    for i in range(c.n_layers):
        assert cache[f"blocks.{i}.mlp.hook_post"].shape == (2, 13, c.d_mlp)
        if i in c.moe_layers:
            assert cache[f"blocks.{i}.moe.hook_router_logits"].shape == (2, 13, c.n_experts)
            assert cache[f"blocks.{i}.moe.hook_expert_weights"].shape == (2, 13, c.n_experts_per_tok)


def test_embedding_and_unembedding_include_the_multipliers(pair):
    """hook_embed == W_E[tokens] and logits == ln_final(resid) @ W_U, with Granite's multipliers folded into
    W_E / W_U (TransformerLens's identities)."""
    _, ours = pair
    tokens = _tokens(13, seed=5)
    logits, cache = ours.run_with_cache(tokens)
    torch.testing.assert_close(cache["hook_embed"], ours.W_E[tokens])
    final = ours.ln_final(cache[f"blocks.{ours.cfg.n_layers - 1}.hook_resid_post"])
    torch.testing.assert_close(logits, final @ ours.W_U, atol=1e-5, rtol=1e-5)


def test_residual_stream_adds_up(pair):
    """hook_mixer_out / hook_attn_out / hook_mlp_out are what the residual stream adds (residual multiplier
    included), so resid_mid and resid_post are exact sums of them."""
    _, ours = pair
    cache = assert_residual_stream_adds_up(ours, _tokens(13, seed=5))
    for i in ours.cfg.ssm_layers:
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mixer_out"],
                                   ours.cfg.residual_multiplier * cache[f"blocks.{i}.ssm.hook_out"])


def test_shared_mlp_router_and_experts_equal_huggingface(pair):
    """On every layer, given HF's own input to the feed-forward: our MLP's hooks are the halves of HF's
    ``shared_mlp.input_linear`` (gate first) and its output HF's; on MoE layers hook_router_logits, the top-k
    (renormalised) hook_expert_weights and the experts' output equal HF's router / ``block_sparse_moe``."""
    hf, ours = pair
    tokens = _tokens(13, seed=6)
    seen: dict = {}
    handles = []
    for i, layer in enumerate(hf.model.layers):
        handles.append(layer.shared_mlp.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("mlp", i),
                                                                                                    (a[0], o))))
        if layer.block_sparse_moe is not None:
            moe = layer.block_sparse_moe
            handles.append(moe.router.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("router", i), o)))
            handles.append(moe.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("moe", i), o)))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for h in handles:
            h.remove()
    b, L = tokens.shape
    c = ours.cfg
    for i, block in enumerate(ours.blocks):
        x_hf, out_hf = seen[("mlp", i)]
        gate, up = hf.model.layers[i].shared_mlp.input_linear(x_hf).chunk(2, dim=-1)
        shown: dict = {}
        for name in ("hook_pre", "hook_pre_linear"):
            getattr(block.mlp, name).add_hook(lambda t, hook, name=name: shown.__setitem__(name, t))
        try:
            with torch.no_grad():
                out = block.mlp(x_hf)
        finally:
            ours.reset_hooks()
        torch.testing.assert_close(shown["hook_pre"], gate)
        torch.testing.assert_close(shown["hook_pre_linear"], up)
        torch.testing.assert_close(out, out_hf, atol=1e-6, rtol=1e-5)
        if i not in c.moe_layers:
            assert not hasattr(block, "moe")
            continue
        logits, weights, index = seen[("router", i)]
        for name in ("hook_router_logits", "hook_expert_weights"):
            getattr(block.moe, name).add_hook(lambda t, hook, name=name: shown.__setitem__(name, t))
        try:
            with torch.no_grad():
                out = block.moe(x_hf)
        finally:
            ours.reset_hooks()
        torch.testing.assert_close(shown["hook_router_logits"], logits.view(b, L, -1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(shown["hook_expert_weights"], weights.view(b, L, -1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(shown["hook_expert_weights"].sum(-1), torch.ones(b, L))  # renormalised
        assert torch.equal(shown["hook_router_logits"].topk(c.n_experts_per_tok, dim=-1).indices,
                           index.view(b, L, -1))
        assert len(torch.unique(index.view(-1))) > 1  # routing differs between tokens
        torch.testing.assert_close(out, seen[("moe", i)], atol=1e-6, rtol=1e-5)


def test_attention_pattern_equals_huggingface_weights(pair):
    hf, ours = pair
    assert_pattern_equals_hf(hf, ours, _tokens(13, seed=9), layers=ours.cfg.attention_layers)


def test_start_and_stop_at_layer(pair):
    assert_start_stop_at_layer(pair[1], _tokens(13, seed=10))


# --- the SSM layers: exact re-scan and hidden attention -------------------------------------------
@pytest.mark.parametrize("L", [16, 21])
def test_y_reconstructs_by_sequential_rescan(pair, L):
    _, ours = pair
    assert_rescan_exact(ours, _tokens(L, b=2, seed=11), layers=ours.cfg.ssm_layers)


@pytest.mark.parametrize("L", [16, 21])
def test_hidden_attention_reconstructs_hook_y(pair, L):
    _, ours = pair
    assert_hidden_attention_exact(ours, _tokens(L, b=2, seed=12), layers=ours.cfg.ssm_layers)


def test_interaction_map_dispatches_on_layer_kind(pair):
    """method="auto" is hidden attention on the SSM layers and the softmax pattern on attention layers."""
    assert_interaction_map_per_layer_kind(pair[1], _tokens(13, b=1, seed=16))


# --- decoding with the mixed cache ---------------------------------------------------------------
def test_greedy_generation_equals_full_forward_argmax(pair):
    assert_greedy_equals_argmax(pair[1], _tokens(7, b=1, seed=13))


@pytest.mark.parametrize("cut", [5, 9])
def test_continuing_from_a_state_equals_one_forward(pair, cut):
    assert_continuation_equals_one_forward(pair[1], _tokens(14, b=2, seed=14), cut=cut, state=HybridState())


def test_left_padded_generation_equals_masked_full_forward_argmax(pair):
    assert_left_padded_generation_matches(pair[1], _tokens(9, b=2, seed=15), pad=3, new=12)


def test_lrp_conserves_with_biases_zeroed(pair):
    """MambaLRP on the SSM layers, CP-LRP on the attention layers, the gated rule on the shared MLP and experts."""
    assert_lrp_conserves(pair[1], _tokens(16, b=1, seed=7))


def test_rollout_chains_ssm_and_attention_layers(pair):
    assert_rollout_mixes_layers(pair[1], _tokens(12, b=1, seed=9))
