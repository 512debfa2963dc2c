"""The fused inference forward of TransformerLens blocks (interp.hooks.transformer_fused).

Reference: the same model with the fused path switched off (TransformerLens's step-by-step block), and Hugging
Face's GPT-2. Each test checks that the fused path really ran (or really did not) by counting calls of
``fused_block_forward``."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformerConfig

import interp
from interp.hooks import transformer_fused
from interp.hooks.transformer import HookedTransformerModel
from interp.hooks.transformer_fused import FUSED_HOOKS, unsupported_reason

VOCAB, L = 50, 12


def make_model(seed: int = 0, **overrides) -> HookedTransformerModel:
    """A small random model; every parameter (norm weights and biases included) non-trivial."""
    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=VOCAB, n_ctx=32, act_fn="gelu_new",
               normalization_type="LN", device="cpu", seed=seed)
    cfg.update(overrides)
    model = HookedTransformerModel(HookedTransformerConfig(**cfg)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".w", "W_E", "W_pos", "W_U")) or p.dim() == 1 or "b_" in name:
                base = 1.0 if name.endswith(".w") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tokens(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, L), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts fused block forwards (the real function runs)."""
    calls = []
    real = transformer_fused.fused_block_forward

    def counting(block, resid):
        calls.append(block)
        return real(block, resid)

    monkeypatch.setattr(transformer_fused, "fused_block_forward", counting)
    return calls


def step_by_step(model, *args, **kwargs):
    model.set_fused_inference(False)
    try:
        return model(*args, **kwargs)
    finally:
        model.set_fused_inference(True)


CONFIGS = {
    "gpt2-like": {},
    "ln-pre gelu": dict(normalization_type="LNPre", act_fn="gelu"),
    "rms silu": dict(normalization_type="RMS", act_fn="silu"),
    "rms-pre relu": dict(normalization_type="RMSPre", act_fn="relu"),
    "gelu_fast, 1/layer scale": dict(act_fn="gelu_fast", scale_attn_by_inverse_layer_idx=True),
    "gelu_pytorch_tanh, no attn scale": dict(act_fn="gelu_pytorch_tanh", use_attn_scale=False),
    "attention only": dict(attn_only=True),
    "rotary, parallel (gpt-neox)": dict(positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True,
                                        act_fn="gelu"),
    "rotary, adjacent pairs (gpt-j)": dict(positional_embedding_type="rotary", rotary_dim=8,
                                           rotary_adjacent_pairs=True, parallel_attn_mlp=True),
    "float64": dict(dtype=torch.float64),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_fused_logits_equal_step_by_step(name, mode, fused_calls):
    model = make_model(**CONFIGS[name])
    assert unsupported_reason(model.blocks[0]) is None
    x = tokens()
    with getattr(torch, mode)():
        ref = step_by_step(model, x)
        assert not fused_calls
        got = model(x)
    assert len(fused_calls) == model.cfg.n_layers
    scale = ref.abs().max()
    tol = 1e-12 if model.cfg.dtype == torch.float64 else 1e-5
    assert (got - ref).abs().max() <= tol * scale, name


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox"])
def test_fused_blocks_match_hugging_face(kind, fused_calls):
    from test_transformer import make_hf, tokens_for

    hf = make_hf(kind)
    model = interp.load(hf)
    x = tokens_for(L=20)
    with torch.no_grad():
        ref = hf(x).logits
        got = model(x)
    assert len(fused_calls) == model.cfg.n_layers
    assert (got - ref).abs().max() <= 1e-4


def test_fused_hooks_fire_with_step_by_step_values(fused_calls):
    model, x = make_model(), tokens()
    names = [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers) for h in FUSED_HOOKS]
    with torch.inference_mode():
        model.set_fused_inference(False)
        _, ref = model.run_with_cache(x, names_filter=names)
        model.set_fused_inference(True)
        assert not fused_calls
        _, got = model.run_with_cache(x, names_filter=names)
    assert len(fused_calls) == model.cfg.n_layers
    for n in names:
        assert (got[n] - ref[n]).abs().max() <= 1e-5 * ref[n].abs().max(), n


def test_edits_at_fused_hooks_propagate(fused_calls):
    """Zero-ablating block 0's attention output and adding a vector to block 1's resid_mid: same logits as
    with the same edits on the step-by-step path."""
    model, x = make_model(), tokens()
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    hooks = [("blocks.0.hook_attn_out", lambda a, hook: torch.zeros_like(a)),
             ("blocks.1.hook_resid_mid", lambda a, hook: a + direction)]
    with torch.no_grad():
        clean = model(x)
        model.set_fused_inference(False)
        ref = model.run_with_hooks(x, fwd_hooks=hooks)
        model.set_fused_inference(True)
        got = model.run_with_hooks(x, fwd_hooks=hooks)
    assert len(fused_calls) == 2 * model.cfg.n_layers  # the clean run and the edited one
    assert (ref - clean).abs().max() > 0.1  # the edits matter
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_a_watched_internal_hook_runs_that_block_step_by_step(fused_calls):
    model, x = make_model(), tokens()
    with torch.no_grad():
        ref_logits = step_by_step(model, x)
        model.set_fused_inference(False)
        _, ref = model.run_with_cache(x, names_filter=["blocks.0.attn.hook_pattern"])
        model.set_fused_inference(True)
        logits, got = model.run_with_cache(x, names_filter=["blocks.0.attn.hook_pattern"])
    assert fused_calls == [model.blocks[1]]  # block 0 is watched, block 1 is not
    assert torch.equal(got["blocks.0.attn.hook_pattern"], ref["blocks.0.attn.hook_pattern"])
    assert (logits - ref_logits).abs().max() <= 1e-5 * ref_logits.abs().max()

    handle = model.blocks[1].mlp.register_forward_hook(lambda *a: None)  # a plain torch module hook counts too
    try:
        fused_calls.clear()
        with torch.no_grad():
            model(x)
        assert fused_calls == [model.blocks[0]]
    finally:
        handle.remove()


def test_gradients_through_the_fused_path(fused_calls):
    """With gradients on, the fused path gives bitwise the values of the no-gradient run and the gradients of
    the step-by-step path (to float32 rounding); a backward hook at a fused hook point fires."""
    model, x = make_model(), tokens()
    with torch.no_grad():
        no_grad = model(x)
    seen = []
    model.add_hook("blocks.0.hook_resid_mid", lambda g, hook: seen.append(g[0] if isinstance(g, tuple) else g),
                   dir="bwd")
    try:
        logits = model(x)
        logits[:, -1, 0].sum().backward()
    finally:
        model.reset_hooks()
    assert len(fused_calls) == 2 * model.cfg.n_layers
    assert torch.equal(logits.detach(), no_grad)
    assert len(seen) == 1 and seen[0].shape == (3, L, 32)
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    step_by_step(model, x)[:, -1, 0].sum().backward()
    scale = max(float(p.grad.abs().max()) for p in model.parameters())  # b_K's gradient is 0 up to rounding
    for n, p in model.named_parameters():
        assert (fused[n] - p.grad).abs().max() <= 1e-5 * scale, n


def test_cached_rows_are_not_overwritten_by_the_next_forward():
    """The workspace holds only intermediates no hook sees: activations cached from one batch stay intact
    after the next batch runs (inference mode, then no_grad: separate workspaces)."""
    model = make_model()
    names = [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers) for h in FUSED_HOOKS]
    with torch.inference_mode():
        _, first = model.run_with_cache(tokens(seed=0), names_filter=names)
        kept = {n: first[n].clone() for n in names}
        model(tokens(seed=1))
    with torch.no_grad():  # an inference tensor in the workspace must not be written outside inference mode
        model(tokens(seed=2))
    for n in names:
        assert torch.equal(first[n], kept[n]), n


def test_a_forward_inside_a_hook_does_not_disturb_the_outer_one(fused_calls):
    """Hooks fire only between workspace uses: another model of the same shape (same per-thread workspace)
    run from inside every fused hook leaves the outer forward's result unchanged."""
    model, other, x = make_model(), make_model(seed=1), tokens()
    inner = tokens(seed=5)

    def run_inner(a, hook):
        other(inner)
        return a

    with torch.no_grad():
        ref = model(x)
        got = model.run_with_hooks(x, fwd_hooks=[(f"blocks.{i}.{h}", run_inner) for i in range(2)
                                                  for h in FUSED_HOOKS])
    assert len(fused_calls) == 2 * 2 + 10 * 2  # outer: two forwards; inner: ten forwards of two blocks
    assert torch.equal(got, ref)


@pytest.mark.parametrize("overrides, reason", [
    (dict(positional_embedding_type="alibi"), "positional_embedding_type"),
    (dict(n_key_value_heads=2), "n_key_value_heads"),
    (dict(act_fn="solu_ln"), "act_fn"),
    (dict(attn_scores_soft_cap=5.0), "attn_scores_soft_cap"),
    (dict(use_local_attn=True, window_size=4, attn_types=["local", "global"]), "use_local_attn"),
])
def test_unsupported_configs_run_step_by_step(overrides, reason, fused_calls):
    model, x = make_model(**overrides), tokens()
    assert reason in unsupported_reason(model.blocks[0])
    with torch.no_grad():
        got = model(x)
        ref = step_by_step(model, x)
    assert not fused_calls
    assert torch.equal(got, ref)


def test_padding_and_kv_cache_run_step_by_step(fused_calls):
    model, x = make_model(), tokens()
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    with torch.no_grad():
        got = model(x, attention_mask=mask)
        assert not fused_calls
        ref = step_by_step(model, x, attention_mask=mask)
        assert torch.equal(got, ref)
        model(x, attention_mask=torch.ones_like(x))  # an all-ones mask is no mask
        assert len(fused_calls) == model.cfg.n_layers
        fused_calls.clear()
        out = model.generate(x[:1, :4], max_new_tokens=3, do_sample=False, verbose=False)
    assert out.shape[-1] == 7
    assert not fused_calls  # prefill and decoding carry a key/value cache


def test_a_config_switched_on_later_takes_effect():
    model, x = make_model(), tokens()
    with torch.no_grad():
        model(x)
        model.set_use_attn_result(True)
        _, cache = model.run_with_cache(x, names_filter=["blocks.1.attn.hook_result"])
    assert cache["blocks.1.attn.hook_result"].shape == (3, L, 4, 32)


def test_large_buffers_are_not_kept(monkeypatch, fused_calls):
    """Past WORKSPACE_KEEP_BYTES a buffer is allocated per call and dropped, with the same values."""
    model, x = make_model(), tokens(batch=8)  # qkv 96 x 96 and hidden 96 x 64 floats; packed W_QKV 32 x 96
    with torch.no_grad():
        ref = model(x)
        transformer_fused.release_workspace()
        monkeypatch.setattr(transformer_fused, "WORKSPACE_KEEP_BYTES", 16384)  # W_QKV (12,288 bytes) fits
        got = model(x)
    kept = {key[0]: t.numel() for key, t in transformer_fused._WORKSPACE.store.items()}
    assert "mlp_hidden" not in kept and "qkv" not in kept and kept["w_qkv"] == 32 * 3 * 32
    assert torch.equal(got, ref)
