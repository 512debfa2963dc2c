"""Zamba2 (Hugging Face ``Zamba2ForCausalLM``): a Mamba-2 mixer in every layer; at the "hybrid" layers a shared
transformer block (attention over concat(resid, embeddings), gated MLP, per-use LoRA adapters, its own projection
back) whose output is added to the mixer's input (``interp.hooks.shared_block``). Parity with the installed Hugging
Face forward (in-memory and saved folder, lengths that are and are not multiples of the chunk size, padded batch),
every hook fires, the shared weights are one tensor per shared block (an edit reaches every use, as in HF), the
adapters matter, the SSM layers' re-scan and hidden attention are exact, the shared attention's pattern equals HF's
eager weights, start/stop_at_layer, decoding with the mixed cache equals the full forward. Two tiny random variants:
two shared blocks used in turn, attention adapters, rotary, gelu, 2 B/C groups; one shared block, biases, silu, no
rotary, eager attention. HF leaves the shared blocks untied with tie_word_embeddings False: refused."""

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
                           assert_rollout_mixes_layers, assert_start_stop_at_layer, name_has, norm_weight,
                           perturb_parameters, random_tokens, saved_pair, ssm_param_or_bias)
from interp.attention import interaction_map
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState
from interp.hooks.shared_block import SHARED_MODULES, LoRALinear, SharedAttentionBlock

CHUNK = 8  # HF's chunk_size and ours: lengths 8 and 16 are multiples, 13 and 21 are not
TOL = 1e-4
V = 61
ZAMBA2_CONFIGS = {
    "two-blocks": dict(vocab_size=V, hidden_size=16, num_hidden_layers=5,
                       layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"], mamba_d_state=8,
                       n_mamba_heads=4, mamba_ngroups=2, chunk_size=CHUNK, num_attention_heads=4,
                       intermediate_size=24, num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=3,
                       use_mem_rope=True, hidden_act="gelu"),
    "one-block": dict(vocab_size=V, hidden_size=12, num_hidden_layers=4,
                      layers_block_type=["hybrid", "mamba", "mamba", "hybrid"], mamba_d_state=6, mamba_d_conv=3,
                      n_mamba_heads=3, mamba_ngroups=1, chunk_size=CHUNK, num_attention_heads=2,
                      intermediate_size=20, num_mem_blocks=1, use_shared_attention_adapter=True, adapter_rank=2,
                      use_mem_rope=False, hidden_act="silu", add_bias_linear=True, rms_norm_eps=1e-6,
                      time_step_min=0.01, attn_implementation="eager"),
}
_MODELS: dict[str, tuple] = {}


def make_hf_zamba2(kind: str, seed: int = 0):
    """A random tiny Zamba2ForCausalLM with non-trivial D, conv bias, norm weights, adapters (HF initialises the
    adapters' up halves to zero-mean noise; here every adapter and shared projection is large enough to matter)."""
    from transformers import Zamba2Config, Zamba2ForCausalLM

    torch.manual_seed(seed)
    model = Zamba2ForCausalLM(Zamba2Config(**ZAMBA2_CONFIGS[kind]))
    return perturb_parameters(model, [(ssm_param_or_bias, 0, 0.5), (norm_weight, 1, 0.3),
                                      (name_has("self_attn"), 0, 0.15),  # patterns far from uniform, adapters
                                      (lambda name, p: "shared_transformer" in name or name.endswith("linear.weight"),
                                       0, 0.2)])


@pytest.fixture(params=list(ZAMBA2_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF Zamba2ForCausalLM, ours loaded from its save_pretrained folder)."""
    return saved_pair(_MODELS, request.param, make_hf_zamba2, tmp_path_factory)


_tokens = partial(random_tokens, V)


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig)
    assert c.layer_types == ["shared_attention" if t == "hybrid" else "ssm" for t in h.layers_block_type]
    assert c.shared_attention_layers == h.hybrid_layer_ids and len(c.shared_attention_layers) >= 2
    assert c.ssm_layers == list(range(h.num_hidden_layers))  # every layer has a Mamba-2 mixer
    assert len([t for t in c.layer_types if t == "ssm"]) >= 2
    assert (c.n_shared_blocks, c.shared_adapter_rank, c.shared_attn_adapter, c.shared_mlp_adapter) == (
        h.num_mem_blocks, h.adapter_rank, h.use_shared_attention_adapter, True)
    assert (c.n_heads, c.d_head, c.rotary_dim, c.d_mlp, c.tie_embeddings, c.mlp_bias) == (
        h.num_attention_heads, h.attention_head_dim, h.attention_head_dim if h.use_mem_rope else 0,
        h.intermediate_size, h.tie_word_embeddings, h.add_bias_linear)
    assert c.attention_scale == pytest.approx((h.attention_head_dim / 2) ** -0.5)
    assert (c.family, c.H, c.P, c.G, c.d_state, c.d_conv, c.chunk_size, c.dt_limit) == (
        "mamba2", h.n_mamba_heads, h.mamba_headdim, h.mamba_ngroups, h.mamba_d_state, h.mamba_d_conv, CHUNK,
        (h.time_step_min, float("inf")))
    for i, kind in enumerate(c.layer_types):
        block = ours.blocks[i]
        assert block.kind == kind and hasattr(block, "ssm")
        assert isinstance(block, SharedAttentionBlock) == hasattr(block, "attn") == (kind == "shared_attention")


def _config(kind: str, **changes):
    from transformers import Zamba2Config

    return Zamba2Config(**{**ZAMBA2_CONFIGS[kind], **changes})


def test_unsupported_fields_refused():
    with pytest.raises(ValueError, match="zamba2: hidden_act 'relu' is not supported"):
        HybridConfig.from_hf(_config("two-blocks", hidden_act="relu"))
    with pytest.raises(ValueError, match=r"use_shared_attention_adapter with num_key_value_heads \(2\)"):
        HybridConfig.from_hf(_config("two-blocks", num_key_value_heads=2))
    with pytest.raises(ValueError, match="zamba2: rope_type 'linear' is not supported"):
        HybridConfig.from_hf(_config("two-blocks", rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                     "rope_theta": 10000.0}))
    hf_cfg = _config("one-block")
    hf_cfg.use_shared_mlp_adapter = False
    with pytest.raises(ValueError, match="use_shared_mlp_adapter False is not supported"):
        HybridConfig.from_hf(hf_cfg)
    hf_cfg = _config("one-block")
    hf_cfg.layers_block_type = ["hybrid", "full_attention", "mamba", "hybrid"]
    with pytest.raises(ValueError, match=r"layers_block_type entries \['full_attention'\] are not supported"):
        HybridConfig.from_hf(hf_cfg)
    # GQA without the attention adapters is supported
    cfg = HybridConfig.from_hf(_config("two-blocks", num_key_value_heads=2, use_shared_attention_adapter=False))
    assert (cfg.n_key_value_heads, cfg.shared_attn_adapter) == (2, False)


def test_untied_shared_blocks_refused():
    """HF's Zamba2 ties the uses of a shared block only with tie_word_embeddings; untied, they hold different
    random weights, which one shared tensor cannot represent."""
    from interp.hooks.loading import CheckpointError

    ZAMBA2_CONFIGS["untied"] = {**ZAMBA2_CONFIGS["one-block"], "tie_word_embeddings": False}
    try:
        hf = make_hf_zamba2("untied")
    finally:
        del ZAMBA2_CONFIGS["untied"]
    with pytest.raises(CheckpointError, match=r"model\.layers\.3\.shared_transformer\..* differs from "
                                              r"model\.layers\.0\.shared_transformer\..*shared block 0"):
        interp.load(hf)


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 16, 21])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L, seed=L), tol=TOL)


def test_in_memory_model_equals_huggingface(pair):
    assert_in_memory_model_matches_hf(pair[0], _tokens(13, seed=3), kind=HookedHybrid, tol=TOL)


def test_padded_batch_matches_huggingface(pair):
    hf, ours = pair
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3, seed=1), tol=TOL)


def test_adapters_and_shared_projection_matter(pair):
    """The parity tests can fail: without the LoRA adapters (lora_B zeroed), or without the shared block's output
    (shared_proj zeroed), the logits are far from HF's."""
    hf, _ = pair
    tokens = _tokens(13, seed=2)
    for part in ("lora_B", "shared_proj"):
        mem = interp.load(hf)
        with torch.no_grad():
            for name, p in mem.named_parameters():
                if part in name:
                    p.zero_()
            assert (mem(tokens) - hf(tokens).logits).abs().max().item() > 1e-3, part


# --- shared weights -----------------------------------------------------------------------------
def test_shared_weights_are_one_tensor(pair):
    """Every use of shared block k holds the same Parameter objects (and only the adapters and the projection back
    are its own); an edit of the shared q_proj at one use, made in HF's tied model too, keeps the two equal."""
    hf, _ = pair
    ours = interp.load(hf)
    c = ours.cfg
    uses = c.shared_attention_layers
    for u, layer in enumerate(uses):
        first = ours.blocks[uses[u % c.n_shared_blocks]]
        block = ours.blocks[layer]
        for path in SHARED_MODULES:
            assert block.get_submodule(path).weight is first.get_submodule(path).weight, (layer, path)
        if u >= c.n_shared_blocks:
            assert block.attn.q_proj.lora_A.weight is not first.attn.q_proj.lora_A.weight
            assert block.shared_proj.weight is not first.shared_proj.weight
        other = [ours.blocks[v] for w, v in enumerate(uses) if w % c.n_shared_blocks != u % c.n_shared_blocks]
        assert all(b.attn.q_proj.weight is not block.attn.q_proj.weight for b in other)
    assert isinstance(ours.blocks[uses[0]].attn.q_proj, LoRALinear)
    assert ours.blocks[uses[0]].mlp.up_proj.lora_A is ours.blocks[uses[0]].mlp.gate_proj.lora_A
    # one tensor: the model's parameters count each shared weight once
    n_shared = sum(p.numel() for path in SHARED_MODULES for p in ours.blocks[uses[0]].get_submodule(path).parameters(
        recurse=False))
    total = sum(p.numel() for p in ours.parameters())
    listed = sum(v.numel() for k, v in ours.state_dict().items() if k != "unembed.weight" or not c.tie_embeddings)
    mlp_lora_a = ours.blocks[uses[0]].mlp.gate_proj.lora_A.weight.numel()  # listed under gate_proj and up_proj
    assert listed - total == n_shared * (len(uses) - c.n_shared_blocks) + mlp_lora_a * len(uses)
    # editing it at the last use changes every use, exactly as in HF's tied model
    last = uses[-1]
    delta = 0.3 * torch.randn(ours.blocks[last].attn.q_proj.weight.shape, generator=torch.Generator().manual_seed(0))
    hf2 = type(hf)(hf.config).eval()
    hf2.load_state_dict(hf.state_dict())
    first_use = uses[(len(uses) - 1) % c.n_shared_blocks]
    hf_w = hf2.model.layers[last].shared_transformer.self_attn.q_proj.weight
    assert hf_w is hf2.model.layers[first_use].shared_transformer.self_attn.q_proj.weight
    tokens = _tokens(13, seed=17)
    with torch.no_grad():
        before = ours(tokens)
        ours.blocks[last].attn.q_proj.weight.add_(delta)
        hf_w.add_(delta)
        after = ours(tokens)
        assert (after - before).abs().max().item() > 1e-3
        assert (after - hf2(tokens).logits).abs().max().item() <= TOL
        torch.testing.assert_close(ours.blocks[first_use].attn.q_proj.weight, ours.blocks[last].attn.q_proj.weight)


# --- hooks ---------------------------------------------------------------------------------------
def test_run_with_cache_returns_every_hook(pair):
    _, ours = pair
    cache = assert_hooks_fire_with_shapes(ours, _tokens(13, seed=4))
    c = ours.cfg
    d = c.d_model
    for i, kind in enumerate(c.layer_types):
        assert cache[f"blocks.{i}.ssm.hook_y"].shape == (2, 13, c.H, c.P)
        if kind == "shared_attention":
            assert cache[f"blocks.{i}.hook_shared_in"].shape == (2, 13, 2 * d)
            assert cache[f"blocks.{i}.ln_attn.hook_normalized"].shape == (2, 13, 2 * d)
            for name in ("hook_attn_out", "hook_mlp_out", "hook_shared_out"):
                assert cache[f"blocks.{i}.{name}"].shape == (2, 13, d)
            assert cache[f"blocks.{i}.mlp.hook_post"].shape == (2, 13, c.d_mlp)
        else:
            assert f"blocks.{i}.attn.hook_pattern" not in cache and f"blocks.{i}.hook_shared_out" not in cache


def test_block_adds_up(pair):
    """shared_in = concat(resid_pre, hook_embed); ln1 reads resid_pre + shared_out; resid_post = resid_pre +
    mixer_out."""
    _, ours = pair
    _, cache = ours.run_with_cache(_tokens(13, seed=5))
    for i, kind in enumerate(ours.cfg.layer_types):
        pre = cache[f"blocks.{i}.hook_resid_pre"]
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], pre + cache[f"blocks.{i}.hook_mixer_out"])
        mixer_in = pre + cache[f"blocks.{i}.hook_shared_out"] if kind == "shared_attention" else pre
        torch.testing.assert_close(cache[f"blocks.{i}.ln1.hook_normalized"] * cache[f"blocks.{i}.ln1.hook_scale"],
                                   mixer_in)
        if kind == "shared_attention":
            torch.testing.assert_close(cache[f"blocks.{i}.hook_shared_in"], torch.cat([pre, cache["hook_embed"]], -1))


def test_embed_hook_edit_reaches_the_shared_blocks(pair):
    """The shared blocks read hook_embed's value, edits included (HF's original_hidden_states = the embeddings)."""
    _, ours = pair
    tokens = _tokens(9, seed=18)
    i = ours.cfg.shared_attention_layers[-1]
    got = {}
    ours.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: x * 2),
                                           (f"blocks.{i}.hook_shared_in", lambda x, hook: got.setdefault(0, x))])
    torch.testing.assert_close(got[0][..., ours.cfg.d_model:], 2 * ours.embed(tokens))


def test_attention_pattern_equals_huggingface_weights(pair):
    hf, ours = pair
    # one chunk: at 13 tokens fp32 rounding (chunked scans of different order in 3 SSM layers) moves the last
    # use's input by ~3e-6, and its pattern by as much, over the check's 1e-6 (the logits still agree to 1e-6)
    assert_pattern_equals_hf(hf, ours, _tokens(8, seed=9), layers=ours.cfg.shared_attention_layers)


def test_start_and_stop_at_layer(pair):
    _, ours = pair
    tokens = _tokens(13, seed=10)
    assert_start_stop_at_layer(ours, tokens, embeddings=ours.embed(tokens))
    layer = ours.cfg.shared_attention_layers[-1]
    with torch.no_grad():
        resid = ours(tokens, stop_at_layer=layer)
        with pytest.raises(ValueError, match=f"layer {layer} runs a shared attention block.*pass embeddings="):
            ours(resid, start_at_layer=layer)


# --- the SSM layers (every layer): exact re-scan and hidden attention -----------------------------
@pytest.mark.parametrize("L", [16, 21])
def test_y_reconstructs_by_sequential_rescan(pair, L):
    _, ours = pair
    assert_rescan_exact(ours, _tokens(L, b=2, seed=11), layers=ours.cfg.ssm_layers)


@pytest.mark.parametrize("L", [16, 21])
def test_hidden_attention_reconstructs_hook_y(pair, L):
    _, ours = pair
    assert_hidden_attention_exact(ours, _tokens(L, b=2, seed=12), layers=ours.cfg.ssm_layers)


def test_interaction_map_is_hidden_attention_on_every_layer(pair):
    """Every Zamba2 layer's mixer is an SSM: method "auto" is its hidden attention, shared-attention layers too."""
    _, ours = pair
    tokens = _tokens(13, b=1, seed=16)
    # on shared-attention layers too; the shared block's softmax pattern is the map of method "attention" on
    # shared-attention layers only
    assert_interaction_map_per_layer_kind(ours, tokens)
    plain = [i for i, t in enumerate(ours.cfg.layer_types) if t == "ssm"]
    with pytest.raises(ValueError, match="method='attention'"):
        interaction_map(ours, tokens, layer=plain[0], method="attention")


def test_rollout_chains_shared_attention_then_ssm(pair):
    assert_rollout_mixes_layers(pair[1], _tokens(12, b=1, seed=9))


def test_lrp_conserves_with_biases_zeroed(pair):
    """MambaLRP on the SSM mixers, CP-LRP on the shared blocks' attention (LoRA adapters and the concatenated
    embeddings are linear), the gated rule on their MLPs; relevance reaches the embeddings by both paths."""
    assert_lrp_conserves(pair[1], _tokens(16, b=1, seed=7))


# --- decoding with the mixed cache ---------------------------------------------------------------
def test_greedy_generation_equals_full_forward_argmax(pair):
    assert_greedy_equals_argmax(pair[1], _tokens(7, b=1, seed=13))


@pytest.mark.parametrize("cut", [5, 9])
def test_continuing_from_a_state_equals_one_forward(pair, cut):
    _, ours = pair
    state = assert_continuation_equals_one_forward(ours, _tokens(14, b=2, seed=14), cut=cut, state=HybridState())
    assert len(state.keys) == len(ours.cfg.shared_attention_layers)  # one KV cache per use
    assert len(state.ssm) == ours.cfg.n_layers


def test_left_padded_generation_equals_masked_full_forward_argmax(pair):
    assert_left_padded_generation_matches(pair[1], _tokens(9, b=2, seed=15), pad=3, new=12)


def test_fused_attention_equals_the_pattern_path(pair):
    """Long forwards nobody observes the pattern of run PyTorch's fused attention: same logits (padding too)."""
    assert_fused_attention_matches(pair[1], _tokens(70, b=2, seed=21))
