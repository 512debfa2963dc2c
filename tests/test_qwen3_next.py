"""Qwen3-Next (Hugging Face ``Qwen3NextForCausalLM``, model_type "qwen3_next") on HookedHybrid: Gated DeltaNet layers
("gated_deltanet", hooks/deltanet.py's mixer, β in [0, 1], the gated norm's eps = rms_norm_eps) and gated softmax
attention (o_proj reads z · sigmoid(gate): ``attention_output_gate``; q / k RMSNorm per head: ``qk_norm`` "head"; a
partial rotary embedding), every layer pre-norm with zero-centred RMSNorms (``norm_offset`` 1) and followed by a
dense gated MLP or a mixture of experts with a sigmoid-gated shared expert.

Checks: the fused-projection split (``in_proj_qkvz`` / ``in_proj_ba`` / the attention's query-and-gate ``q_proj``)
against HF's own reordering; logits parity with the installed HF forward (saved folder, in-memory model, lengths on
and off the chunk, HF's chunk, left-padded batch) and HF's greedy decoding (its recurrent path); attention patterns
= HF's eager weights; every hook fires with its shape; the exact implicit attention of each GDN layer reconstructs
hook_y; a hook_state patch equals a sequential re-scan; LRP conservation (the gates detached); greedy = argmax;
continuing from a decoding state = one forward; the size guard's estimate bounds the real count; save_pretrained
refuses. Two tiny random variants: GQA-like GDN heads (2 key heads, 4 value heads, d_v != d_k), GQA attention with
half the head rotated, MoE on every layer but one (``mlp_only_layers``) with renormalised top-k; and attention
first, equal GDN heads, conv width 3, MoE every second layer (``decoder_sparse_step`` 2) with unnormalised top-k,
attention biases, tied embeddings."""

from __future__ import annotations

import functools
from functools import partial

import pytest
import torch

from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_in_memory_model_matches_hf, assert_left_padded_generation_matches,
                           assert_logits_match_hf, assert_lrp_conserves, assert_padded_batch_matches_hf,
                           assert_pattern_equals_hf, assert_start_stop_at_layer, assert_state_patch_equals_rescan,
                           random_tokens, saved_pair)
from interp.attention import interaction_map
from interp.attention.deltanet import (delta_attention, delta_attention_direct, deltanet_parameters,
                                       reconstruct_delta_y)
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.deltanet import GatedDeltaNetMixer
from interp.hooks.hybrid import HybridState
from test_olmo_hybrid import _sequential as sequential_rescan  # the step-by-step GDN re-scan, shared

CHUNK = 8  # our chunk size here: 8 and 16 are multiples of it, 13 and 21 are not
TOL = 1e-4
V = 67
QWEN3_NEXT_CONFIGS = {
    "gqa-moe": dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, layer_types=["linear_attention", "full_attention",
                                                                    "linear_attention", "linear_attention"],
                    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                    linear_value_head_dim=6, linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=16, shared_expert_intermediate_size=24, decoder_sparse_step=1,
                    mlp_only_layers=[1], norm_topk_prob=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
                    pad_token_id=0, eos_token_id=1, bos_token_id=2),
    "sparse-step-tied": dict(vocab_size=V, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                             num_attention_heads=3, num_key_value_heads=3, head_dim=8,
                             layer_types=["full_attention", "linear_attention", "linear_attention"],
                             linear_num_key_heads=3, linear_num_value_heads=3, linear_key_head_dim=8,
                             linear_value_head_dim=8, linear_conv_kernel_dim=3, num_experts=3, num_experts_per_tok=2,
                             moe_intermediate_size=12, shared_expert_intermediate_size=20, decoder_sparse_step=2,
                             norm_topk_prob=False, attention_bias=True, tie_word_embeddings=True, pad_token_id=0,
                             eos_token_id=1, bos_token_id=2),
}
_MODELS: dict[str, tuple] = {}


def make_hf_qwen3_next(kind: str, seed: int = 0):
    """A random tiny Qwen3NextForCausalLM with non-trivial norms (zero-centred ones near 0, the GDN's gated norm
    near 1), decays spread over (0, 1), peaked attention and O(1) logits."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    torch.manual_seed(seed)
    model = Qwen3NextForCausalLM(Qwen3NextConfig(**QWEN3_NEXT_CONFIGS[kind]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.norm.weight"):  # Qwen3NextRMSNormGated: the weight itself
                p.normal_(1, 0.2)
            elif "norm" in name:  # Qwen3NextRMSNorm: gain 1 + weight
                p.normal_(0, 0.2)
            elif name.endswith("A_log"):
                p.uniform_(-2.0, 0.5)
            elif name.endswith("dt_bias") or name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "self_attn" in name:
                p.normal_(0, 0.25)
            elif "linear_attn" in name:
                p.normal_(0, 0.2)
            elif "mlp" in name:
                p.normal_(0, 0.15)
            elif "embed_tokens" in name:
                p.normal_(0, 0.4)
            elif "lm_head" in name:  # logits of O(5): the 1e-4 parity bound is not lost in their rounding
                p.normal_(0, 0.25)
    return model.eval()


def _prepare(ours) -> None:
    ours.cfg.delta.chunk_size = CHUNK  # the mixers share this config


@pytest.fixture(params=list(QWEN3_NEXT_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF Qwen3NextForCausalLM, ours loaded from its save_pretrained folder, chunk size CHUNK)."""
    return saved_pair(_MODELS, request.param, _hf, tmp_path_factory, prepare=_prepare)


_hf = functools.cache(make_hf_qwen3_next)
_tokens = partial(random_tokens, V)


def _delta_layers(model) -> list[int]:
    return [i for i, t in enumerate(model.cfg.layer_types) if t == "gated_deltanet"]


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and c.hf_model_type == "qwen3_next" and c.ssm is None
    kinds = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
    assert c.layer_types == [kinds[t] for t in h.layer_types] and c.post_norm_layers == []
    assert c.moe_layers == [i for i in range(h.num_hidden_layers) if i not in h.mlp_only_layers
                            and (i + 1) % h.decoder_sparse_step == 0]
    assert (c.qk_norm, c.attention_output_gate, c.norm_offset, c.moe_shared_mlp, c.moe_shared_gate) == (
        "head", True, 1.0, True, True)
    assert c.rotary_dim == int(h.head_dim * h.rope_parameters["partial_rotary_factor"]) < c.d_head
    assert (c.moe_d_mlp, c.moe_shared_d_mlp, c.moe_normalize_topk) == (
        h.moe_intermediate_size, h.shared_expert_intermediate_size, h.norm_topk_prob)
    d = c.delta
    assert (d.n_k_heads, d.n_v_heads, d.d_k, d.d_v, d.d_conv, d.beta_scale, d.gate_norm_eps, d.conv_bias) == (
        h.linear_num_key_heads, h.linear_num_value_heads, h.linear_key_head_dim, h.linear_value_head_dim,
        h.linear_conv_kernel_dim, 1.0, h.rms_norm_eps, False)
    for i, block in enumerate(ours.blocks):
        assert isinstance(getattr(block, "ssm", None), GatedDeltaNetMixer) == (i in _delta_layers(ours))
        moe = i in c.moe_layers
        assert hasattr(block, "moe") == moe and hasattr(block.mlp, "shared_expert_gate") == moe
        assert block.mlp.up_proj.out_features == (c.moe_shared_d_mlp if moe else c.d_mlp)


def test_unsupported_fields_are_refused():
    from transformers import Qwen3NextConfig

    base = QWEN3_NEXT_CONFIGS["gqa-moe"]
    with pytest.raises(ValueError, match="hidden_act"):
        HybridConfig.from_hf(Qwen3NextConfig(**{**base, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="rope_type"):
        HybridConfig.from_hf(Qwen3NextConfig(**{**base, "rope_parameters": {
            "rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}}))
    cfg = HybridConfig.from_hf(Qwen3NextConfig(**base))
    with pytest.raises(ValueError, match="moe_shared_mlp"):  # a shared expert's gate / width without the expert
        HybridConfig(**{**cfg.__dict__, "moe_shared_mlp": False})


def test_size_estimate_bounds_the_real_count(pair):
    """The model-size guard (read from config.json before anything is allocated) is an upper estimate, not wildly
    above the real count, experts and shared experts included."""
    from interp.hooks.loading import estimate_parameters

    hf, _ = pair
    true = sum(p.numel() for p in hf.parameters())
    assert true <= estimate_parameters(hf.config.to_dict()) <= 4 * true


def test_save_pretrained_refuses(pair, tmp_path):
    _, ours = pair
    with pytest.raises(ValueError, match="Qwen3-Next"):
        ours.save_pretrained(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_fused_projections_split_as_hf_orders_them(pair):
    """Our q/k/v/g/b/a_proj equal HF's ``fix_query_key_value_ordering`` of in_proj_qkvz / in_proj_ba, and our
    attention q_proj / gate_proj HF's per-head query / gate halves of q_proj (the split at load time). The inputs
    are the unit vectors, so each projection reads its weight exactly and the comparison is bit for bit."""
    hf, ours = pair
    x = torch.eye(ours.cfg.d_model)[None]  # [1, d_model "positions", d_model]
    with torch.no_grad():
        for i in _delta_layers(ours):
            ref, mine = hf.model.layers[i].linear_attn, ours.blocks[i].ssm
            q, k, v, z, b, a = ref.fix_query_key_value_ordering(ref.in_proj_qkvz(x), ref.in_proj_ba(x))
            for r, proj in ((q, mine.q_proj), (k, mine.k_proj), (v, mine.v_proj), (z, mine.g_proj),
                            (b, mine.b_proj), (a, mine.a_proj)):
                torch.testing.assert_close(proj(x), r.flatten(2), rtol=0, atol=0)
        for i in ours.cfg.attention_layers:
            ref, mine = hf.model.layers[i].self_attn, ours.blocks[i].attn
            query, gate = ref.q_proj(x).view(*x.shape[:2], -1, 2 * ours.cfg.d_head).chunk(2, dim=-1)
            torch.testing.assert_close(mine.q_proj(x), query.flatten(2), rtol=0, atol=0)
            torch.testing.assert_close(mine.gate_proj(x), gate.flatten(2), rtol=0, atol=0)


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [16, 21])
def test_logits_match_hf(pair, L):
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L), tol=TOL, min_scale=1.0)


def test_logits_match_hf_at_hf_chunk_size(pair):
    """With HF's chunk (64) too, at 70 positions (one full chunk and a partial one)."""
    hf, ours = pair
    ours.cfg.delta.chunk_size = 64
    try:
        assert_logits_match_hf(hf, ours, _tokens(70, b=1), tol=TOL)
    finally:
        ours.cfg.delta.chunk_size = CHUNK


def test_in_memory_and_padded_batch(pair):
    hf, ours = pair
    assert_in_memory_model_matches_hf(hf, _tokens(13), kind=HookedHybrid, tol=TOL)
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3), tol=TOL)


def test_attention_pattern_and_start_stop(pair):
    hf, ours = pair
    tokens = _tokens(11)
    assert_pattern_equals_hf(hf, ours, tokens, layers=ours.cfg.attention_layers)
    assert_start_stop_at_layer(ours, tokens)


def test_greedy_decoding_matches_hf(pair):
    """Our greedy continuation (a recurrent step per token) equals HF's ``generate`` (its cache and recurrent path)."""
    hf, ours = pair
    prompt = _tokens(9, b=1, seed=3)
    ref = hf.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    out = ours.generate(prompt, max_new_tokens=16, stop_at_eos=False)
    assert torch.equal(out, ref)


# --- hooks ------------------------------------------------------------------------------------------
def test_every_hook_fires_with_its_shape(pair):
    _, ours = pair
    tokens = _tokens(13)
    b, L = tokens.shape
    c, d = ours.cfg, ours.cfg.delta
    _, cache = ours.run_with_cache(tokens)
    assert set(cache.keys()) == set(ours.hook_dict)
    assert {n: tuple(t.shape) for n, t in cache.items()} == ours.hook_shapes(b, L)
    shapes = {"in": (b, L, c.d_model), "conv": (b, L, d.conv_dim), "q": (b, L, d.n_k_heads, d.d_k),
              "k": (b, L, d.n_k_heads, d.d_k), "v": (b, L, d.n_v_heads, d.d_v), "beta": (b, L, d.n_v_heads),
              "decay": (b, L, d.n_v_heads), "state": (b, L, d.n_v_heads, d.d_k, d.d_v),
              "y": (b, L, d.n_v_heads, d.d_v), "z": (b, L, d.value_dim), "gated": (b, L, d.value_dim),
              "out": (b, L, c.d_model)}
    for i in _delta_layers(ours):
        g = lambda h: cache[f"blocks.{i}.ssm.hook_{h}"]  # noqa: E731
        assert {h: tuple(g(h).shape) for h in shapes} == shapes
        assert bool((g("decay") <= 0).all()) and bool((g("beta") >= 0).all() & (g("beta") <= 1).all())
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mixer_out"], g("out"))
    for i in c.attention_layers:
        a = lambda h: cache[f"blocks.{i}.attn.hook_{h}"]  # noqa: E731
        assert a("q").shape == a("gate").shape == a("z").shape == (b, L, c.n_heads, c.d_head)
        assert cache[f"blocks.{i}.attn.q_norm.hook_scale"].shape == (b, L, c.n_heads, 1)
        gated = (a("z") * torch.sigmoid(a("gate"))).flatten(-2)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_attn_out"], ours.blocks[i].attn.o_proj(gated))
    for i in c.moe_layers:
        assert cache[f"blocks.{i}.mlp.hook_gate"].shape == (b, L, 1)
        assert cache[f"blocks.{i}.moe.hook_expert_weights"].shape == (b, L, c.n_experts_per_tok)
    for i, kind in enumerate(c.layer_types):  # pre-norm everywhere: the residual stream adds up
        out = cache[f"blocks.{i}.hook_{'mixer_out' if kind == 'gated_deltanet' else 'attn_out'}"]
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_mid"], cache[f"blocks.{i}.hook_resid_pre"] + out)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"])


def test_state_hook_and_patch_equal_a_sequential_rescan(pair):
    _, ours = pair
    assert_state_patch_equals_rescan(ours, _tokens(21), _delta_layers(ours)[0], sequential_rescan)


# --- implicit attention -------------------------------------------------------------------------
def test_implicit_attention_is_exact(pair):
    """A from the chunked form equals the direct definition; Σ_j A[i, j] v_j == hook_y (≤ 1e-5 relative);
    interaction_map's per-head map on a GDN layer is A."""
    _, ours = pair
    tokens = _tokens(21)
    for layer in _delta_layers(ours):
        p = deltanet_parameters(ours, tokens, layer=layer)
        A = delta_attention(p.q, p.k, p.g, p.beta, chunk_size=CHUNK)
        torch.testing.assert_close(A, delta_attention_direct(p.q, p.k, p.g, p.beta), atol=1e-5, rtol=1e-4)
        y = reconstruct_delta_y(A, p.v)
        assert ((y - p.y).norm() / p.y.norm()).item() <= 1e-5 and p.y.abs().max().item() > 0.1
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer, aggregate="none"), A)


# --- LRP, generation, decoding state ------------------------------------------------------------
def test_lrp_conserves(pair, monkeypatch):
    """Conservation ≤ 1e-4 with the attention and shared-expert sigmoid gates detached; without those two rules
    it fails (they are needed)."""
    import interp.lrp as lrp

    _, ours = pair
    tokens = _tokens(13, b=1)
    assert_lrp_conserves(ours, tokens)
    gates = [n for n in ours.hook_dict if n.endswith(("attn.hook_gate", "mlp.hook_gate"))]
    full = lrp.lrp_hooks
    assert gates and {n for n, _ in full(ours)} >= set(gates)
    monkeypatch.setattr(lrp, "lrp_hooks", lambda model: [(n, f) for n, f in full(model) if n not in gates])
    with lrp.zero_biases(ours):
        assert lrp.conservation_error(lrp.explain(ours, tokens)) > 1e-3


def test_greedy_equals_argmax(pair):
    _, ours = pair
    assert_greedy_equals_argmax(ours, _tokens(7, b=1, seed=5), new=24)
    assert_left_padded_generation_matches(ours, _tokens(9, seed=6))


def test_continuing_from_a_state_equals_one_forward(pair):
    _, ours = pair
    state = assert_continuation_equals_one_forward(ours, _tokens(21), cut=11, state=HybridState(), tol=TOL)
    d = ours.cfg.delta
    assert len(state.ssm) == len(state.conv) == len(_delta_layers(ours)) and state.offset == 21
    assert len(state.keys) == len(ours.cfg.attention_layers)
    assert state.ssm[0].shape == (2, d.n_v_heads, d.d_k, d.d_v)
