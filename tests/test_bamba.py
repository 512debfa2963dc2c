"""Bamba (Hugging Face ``BambaForCausalLM``): Mamba-2 mixers (our ``SSMMixer``) interleaved with softmax attention
(grouped KV heads, rotary embedding on half of each head), each followed by a gated MLP (``interp.hooks.hybrid``).
Parity with the installed Hugging Face forward (in-memory and saved folder, padded batch), every hook fires, the
attention hooks equal HF's attention weights, the SSM layers' ``hook_y`` re-scans and hidden attention are exact,
``interaction_map`` dispatches per layer kind, and decoding with the mixed cache equals the full forward.
Two tiny random variants: [ssm, attention, ssm] with GQA and HF's default attention implementation; and
[attention, ssm, ssm, attention] with tied embeddings, biases everywhere, n_groups 2, d_conv 3, eager attention."""

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

CHUNK = 8  # lengths 8 and 24 are multiples of the scan's chunk size, 13 and 21 are not
TOL = 1e-4
V = 61
BAMBA_CONFIGS = {
    "bamba": dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, attn_layer_indices=[1], num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=48, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                  mamba_chunk_size=CHUNK),
    "bamba-variant": dict(vocab_size=V, hidden_size=32, num_hidden_layers=4, attn_layer_indices=[0, 3],
                          num_attention_heads=4, num_key_value_heads=4, intermediate_size=40, mamba_n_heads=8,
                          mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=3, mamba_chunk_size=CHUNK,
                          tie_word_embeddings=True, attention_bias=True, mlp_bias=True, mamba_proj_bias=True,
                          rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                          attn_implementation="eager"),
}
_MODELS: dict[str, tuple] = {}


def make_hf_bamba(kind: str, seed: int = 0):
    """A random tiny BambaForCausalLM with non-trivial D, dt bias, conv bias, norm weights and attention."""
    from transformers import BambaConfig, BambaForCausalLM

    torch.manual_seed(seed)
    model = BambaForCausalLM(BambaConfig(**BAMBA_CONFIGS[kind]))
    return perturb_parameters(model, [(ssm_param_or_bias, 0, 0.5), (norm_weight, 1, 0.2),
                                      # peaked patterns, so that positions (the rotary embedding) matter
                                      (name_has("self_attn"), 0, 0.4)])


@pytest.fixture(params=list(BAMBA_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF BambaForCausalLM, ours loaded from its save_pretrained folder)."""
    return saved_pair(_MODELS, request.param, make_hf_bamba, tmp_path_factory)


_tokens = partial(random_tokens, V)


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig)
    assert c.layer_types == ["attention" if i in h.attn_layer_indices else "ssm" for i in range(h.num_hidden_layers)]
    assert (c.n_heads, c.n_key_value_heads, c.d_head, c.rotary_dim, c.d_mlp, c.tie_embeddings) == (
        h.num_attention_heads, h.num_key_value_heads, h.hidden_size // h.num_attention_heads,
        h.hidden_size // h.num_attention_heads // 2, h.intermediate_size, h.tie_word_embeddings)
    # the SSM fields the analyses read come from the mixer config
    assert (c.family, c.H, c.P, c.G, c.d_state, c.d_conv, c.chunk_size) == (
        "mamba2", h.mamba_n_heads, h.mamba_d_head, h.mamba_n_groups, h.mamba_d_state, h.mamba_d_conv, CHUNK)
    for i, kind in enumerate(c.layer_types):
        assert hasattr(ours.blocks[i], "ssm" if kind == "ssm" else "attn")
        assert not hasattr(ours.blocks[i], "attn" if kind == "ssm" else "ssm")


def test_unsupported_rope_type_refused():
    from transformers import BambaConfig

    cfg = BambaConfig(**{**BAMBA_CONFIGS["bamba"], "rope_parameters": {
        "rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}})
    with pytest.raises(ValueError, match="rope_type 'linear' is not supported"):
        HybridConfig.from_hf(cfg)


def test_layer_types_checked():
    from transformers import BambaConfig

    cfg = HybridConfig.from_hf(BambaConfig(**BAMBA_CONFIGS["bamba"]))
    with pytest.raises(ValueError, match="layer_types"):
        HybridConfig(ssm=cfg.ssm, layer_types=["ssm", "mlp", "ssm"], n_layers=3)


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 24])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L, seed=L), tol=TOL)


def test_in_memory_model_equals_huggingface(pair):
    assert_in_memory_model_matches_hf(pair[0], _tokens(21, seed=3), kind=HookedHybrid, tol=TOL)


def test_rotary_embedding_matters(pair):
    """The parity test can fail: without the rotary embedding the logits are far from HF's."""
    hf, ours = pair
    tokens = _tokens(13, seed=2)
    mem = interp.load(hf)
    for block in mem.blocks:
        if hasattr(block, "attn"):
            block.attn.inv_freq.zero_()  # cos 1, sin 0: no rotation
    with torch.no_grad():
        assert (mem(tokens) - hf(tokens).logits).abs().max().item() > 1e-3


def test_padded_batch_matches_huggingface(pair):
    hf, ours = pair
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3, seed=1), tol=TOL)


# --- hooks ---------------------------------------------------------------------------------------
def test_run_with_cache_returns_every_hook(pair):
    _, ours = pair
    cache = assert_hooks_fire_with_shapes(ours, _tokens(13, seed=4))
    for i in range(ours.cfg.n_layers):
        assert cache[f"blocks.{i}.mlp.hook_post"].shape == (2, 13, ours.cfg.d_mlp)


def test_residual_stream_adds_up(pair):
    """resid_mid = resid_pre + mixer out; resid_post = resid_mid + mlp_out; next resid_pre = resid_post."""
    assert_residual_stream_adds_up(pair[1], _tokens(13, seed=5))


def test_attention_pattern_equals_huggingface_weights(pair):
    """hook_pattern equals HF's attention weights (eager path, output_attentions) on every attention layer."""
    hf, ours = pair
    assert_pattern_equals_hf(hf, ours, _tokens(13, seed=6), layers=ours.cfg.attention_layers)


def test_start_and_stop_at_layer(pair):
    assert_start_stop_at_layer(pair[1], _tokens(13, seed=7))


# --- the SSM layers: exact re-scan and hidden attention -------------------------------------------
@pytest.mark.parametrize("L", [16, 21])
def test_y_reconstructs_by_sequential_rescan(pair, L):
    """hook_y == sequential scan of the cached u, Δ, B, C on every SSM layer, also on a padded batch."""
    _, ours = pair
    assert_rescan_exact(ours, _tokens(L, b=2, seed=8), layers=ours.cfg.ssm_layers)


@pytest.mark.parametrize("L", [16, 21])
def test_hidden_attention_reconstructs_hook_y(pair, L):
    """Σ_j α[i, j] u_j + D u_i == hook_y on every SSM layer; interaction_map's per-head map is that α."""
    _, ours = pair
    assert_hidden_attention_exact(ours, _tokens(L, b=2, seed=9), layers=ours.cfg.ssm_layers)


def test_interaction_map_dispatches_on_layer_kind(pair):
    """method="auto" is hidden attention on SSM layers and the softmax pattern on attention layers; each method
    is refused on the other kind of layer."""
    assert_interaction_map_per_layer_kind(pair[1], _tokens(13, b=1, seed=10))


# --- decoding with the mixed cache ---------------------------------------------------------------
def test_greedy_generation_equals_full_forward_argmax(pair):
    assert_greedy_equals_argmax(pair[1], _tokens(7, b=1, seed=11))


@pytest.mark.parametrize("cut", [5, 9])
def test_continuing_from_a_state_equals_one_forward(pair, cut):
    """A prefix with state=, then one step per token (recurrent SSM steps, KV-cached attention) == one forward;
    also from decoding_states, and from a copy (the original state is left as it was)."""
    assert_continuation_equals_one_forward(pair[1], _tokens(14, b=2, seed=12), cut=cut, state=HybridState())


def test_left_padded_generation_equals_masked_full_forward_argmax(pair):
    """A left-padded batch decodes (padding kept out of the attention cache by its key mask, zeroed in the SSM
    layers) the argmax of the full forward over prompt + continuation with the same mask."""
    assert_left_padded_generation_matches(pair[1], _tokens(9, b=2, seed=13), pad=3, new=12)


def test_lrp_conserves_with_biases_zeroed(pair):
    """MambaLRP on the SSM layers, CP-LRP on the attention layers, the gated rule on MLPs (and experts)."""
    assert_lrp_conserves(pair[1], _tokens(16, b=1, seed=7))


def test_rollout_chains_ssm_and_attention_layers(pair):
    assert_rollout_mixes_layers(pair[1], _tokens(12, b=1, seed=9))


def test_save_pretrained_round_trips_through_huggingface(pair, tmp_path):
    """A HookedHybrid saves as a Bamba checkpoint: interp.load and BambaForCausalLM.from_pretrained both read it
    back to the same logits (the zoo's hybrid models are saved this way)."""
    from transformers import BambaForCausalLM

    hf, ours = pair
    ours.save_pretrained(str(tmp_path))
    tokens = _tokens(13, seed=4)
    again = interp.load(str(tmp_path))
    reread = BambaForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        want = ours(tokens)
        assert torch.equal(again(tokens), want)
        assert (reread(tokens).logits - want).abs().max().item() <= TOL
    assert again.cfg.layer_types == ours.cfg.layer_types and again.cfg.tie_embeddings == ours.cfg.tie_embeddings


def test_fused_attention_equals_the_pattern_path(pair):
    """Long forwards nobody observes the pattern of run PyTorch's fused attention: same logits (padding too)."""
    assert_fused_attention_matches(pair[1], _tokens(70, b=2, seed=21))
