"""Jamba (Hugging Face ``JambaForCausalLM``): Mamba-1 mixers (our ``SSMMixer``, with Jamba's weighted RMS norms on
Δ, B and C) interleaved with softmax attention (grouped KV heads, no positional embedding), each followed by a gated
MLP or a sparse mixture of gated-MLP experts (``interp.hooks.hybrid``). Parity with the installed Hugging Face
forward (in-memory and saved folder, padded batch), every hook fires, the router logits / top-k weights / MoE output
equal HF's, the SSM layers' ``hook_y`` re-scans and hidden attention are exact, and decoding with the mixed cache
equals the full forward. Two tiny random variants: [ssm, moe-ssm, attention, moe-ssm] with GQA and HF's default
attention implementation; and [attention, moe-ssm, ssm, moe-ssm, attention] with tied embeddings, projection biases,
d_conv 3, top-1 routing of 3 experts, eager attention."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import interp
from family_checks import (assert_continuation_equals_one_forward, assert_fused_attention_matches,
                           assert_greedy_equals_argmax, assert_hidden_attention_exact, assert_hooks_fire_with_shapes,
                           assert_in_memory_model_matches_hf, assert_interaction_map_per_layer_kind,
                           assert_left_padded_generation_matches, assert_logits_match_hf, assert_lrp_conserves,
                           assert_padded_batch_matches_hf, assert_pattern_equals_hf, assert_rescan_exact,
                           assert_residual_stream_adds_up, assert_rollout_mixes_layers, assert_start_stop_at_layer,
                           name_has, norm_weight, perturb_parameters, random_tokens, saved_pair, ssm_param_or_bias)
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState

CHUNK = 8  # our scan's chunk size (HF's Mamba-1 scan has none): lengths 8 and 24 are multiples, 13 and 21 are not
TOL = 1e-4
V = 61
JAMBA_CONFIGS = {
    "jamba": dict(vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=40, attn_layer_period=4, attn_layer_offset=2, expert_layer_period=2,
                  expert_layer_offset=1, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_d_conv=4,
                  mamba_expand=2, mamba_dt_rank=4),
    "jamba-variant": dict(vocab_size=V, hidden_size=24, num_hidden_layers=5, num_attention_heads=4,
                          num_key_value_heads=4, intermediate_size=32, attn_layer_period=4, attn_layer_offset=0,
                          expert_layer_period=2, expert_layer_offset=1, num_experts=3, num_experts_per_tok=1,
                          mamba_d_state=6, mamba_d_conv=3, mamba_expand=2, mamba_proj_bias=True,
                          tie_word_embeddings=True, rms_norm_eps=1e-5, attn_implementation="eager"),
}
_MODELS: dict[str, tuple] = {}


def make_hf_jamba(kind: str, seed: int = 0):
    """A random tiny JambaForCausalLM with non-trivial D, conv bias, norm weights (the Δ/B/C norms' too), router and
    experts."""
    from transformers import JambaConfig, JambaForCausalLM

    torch.manual_seed(seed)
    model = JambaForCausalLM(JambaConfig(**JAMBA_CONFIGS[kind]))
    return perturb_parameters(model, [(ssm_param_or_bias, 0, 0.5), (norm_weight, 1, 0.3),
                                      (name_has("self_attn"), 0, 0.4),  # peaked patterns
                                      (name_has("router"), 0, 1.0),  # routing that differs from token to token
                                      (name_has("experts"), 0, 0.2)])


@pytest.fixture(params=list(JAMBA_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF JambaForCausalLM, ours loaded from its save_pretrained folder, scan chunk size CHUNK)."""
    return saved_pair(_MODELS, request.param, make_hf_jamba, tmp_path_factory, prepare=_set_chunk_size)


def _set_chunk_size(ours) -> None:
    ours.cfg.ssm.chunk_size = CHUNK  # the mixers share the config object


_tokens = partial(random_tokens, V)


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig)
    assert c.layer_types == ["attention" if t == "attention" else "ssm" for t in h.layers_block_type]
    assert len(c.ssm_layers) >= 2 and len(c.attention_layers) >= 1 and len(c.moe_layers) >= 1
    assert c.moe_layers == [i for i in range(h.num_hidden_layers)
                            if i % h.expert_layer_period == h.expert_layer_offset]
    assert (c.n_experts, c.n_experts_per_tok) == (h.num_experts, h.num_experts_per_tok)
    assert (c.n_heads, c.n_key_value_heads, c.d_head, c.rotary_dim, c.d_mlp, c.tie_embeddings) == (
        h.num_attention_heads, h.num_key_value_heads, h.hidden_size // h.num_attention_heads, 0,
        h.intermediate_size, h.tie_word_embeddings)
    assert (c.family, c.H, c.P, c.d_state, c.d_conv, c.dt_rank, c.bcdt_rms, c.bcdt_rms_weights, c.mixer_rms_eps) == (
        "mamba1", h.mamba_expand * h.hidden_size, 1, h.mamba_d_state, h.mamba_d_conv, h.mamba_dt_rank, True, True,
        h.rms_norm_eps)
    assert all(b.ssm.cfg.chunk_size == CHUNK for b in ours.blocks if b.kind == "ssm")
    for i, kind in enumerate(c.layer_types):
        block = ours.blocks[i]
        assert hasattr(block, "ssm" if kind == "ssm" else "attn")
        assert not hasattr(block, "attn" if kind == "ssm" else "ssm")
        assert hasattr(block, "moe") == (i in c.moe_layers) != hasattr(block, "mlp")


def test_unsupported_activation_refused():
    from transformers import JambaConfig

    with pytest.raises(ValueError, match="hidden_act 'gelu' is not supported"):
        HybridConfig.from_hf(JambaConfig(**{**JAMBA_CONFIGS["jamba"], "hidden_act": "gelu"}))


def test_moe_config_checked():
    from transformers import JambaConfig

    cfg = HybridConfig.from_hf(JambaConfig(**JAMBA_CONFIGS["jamba"]))
    with pytest.raises(ValueError, match="n_experts_per_tok"):
        HybridConfig(**{**cfg.__dict__, "n_experts_per_tok": 5})


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 24])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L, seed=L), tol=TOL)


def test_in_memory_model_equals_huggingface(pair):
    assert_in_memory_model_matches_hf(pair[0], _tokens(21, seed=3), kind=HookedHybrid, tol=TOL)


def test_weighted_bcdt_norms_matter(pair):
    """The parity test can fail: with the Δ/B/C norms' weights reset to 1 (FalconMamba's weightless norms) the
    logits are far from HF's."""
    hf, _ = pair
    mem = interp.load(hf)
    with torch.no_grad():
        for block in mem.blocks:
            if block.kind == "ssm":
                for name in ("dt_layernorm", "b_layernorm", "c_layernorm"):
                    getattr(block.ssm, name).weight.fill_(1.0)
        tokens = _tokens(13, seed=2)
        assert (mem(tokens) - hf(tokens).logits).abs().max().item() > 1e-3


def test_padded_batch_matches_huggingface(pair):
    hf, ours = pair
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3, seed=1), tol=TOL)


# --- hooks ---------------------------------------------------------------------------------------
def test_run_with_cache_returns_every_hook(pair):
    _, ours = pair
    cache = assert_hooks_fire_with_shapes(ours, _tokens(13, seed=4))
    c = ours.cfg
    for i in range(c.n_layers):
        if i in c.moe_layers:
            assert cache[f"blocks.{i}.moe.hook_router_logits"].shape == (2, 13, c.n_experts)
            assert cache[f"blocks.{i}.moe.hook_expert_weights"].shape == (2, 13, c.n_experts_per_tok)
            assert f"blocks.{i}.mlp.hook_post" not in cache
        else:
            assert cache[f"blocks.{i}.mlp.hook_post"].shape == (2, 13, c.d_mlp)


def test_residual_stream_adds_up(pair):
    assert_residual_stream_adds_up(pair[1], _tokens(13, seed=5))


def test_router_and_moe_output_equal_huggingface(pair):
    """On every MoE layer, given HF's own MoE input: our hook_router_logits == HF's router logits,
    hook_expert_weights == HF's top-k weights (with HF's experts), and the MoE output == HF's JambaSparseMoeBlock
    output; in the full forward the cached router logits and MoE outputs agree with HF's to TOL."""
    hf, ours = pair
    tokens = _tokens(13, seed=6)
    seen: dict = {}
    handles = []
    for i in ours.cfg.moe_layers:
        ff = hf.model.layers[i].feed_forward
        handles.append(ff.router.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("router", i), o)))
        handles.append(ff.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("ff", i), (a[0], o))))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for h in handles:
            h.remove()
    _, cache = ours.run_with_cache(tokens)
    b, L = tokens.shape
    k = ours.cfg.n_experts_per_tok
    assert ours.cfg.moe_layers
    for i in ours.cfg.moe_layers:
        logits, weights, index = seen[("router", i)]
        x_hf, out_hf = seen[("ff", i)]
        moe = ours.blocks[i].moe
        shown: dict = {}
        moe.hook_router_logits.add_hook(lambda t, hook: shown.__setitem__("logits", t))
        moe.hook_expert_weights.add_hook(lambda t, hook: shown.__setitem__("weights", t))
        try:
            with torch.no_grad():
                out = moe(x_hf)
        finally:
            ours.reset_hooks()
        torch.testing.assert_close(shown["logits"], logits.view(b, L, -1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(shown["weights"], weights.view(b, L, -1), atol=1e-6, rtol=1e-5)
        assert torch.equal(shown["logits"].topk(k, dim=-1).indices, index.view(b, L, -1))
        torch.testing.assert_close(out, out_hf, atol=1e-6, rtol=1e-5)
        assert (cache[f"blocks.{i}.moe.hook_router_logits"] - logits.view(b, L, -1)).abs().max().item() <= TOL
        assert (cache[f"blocks.{i}.hook_mlp_out"] - out_hf).abs().max().item() <= TOL
        if k < ours.cfg.n_experts:  # routing differs between tokens (the test can see a wrong expert)
            assert len(torch.unique(index.view(-1))) > 1


def test_expert_weights_hook_edits_are_used(pair):
    """Zeroing hook_expert_weights on a MoE layer zeroes its output; doubling them doubles it."""
    _, ours = pair
    tokens = _tokens(9, seed=7)
    i = ours.cfg.moe_layers[0]
    name = f"blocks.{i}.moe.hook_expert_weights"
    _, base = ours.run_with_cache(tokens, names_filter=f"blocks.{i}.hook_mlp_out")
    for factor in (0.0, 2.0):
        got = {}
        with torch.no_grad():
            ours.run_with_hooks(tokens, fwd_hooks=[(name, lambda w, hook, f=factor: w * f),
                                                   (f"blocks.{i}.hook_mlp_out", lambda x, hook: got.setdefault(0, x))])
        torch.testing.assert_close(got[0], factor * base[f"blocks.{i}.hook_mlp_out"])


def test_bcdt_hooks_show_the_normed_values(pair):
    """hook_dt / hook_B / hook_C are after Jamba's weighted norms (HF's own dt_layernorm / b_layernorm /
    c_layernorm applied to x_proj of the cached u)."""
    hf, ours = pair
    _, cache = ours.run_with_cache(_tokens(13, seed=8))
    c = ours.cfg
    for i in c.ssm_layers:
        mixer = hf.model.layers[i].mamba
        with torch.no_grad():
            dt_low, B, C = mixer.x_proj(cache[f"blocks.{i}.ssm.hook_u"].flatten(-2)).split(
                [c.dt_rank, c.d_state, c.d_state], dim=-1)
            dt = torch.nn.functional.softplus(mixer.dt_proj(mixer.dt_layernorm(dt_low)))
        torch.testing.assert_close(cache[f"blocks.{i}.ssm.hook_B"][:, :, 0], mixer.b_layernorm(B))
        torch.testing.assert_close(cache[f"blocks.{i}.ssm.hook_C"][:, :, 0], mixer.c_layernorm(C))
        torch.testing.assert_close(cache[f"blocks.{i}.ssm.hook_dt"], dt)


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
    """method="auto" is hidden attention on the (Mamba-1) SSM layers and the softmax pattern on attention layers."""
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
    """MambaLRP on the SSM layers, CP-LRP on the attention layers, the gated rule on MLPs (and experts)."""
    assert_lrp_conserves(pair[1], _tokens(16, b=1, seed=7))


def test_rollout_chains_ssm_and_attention_layers(pair):
    assert_rollout_mixes_layers(pair[1], _tokens(12, b=1, seed=9))


def test_fused_attention_equals_the_pattern_path(pair):
    """Long forwards nobody observes the pattern of run PyTorch's fused attention: same logits (padding too)."""
    assert_fused_attention_matches(pair[1], _tokens(70, b=2, seed=21))
