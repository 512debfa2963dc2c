"""xLSTM (Hugging Face ``xLSTMForCausalLM``, model_type "xlstm", its native PyTorch backend): every block an
"mlstm" layer (hooks/mlstm.py) followed by a SwiGLU MLP, logits soft-capped. Parity with the installed HF forward
(saved folder and in-memory, lengths on and off the chunk, HF's "inference" mode (chunkwise + recurrent steps for
the rest) and "train" mode (chunkwise only), its long-input path through its cache, its own greedy decoding through
the recurrent step), our chunkwise and recurrent forms against HF's torch functions with an initial state, every
hook with its shape, the exact implicit attention (Σ_j A[i, j] v_j == hook_y ≤ 1e-5 relative, its normaliser ==
hook_normalizer) and its registry entry, LRP conservation, greedy = argmax, continuing from a state = one forward,
and a ``hook_state`` patch equals HF's recurrent step re-scanning from the patched state. Two tiny random variants:
"single" weights, q/k half as wide as v (qk_dim_factor 0.5), gate cap 15, logit cap 30, 3 layers; and "fused"
weights (split on loading), 4 heads, gate cap 5, logit cap 10, tie_word_embeddings True (which HF's xLSTM ignores:
no tied weights), its q/k/v widths multiples of 64, as HF's cache needs."""

from __future__ import annotations

import functools
from functools import partial

import pytest
import torch

from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_in_memory_model_matches_hf, assert_left_padded_generation_matches,
                           assert_lrp_conserves, assert_padded_batch_matches_hf,
                           assert_start_stop_at_layer, random_tokens, saved_pair, run_with_state_patch)
from interp.attention import interaction_map, rollout
from interp.attention.mlstm import mlstm_attention, mlstm_parameters, reconstruct_mlstm_y
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState
from interp.hooks.mlstm import MLSTMMixer, mlstm_chunkwise, mlstm_recurrent, normalizer, soft_cap

CHUNK = 8  # HF's chunk_size in these models: 16 is a multiple of it, 21 is not
TOL = 1e-4
V = 61
XLSTM_CONFIGS = {
    "single": dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_heads=2, qk_dim_factor=0.5,
                   v_dim_factor=1.0, ffn_proj_factor=2.667, ffn_round_up_to_multiple_of=16, gate_soft_cap=15.0,
                   output_logit_soft_cap=30.0),
    "fused": dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_heads=4, qk_dim_factor=1.0,
                  v_dim_factor=1.0, ffn_proj_factor=1.3, ffn_round_up_to_multiple_of=32, gate_soft_cap=5.0,
                  output_logit_soft_cap=10.0, weight_mode="fused", tie_word_embeddings=True),
}
_COMMON = dict(chunk_size=CHUNK, mode="inference", pad_token_id=0, eos_token_id=1, bos_token_id=2)
_MODELS: dict[str, tuple] = {}


def make_hf_xlstm(kind: str, seed: int = 0):
    """A random tiny xLSTMForCausalLM with non-trivial norms, input gates around 0 and forget gates spread over
    (0, 1), and O(1) logits."""
    from transformers import xLSTMConfig, xLSTMForCausalLM
    from transformers.initialization import no_init_weights

    torch.manual_seed(seed)
    cfg = xLSTMConfig(**{**XLSTM_CONFIGS[kind], **_COMMON})
    cfg.use_cache = kind == "fused"  # HF's cache is built with the rounded qk_head_dim: right for "fused" only
    with no_init_weights():  # HF's _init_weights fails on "fused" gates (a shape bug); every weight is drawn below
        model = xLSTMForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1, 0.2)
            elif "gate_preact" in name and name.endswith("bias"):
                p.normal_(1.0, 1.5)  # log f from about −3 to −0.01, ĩ around 0
            elif "embeddings" in name or "lm_head" in name:
                p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.25)
    return model.eval()


_hf = functools.cache(make_hf_xlstm)
_tokens = partial(random_tokens, V)


@pytest.fixture(params=list(XLSTM_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF xLSTMForCausalLM, ours loaded from its save_pretrained folder)."""
    return saved_pair(_MODELS, request.param, _hf, tmp_path_factory)


def _hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(tokens, use_cache=False).logits


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and c.hf_model_type == "xlstm" and c.ssm is None
    assert c.layer_types == ["mlstm"] * h.num_hidden_layers and c.mlp_sublayer and c.gated_mlp
    m = c.mlstm
    assert (m.n_heads, m.qk_dim, m.v_dim, m.gate_soft_cap, m.chunk_size, m.eps, m.norm_eps) == (
        h.num_heads, int(h.hidden_size * h.qk_dim_factor), int(h.hidden_size * h.v_dim_factor), h.gate_soft_cap,
        CHUNK, h.eps, h.norm_eps)
    assert c.d_mlp == hf.backbone.blocks[0].ffn.up_proj_dim and c.logits_soft_cap == h.output_logit_soft_cap
    assert not c.tie_embeddings and c.norm_eps == h.norm_eps  # HF's xLSTM ties nothing
    assert all(isinstance(block.ssm, MLSTMMixer) for block in ours.blocks)


def test_use_bias_is_refused():
    from transformers import xLSTMConfig

    with pytest.raises(ValueError, match="use_bias"):
        HybridConfig.from_hf(xLSTMConfig(**{**XLSTM_CONFIGS["single"], **_COMMON, "use_bias": True}))


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 16, 21])
def test_logits_match_hf(pair, L):
    """HF's "inference" mode: the chunkwise kernel over whole chunks, then its recurrent steps (21 = 2·8 + 5), a
    single step for one token."""
    hf, ours = pair
    tokens = _tokens(L)
    assert _hf_logits(hf, tokens).abs().max().item() > 1.0
    with torch.no_grad():
        assert (ours(tokens) - _hf_logits(hf, tokens)).abs().max().item() <= TOL


def test_logits_match_hf_train_mode_and_long_input_path(pair):
    """HF's "train" mode (chunkwise only, L a multiple of the chunk) at 16 positions; on "fused", HF's long-input
    path (``max_inference_chunksize`` 8 < L: blocks of 8 positions through its cache) at 21."""
    hf, ours = pair
    tokens = _tokens(16)
    hf.config.mode = "train"
    try:
        with torch.no_grad():
            assert (ours(tokens) - _hf_logits(hf, tokens)).abs().max().item() <= TOL
    finally:
        hf.config.mode = "inference"
    if hf.config.use_cache:
        tokens = _tokens(21, seed=4)
        hf.config.max_inference_chunksize = 8
        try:
            with torch.no_grad():
                assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= TOL
        finally:
            hf.config.max_inference_chunksize = 16384


def test_in_memory_and_padded_batch(pair):
    """The in-memory model; a left-padded batch equals HF's, which ignores attention_mask (so do we: padding tokens
    enter the recurrent state, as in HF)."""
    hf, ours = pair
    tokens = _tokens(13, b=3)
    assert_in_memory_model_matches_hf(hf, tokens[:2], kind=HookedHybrid, tol=TOL)
    assert_padded_batch_matches_hf(hf, ours, tokens, tol=TOL)
    assert_start_stop_at_layer(ours, tokens)


@pytest.mark.parametrize("L", [1, 8, 13])
def test_forms_equal_hf_torch_functions(L):
    """Our chunkwise and recurrent forms equal HF's ``mlstm_chunkwise_native_autograd`` (whole chunks) and
    ``mlstm_recurrent_sequence_native`` from a random initial state (C̃, ñ, m): outputs and final states."""
    from transformers.models.xlstm import modeling_xlstm as hx

    g = torch.Generator().manual_seed(L)
    b, H, dk, dv = 2, 3, 8, 6
    q, k = torch.randn(b, H, L, dk, generator=g), torch.randn(b, H, L, dk, generator=g)
    v = torch.randn(b, H, L, dv, generator=g)
    i, f = torch.randn(b, H, L, generator=g) * 3, torch.randn(b, H, L, generator=g) * 2 + 1
    C0, n0, m0 = torch.randn(b, H, dk, dv, generator=g), torch.randn(b, H, dk, generator=g).abs(), torch.randn(
        b, H, 1, generator=g)
    ours_in = (q.transpose(1, 2) * dk ** -0.5, k.transpose(1, 2), v.transpose(1, 2), i.transpose(1, 2),
               torch.nn.functional.logsigmoid(f).transpose(1, 2))
    refs = [(hx.mlstm_recurrent_sequence_native, partial(mlstm_recurrent))]
    if L % CHUNK == 0:
        refs.append((partial(hx.mlstm_chunkwise_native_autograd, chunk_size=CHUNK),
                     partial(mlstm_chunkwise, chunk_size=CHUNK)))
    else:  # no HF function takes a partial chunk: our chunkwise form against HF's recurrent one
        refs.append((hx.mlstm_recurrent_sequence_native, partial(mlstm_chunkwise, chunk_size=CHUNK)))
    for ref_fn, ours_fn in refs:
        h_ref, (C_ref, n_ref, m_ref) = ref_fn(q, k, v, i, f, c_initial=C0, n_initial=n0, m_initial=m0,
                                              return_last_states=True, eps=1e-6)
        num, qn, m, (C, n, m_last) = ours_fn(*ours_in, state=(C0, n0, m0[..., 0]))
        h = num / normalizer(qn, m, 1e-6)[..., None]
        torch.testing.assert_close(h, h_ref.transpose(1, 2), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close((C, n, m_last), (C_ref, n_ref, m_ref[..., 0]), atol=1e-5, rtol=1e-4)


def test_greedy_decoding_matches_hf(tmp_path_factory):
    """Our greedy continuation (a recurrent step per token) equals HF's ``generate`` (its cache and step kernel), on
    "fused" (HF's cache needs q/k widths that are multiples of 64)."""
    hf, ours = saved_pair(_MODELS, "fused", _hf, tmp_path_factory)
    prompt = _tokens(9, b=1, seed=4)  # a prompt whose continuation holds no eos_token_id (HF would stop there)
    ref = hf.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    out = ours.generate(prompt, max_new_tokens=16, stop_at_eos=False)
    assert ref.shape == (1, 25) and torch.equal(out, ref)


# --- hooks ------------------------------------------------------------------------------------------
def test_every_hook_fires_with_its_shape(pair):
    _, ours = pair
    tokens = _tokens(13)
    b, L = tokens.shape
    _, cache = ours.run_with_cache(tokens)
    assert set(cache.keys()) == set(ours.hook_dict)
    assert {n: tuple(t.shape) for n, t in cache.items()} == ours.hook_shapes(b, L)
    m, d = ours.cfg.mlstm, ours.cfg.d_model
    H = m.n_heads
    shapes = {"in": (b, L, d), "q": (b, L, H, m.d_k), "k": (b, L, H, m.d_k), "v": (b, L, H, m.d_v),
              "input_gate": (b, L, H), "decay": (b, L, H), "state": (b, L, H, m.d_k, m.d_v), "normalizer": (b, L, H),
              "y": (b, L, H, m.d_v), "z": (b, L, m.v_dim), "gated": (b, L, m.v_dim), "out": (b, L, d)}
    for i in range(ours.cfg.n_layers):
        c = lambda h: cache[f"blocks.{i}.ssm.hook_{h}"]  # noqa: E731
        assert {h: tuple(c(h).shape) for h in shapes} == shapes
        assert bool((c("decay") <= 0).all()) and bool((c("input_gate").abs() <= m.gate_soft_cap).all())
        assert bool((c("normalizer") > 0).all())
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mixer_out"], c("out"))
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_mid"],
                                   cache[f"blocks.{i}.hook_resid_pre"] + c("out"))
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"])
    torch.testing.assert_close(cache["unembed.hook_post_cap"],
                               ours.cfg.logits_soft_cap * torch.tanh(cache["unembed.hook_pre_cap"]
                                                                     / ours.cfg.logits_soft_cap))


def _hf_rescan(c, mixer, patch: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hook_y, C̃ [b, L, H, d_k, d_v]) by HF's ``mlstm_recurrent_step_native`` over the cached recurrence inputs,
    C̃ replaced at ``patch``'s positions (after that position's update, before the next)."""
    from transformers.models.xlstm.modeling_xlstm import mlstm_recurrent_step_native

    q, k, v, i = c("q"), c("k"), c("v"), c("input_gate")
    b, L, H, dk = q.shape
    with torch.no_grad():  # the soft-capped forget-gate pre-activation, whose logsigmoid HF's step takes
        f = soft_cap(mixer.fgate_preact(c("in")), mixer.cfg.gate_soft_cap)
    C, n, m = torch.zeros(b, H, dk, v.shape[-1]), torch.zeros(b, H, dk), torch.zeros(b, H, 1)
    ys, Cs = [], []
    for t in range(L):
        h, (C, n, m) = mlstm_recurrent_step_native(q[:, t], k[:, t], v[:, t], i[:, t, :, None], f[:, t, :, None],
                                                   C, n, m, eps=mixer.cfg.eps)
        if patch and t in patch:  # h_t already read C̃_t: recompute it from the patched state
            C = patch[t]
            qs = q[:, t] * dk ** -0.5
            h = (qs[..., None] * C).sum(-2) / normalizer((qs * n).sum(-1), m[..., 0], mixer.cfg.eps)[..., None]
        ys.append(h)
        Cs.append(C)
    return torch.stack(ys, 1), torch.stack(Cs, 1)


def test_state_hook_and_patch_equal_a_sequential_rescan(pair):
    """hook_state at the requested positions is HF's C̃ there; replacing it at one position changes hook_y as HF's
    recurrent step re-scanning from the patched state does (the change ≤ 1e-5 relative), and the edit reaches the
    logits."""
    _, ours = pair
    tokens = _tokens(21)
    layer, p = ours.cfg.n_layers - 1, 9
    names = [f"blocks.{layer}.ssm.hook_{h}" for h in ("in", "q", "k", "v", "input_gate", "y", "state")]
    with torch.no_grad():
        clean, cache = ours.run_with_cache(tokens, names_filter=names, state_positions=[3, p])
    c = lambda h: cache[f"blocks.{layer}.ssm.hook_{h}"]  # noqa: E731
    mixer = ours.blocks[layer].ssm
    assert c("state").shape[1] == 2
    ref, states = _hf_rescan(c, mixer)
    # the chunkwise form and HF's steps round differently: ~2e-5 of max |y| where a normaliser is near its floor
    assert ((c("y") - ref).abs().max() / ref.abs().max()).item() <= 1e-4
    torch.testing.assert_close(c("state"), states[:, [3, p]], atol=1e-5, rtol=1e-4)
    new = torch.randn(c("state")[:, 1].shape, generator=torch.Generator().manual_seed(1))

    patched, y = run_with_state_patch(ours, tokens, layer, p, new)
    ref_patched, _ = _hf_rescan(c, mixer, patch={p: new})
    effect, ref_effect = y - c("y"), ref_patched - ref  # the edit's effect (each form's rounding cancels)
    assert ((effect - ref_effect).abs().max() / ref_effect.abs().max()).item() <= 1e-5
    assert (effect[:, :p].abs().max() / c("y").abs().max()).item() <= 1e-5  # earlier positions: rounding only
    assert (patched[:, p:] - clean[:, p:]).abs().max().item() > 1e-3


# --- implicit attention -------------------------------------------------------------------------
def test_implicit_attention_is_exact(pair):
    """Σ_j A[i, j] v_j == hook_y (≤ 1e-5 relative), A's own normaliser == hook_normalizer, A lower triangular;
    interaction_map's per-head map on an mLSTM layer is A, "auto" picks it, and rollout chains the layers."""
    from interp.attention.methods import combine_layers, layer_kinds, layer_maps

    _, ours = pair
    tokens = _tokens(21)
    for layer in range(ours.cfg.n_layers):
        p = mlstm_parameters(ours, tokens, layer=layer)
        A = mlstm_attention(p.q, p.k, p.i, p.logf, eps=p.eps)
        torch.testing.assert_close(A, mlstm_attention(p.q, p.k, p.i, p.logf, normalizer=p.normalizer),
                                   atol=1e-6, rtol=1e-5)
        y = reconstruct_mlstm_y(A, p.v)
        assert ((y - p.y).norm() / p.y.norm()).item() <= 1e-5 and p.y.abs().max().item() > 0.1
        assert bool((A.triu(1) == 0).all())
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer, aggregate="none"), A)
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer), A.abs().mean(1))
    one = tokens[:1]
    assert layer_kinds(ours) == ["mlstm"] * ours.cfg.n_layers
    maps = [mlstm_attention(*(lambda p: (p.q, p.k, p.i, p.logf))(mlstm_parameters(ours, one, layer=l)),
                            eps=ours.cfg.mlstm.eps).abs().mean(1)[0] for l in range(ours.cfg.n_layers)]
    torch.testing.assert_close(combine_layers(layer_maps(ours, one, method="mlstm"), how="rollout"), rollout(maps),
                               atol=1e-5, rtol=1e-4)


# --- LRP, generation, decoding state ------------------------------------------------------------
def test_lrp_conserves(pair):
    _, ours = pair
    assert_lrp_conserves(ours, _tokens(13, b=1))


def test_greedy_equals_argmax(pair):
    _, ours = pair
    assert_greedy_equals_argmax(ours, _tokens(7, b=1, seed=5), new=24)
    assert_left_padded_generation_matches(ours, _tokens(9, seed=6))


def test_continuing_from_a_state_equals_one_forward(pair):
    _, ours = pair
    state = assert_continuation_equals_one_forward(ours, _tokens(21), cut=11, state=HybridState(), tol=TOL)
    m = ours.cfg.mlstm
    assert len(state.ssm) == len(state.conv) == ours.cfg.n_layers and state.offset == 21
    assert state.ssm[0].shape == (2, m.n_heads, m.d_k, m.d_v) and state.conv[0].shape == (2, m.n_heads, m.d_k + 1)
