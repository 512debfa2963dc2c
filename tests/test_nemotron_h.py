"""Nemotron-H (Hugging Face ``NemotronHForCausalLM``): single-mixer layers, each RMSNorm + one of a Mamba-2 mixer
(our ``SSMMixer``, gated group RMSNorm), GQA softmax attention without a positional embedding, or a plain relu²
MLP, with a residual (``interp.hooks.hybrid``, ``HybridConfig.mlp_sublayer=False``). Parity with the installed
Hugging Face forward (saved folder with its ``backbone.`` names, in-memory model, padded batch), every hook fires,
the attention hooks equal HF's attention weights, the SSM layers' ``hook_y`` re-scans and hidden attention are
exact, decoding with the mixed cache equals the full forward, MoE layers are refused by name.
Two tiny random variants: pattern "M-M*-M" (GQA, n_groups 2, sdpa attention) and "*M-MM-" (biases in the mixer
and MLP, n_groups 1, d_conv 3, eager attention, silu MLP)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import interp
from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_hidden_attention_exact, assert_hooks_fire_with_shapes,
                           assert_in_memory_model_matches_hf, assert_left_padded_generation_matches,
                           assert_logits_match_hf, assert_lrp_conserves, assert_padded_batch_matches_hf,
                           assert_pattern_equals_hf, assert_rescan_exact, assert_rollout_mixes_layers,
                           assert_start_stop_at_layer, name_ends, norm_weight, perturb_parameters, random_tokens,
                           saved_pair, ssm_param_or_bias)
from interp.attention import ssm_parameters
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState

CHUNK = 8  # lengths 8 and 24 are multiples of the scan's chunk size, 13 and 21 are not
TOL = 1e-4
V = 61
NEMOTRON_CONFIGS = {
    "nemotron_h": dict(vocab_size=V, hidden_size=32, hybrid_override_pattern="M-M*-M", num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, intermediate_size=48, mamba_num_heads=4, mamba_head_dim=16,
                       ssm_state_size=8, n_groups=2, chunk_size=CHUNK),
    "nemotron_h-variant": dict(vocab_size=V, hidden_size=32, layers_block_type=[
        "full_attention", "linear_attention", "mlp", "linear_attention", "linear_attention", "mlp"],
        num_attention_heads=2, num_key_value_heads=2, head_dim=16, intermediate_size=40, mamba_num_heads=8,
        mamba_head_dim=8, ssm_state_size=8, n_groups=1, conv_kernel=3, chunk_size=CHUNK, use_bias=True,
        mlp_bias=True, mlp_hidden_act="silu", layer_norm_epsilon=1e-6, attn_implementation="eager"),
}
_MODELS: dict[str, tuple] = {}


def make_hf_nemotron_h(kind: str, seed: int = 0):
    """A random tiny NemotronHForCausalLM with non-trivial D, dt bias, conv bias, norm weights and attention."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    torch.manual_seed(seed)
    model = NemotronHForCausalLM(NemotronHConfig(**NEMOTRON_CONFIGS[kind]))
    return perturb_parameters(model, [(ssm_param_or_bias, 0, 0.5), (norm_weight, 1, 0.2),
                                      (name_ends("q_proj.weight", "k_proj.weight"), 0, 0.4),  # peaked patterns
                                      # logits of order 1
                                      (name_ends("embeddings.weight", "lm_head.weight"), 0, 0.3)])


@pytest.fixture(params=list(NEMOTRON_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF NemotronHForCausalLM, ours loaded from its save_pretrained folder)."""
    return saved_pair(_MODELS, request.param, make_hf_nemotron_h, tmp_path_factory)


_tokens = partial(random_tokens, V)


_KINDS = {"linear_attention": "ssm", "full_attention": "attention", "mlp": "mlp"}


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig)
    assert c.layer_types == [_KINDS[t] for t in h.layers_block_type]
    assert len(c.ssm_layers) >= 2 and len(c.attention_layers) >= 1 and len(c.mlp_layers) >= 1
    assert (c.mlp_sublayer, c.gated_mlp, c.rotary_dim, c.attn_bias, c.tie_embeddings) == (False, False, 0, False, False)
    assert (c.n_heads, c.n_key_value_heads, c.d_head, c.d_mlp, c.mlp_bias, c.norm_eps) == (
        h.num_attention_heads, h.num_key_value_heads, h.head_dim, h.intermediate_size, h.mlp_bias,
        h.layer_norm_epsilon)
    assert c.act_fn == ("relu2" if h.mlp_hidden_act == "relu2" else "silu")
    assert (c.family, c.H, c.P, c.G, c.d_inner, c.d_state, c.d_conv, c.chunk_size, c.proj_bias) == (
        "mamba2", h.mamba_num_heads, h.mamba_head_dim, h.n_groups, h.mamba_num_heads * h.mamba_head_dim,
        h.ssm_state_size, h.conv_kernel, CHUNK, h.use_bias)
    assert c.ssm.norm_eps == h.layer_norm_epsilon  # the gated group norm's eps
    for i, kind in enumerate(c.layer_types):  # one mixer per layer, no MLP sublayer
        block = ours.blocks[i]
        assert [m for m in ("ssm", "attn", "mlp") if hasattr(block, m)] == [
            {"ssm": "ssm", "attention": "attn", "mlp": "mlp"}[kind]]
        assert not hasattr(block, "ln2") and not hasattr(block, "hook_resid_mid")


def test_moe_layers_refused_naming_the_field():
    from transformers import NemotronHConfig

    cfg = NemotronHConfig(**{**NEMOTRON_CONFIGS["nemotron_h"], "hybrid_override_pattern": "M-ME*M"})
    with pytest.raises(ValueError, match=r"layers_block_type has 'moe' layers .*'E'.* at \[3\]"):
        HybridConfig.from_hf(cfg)


def test_mlp_layers_need_single_mixer_layout():
    from transformers import NemotronHConfig

    cfg = HybridConfig.from_hf(NemotronHConfig(**NEMOTRON_CONFIGS["nemotron_h"]))
    with pytest.raises(ValueError, match="mlp_sublayer"):
        HybridConfig(ssm=cfg.ssm, layer_types=cfg.layer_types, n_layers=cfg.n_layers, mlp_sublayer=True)


def test_checkpoint_weight_names_load(pair):
    """save_pretrained writes ``backbone.*`` names (the real checkpoints' prefix); the in-memory model has
    ``model.*``: both load to the same weights, and a missing tensor is named."""
    hf, ours = pair
    mem = interp.load(hf)
    for (k, a), (_, b) in zip(ours.state_dict().items(), mem.state_dict().items()):
        assert torch.equal(a, b), k
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    from interp.hooks.loading import CheckpointError, load_hybrid_state

    with pytest.raises(CheckpointError, match="unembed.weight"):  # never tied: HF does not tie Nemotron-H
        load_hybrid_state(HookedHybrid(ours.cfg), state, "test")


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 24])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    # logits large enough (> 0.3) for the tolerance to mean something
    assert_logits_match_hf(hf, ours, _tokens(L, seed=L), tol=TOL, min_scale=0.3)


def test_in_memory_model_equals_huggingface(pair):
    assert_in_memory_model_matches_hf(pair[0], _tokens(21, seed=3), kind=HookedHybrid, tol=TOL)


def test_parity_detects_a_wrong_activation_and_norm_grouping(pair):
    """The parity test can fail: a relu² MLP read as SiLU (or the reverse), or the SSM layers' gated RMSNorm over
    one group instead of n_groups (the first variant), puts the logits far from HF's."""
    hf, _ = pair
    tokens = _tokens(13, seed=2)
    with torch.no_grad():
        ref = hf(tokens).logits
        mem = interp.load(hf)
        for i in mem.cfg.mlp_layers:
            mem.blocks[i].mlp.act = torch.nn.functional.silu if mem.cfg.act_fn == "relu2" else torch.relu
        assert (mem(tokens) - ref).abs().max().item() > 1e-3
        if mem.cfg.G > 1:
            mem = interp.load(hf)
            for i in mem.cfg.ssm_layers:
                mem.blocks[i].ssm.norm.n_groups = 1
            assert (mem(tokens) - ref).abs().max().item() > 1e-3


def test_padded_batch_matches_huggingface(pair):
    hf, ours = pair
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3, seed=1), tol=TOL)


# --- hooks ---------------------------------------------------------------------------------------
def test_run_with_cache_returns_every_hook(pair):
    _, ours = pair
    cache = assert_hooks_fire_with_shapes(ours, _tokens(13, seed=4))
    c = ours.cfg
    for i, kind in enumerate(c.layer_types):
        names = {n for n in cache if n.startswith(f"blocks.{i}.")}
        assert {f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_post", f"blocks.{i}.ln1.hook_scale"} <= names
        assert f"blocks.{i}.hook_resid_mid" not in names
        if kind == "ssm":
            assert not any(".attn." in n or ".mlp." in n for n in names)
        elif kind == "attention":
            # no positional embedding: the "rotated" queries and keys are the projections
            assert torch.equal(cache[f"blocks.{i}.attn.hook_rot_q"], cache[f"blocks.{i}.attn.hook_q"])
            assert not any(".ssm." in n or ".mlp." in n for n in names)
        else:
            pre, post = cache[f"blocks.{i}.mlp.hook_pre"], cache[f"blocks.{i}.mlp.hook_post"]
            assert pre.shape == post.shape == (2, 13, c.d_mlp)
            expected = torch.relu(pre) ** 2 if c.act_fn == "relu2" else torch.nn.functional.silu(pre)
            torch.testing.assert_close(post, expected)
            assert f"blocks.{i}.mlp.hook_pre_linear" not in names  # a plain MLP
            assert not any(".ssm." in n or ".attn." in n for n in names)


def test_residual_stream_adds_up(pair):
    """resid_post = resid_pre + the layer's one mixer output; next resid_pre = resid_post."""
    _, ours = pair
    _, cache = ours.run_with_cache(_tokens(13, seed=5))
    out_hook = {"ssm": "hook_mixer_out", "attention": "hook_attn_out", "mlp": "hook_mlp_out"}
    for i, kind in enumerate(ours.cfg.layer_types):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_pre"] + cache[f"blocks.{i}.{out_hook[kind]}"])
        if i + 1 < ours.cfg.n_layers:
            assert torch.equal(cache[f"blocks.{i + 1}.hook_resid_pre"], cache[f"blocks.{i}.hook_resid_post"])


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
    """Σ_j α[i, j] u_j + D u_i == hook_y on every SSM layer."""
    _, ours = pair
    assert_hidden_attention_exact(ours, _tokens(L, b=2, seed=9), layers=ours.cfg.ssm_layers)


# --- decoding with the mixed cache ---------------------------------------------------------------
def test_greedy_generation_equals_full_forward_argmax(pair):
    assert_greedy_equals_argmax(pair[1], _tokens(7, b=1, seed=11))


@pytest.mark.parametrize("cut", [5, 9])
def test_continuing_from_a_state_equals_one_forward(pair, cut):
    """A prefix with state=, then one step per token (recurrent SSM steps, KV-cached attention, position-wise MLP
    layers) == one forward; also from a copy of the state."""
    assert_continuation_equals_one_forward(pair[1], _tokens(14, b=2, seed=12), cut=cut, state=HybridState())


def test_left_padded_generation_equals_masked_full_forward_argmax(pair):
    assert_left_padded_generation_matches(pair[1], _tokens(9, b=2, seed=13), pad=3, new=12)


def test_maps_on_an_mlp_layer_are_refused_clearly(pair):
    """An MLP layer mixes no positions: interaction_map and ssm_parameters refuse it naming the layer kind, and the
    SSM layers still map."""
    from interp.attention import interaction_map
    from interp.attention.methods import MethodNotApplicable

    ours = pair[1]
    tokens = _tokens(8, b=1)
    mlp = ours.cfg.layer_types.index("mlp")
    for fn in (lambda: interaction_map(ours, tokens, layer=mlp), lambda: ssm_parameters(ours, tokens, layer=mlp)):
        with pytest.raises(MethodNotApplicable, match=f"layer {mlp} of this hybrid is an MLP layer"):
            fn()
    ssm = ours.cfg.layer_types.index("ssm")
    assert interaction_map(ours, tokens, layer=ssm).shape[-2:] == (8, 8)


def test_lrp_conserves_with_biases_zeroed(pair):
    """MambaLRP on the SSM layers, CP-LRP on the attention layers, the gated rule on MLPs (and experts)."""
    assert_lrp_conserves(pair[1], _tokens(16, b=1, seed=7))


def test_rollout_chains_ssm_and_attention_layers(pair):
    assert_rollout_mixes_layers(pair[1], _tokens(12, b=1, seed=9))


def test_save_pretrained_refuses_a_non_bamba_layout(pair, tmp_path):
    with pytest.raises(ValueError, match="cannot save this hybrid as a Bamba checkpoint: model_type 'nemotron_h'"):
        pair[1].save_pretrained(str(tmp_path))
    assert not (tmp_path / "model.safetensors").exists()
