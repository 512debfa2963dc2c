"""interp.lrp: MambaLRP / CP-LRP through hooks, gradient × input, integrated gradients.

Tiny random models in float32 (their own precision). Measured with biases zeroed, argmax targets:
LRP conservation error <= 5e-7 for Mamba-1, Mamba-2 (1 and 2 groups), GPT-2 and GPT-NeoX, while
plain gradient × input is off by 90-130 %. The conservation bound asserted is 1e-5 (docs/design.md §3.7; the
issue asks 1e-4).
"""

from __future__ import annotations

import pytest
import torch

import interp
from conftest import make_hf_ssm
from interp.lrp import (
    Attribution, conservation_error, explain, interaction_rows, lrp_hooks, zero_biases,
)

SSM_KINDS = ["mamba1", "mamba2-g1", "mamba2-g2"]
ALL_KINDS = SSM_KINDS + ["gpt2", "neox"]
L = 16


def _make(kind: str):
    if kind in SSM_KINDS:
        return interp.load(make_hf_ssm(kind))
    torch.manual_seed(0)
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=61, n_positions=64))
    else:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        hf = GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                              intermediate_size=64, vocab_size=61, max_position_embeddings=64))
    with torch.no_grad():  # non-trivial biases and LayerNorm affine parameters
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif "ln" in name or "layernorm" in name:
                p.normal_(1, 0.2)
    return interp.load(hf.eval())


_CACHE: dict[str, object] = {}


@pytest.fixture(params=ALL_KINDS)
def model(request):
    if request.param not in _CACHE:
        _CACHE[request.param] = _make(request.param)
    return _CACHE[request.param]


@pytest.fixture(params=SSM_KINDS)
def ssm(request):
    if request.param not in _CACHE:
        _CACHE[request.param] = _make(request.param)
    return _CACHE[request.param]


def _tokens(seed: int = 1, length: int = L) -> torch.Tensor:
    return torch.randint(0, 61, (1, length), generator=torch.Generator().manual_seed(seed))


# --- (1) the modified forward computes the same values ------------------------------------------
def test_modified_forward_logits_equal_plain(model):
    tokens = _tokens()
    plain = model(tokens)
    hooks = lrp_hooks(model)
    assert {n for n, _ in hooks} <= set(model.hook_dict)
    modified = model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert (modified - plain).abs().max().item() <= 1e-5
    with model.hooks(fwd_hooks=lrp_hooks(model)):  # the context-manager form too
        assert torch.allclose(model(tokens), plain, atol=1e-5, rtol=0)


# --- (2) conservation with biases zeroed ---------------------------------------------------------
@pytest.mark.parametrize("position", [-1, 7])
def test_lrp_conserves_with_biases_zeroed(model, position):
    tokens = _tokens(2)
    with zero_biases(model) as names:
        assert names
        attr = explain(model, tokens, position=position)
        err = conservation_error(attr)
    assert err <= 1e-5, f"Σ R = {attr.relevance.sum().item():.6g}, logit = {attr.logit:.6g}, err {err:.2e}"
    if attr.relevance_pos_embed is not None:  # GPT-2
        # learned positions count as input: token relevance alone does not add up, both together do
        assert torch.allclose(attr.relevance, attr.relevance_embed.sum(-1) + attr.relevance_pos_embed.sum(-1))


def test_zero_biases_restores_parameters(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with zero_biases(model) as names:
        params = dict(model.named_parameters())
        assert all(not params[n].any() for n in names)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_lrp_does_not_conserve_with_biases(ssm):
    """Sanity of the check itself: with the conv biases present, relevance leaks to them."""
    attr = explain(ssm, _tokens(2))
    assert conservation_error(attr) > 1e-3


# --- (3) plain gradient × input does not conserve: the rules matter -----------------------------
def test_grad_x_input_does_not_conserve_for_mamba(ssm):
    tokens = _tokens(3)
    with zero_biases(ssm):
        lrp = conservation_error(explain(ssm, tokens, method="lrp"))
        gxi = explain(ssm, tokens, method="grad_x_input")
        gxi_err = conservation_error(gxi)
    assert gxi.method == "grad_x_input"
    assert gxi_err > 1e-2 and gxi_err > 100 * lrp, (gxi_err, lrp)


# --- (4) integrated gradients: completeness ----------------------------------------------------
def test_integrated_gradients_completeness_gpt2():
    model = _CACHE.get("gpt2") or _make("gpt2")
    attr = explain(model, _tokens(4), method="integrated_gradients", steps=32)
    assert attr.baseline_logit is not None and attr.relevance_pos_embed is None
    # Σ IG = logit(x) - logit(zero token embedding); midpoint rule, 32 steps (measured ~7e-5)
    assert conservation_error(attr) < 2e-3


@pytest.mark.parametrize("kind", SSM_KINDS)
def test_integrated_gradients_completeness_ssm(kind):
    """From a token baseline (pad-like): the zero embedding is a near-singular start for RMSNorm
    models (documented in explain); here the midpoint rule converges as expected."""
    model = _CACHE.setdefault(kind, _make(kind))
    tokens = _tokens(4)
    coarse = conservation_error(explain(model, tokens, method="integrated_gradients", steps=4, baseline=0))
    fine = explain(model, tokens, method="integrated_gradients", steps=32, baseline=0)
    assert conservation_error(fine) < 2e-3  # measured ~1e-4
    assert conservation_error(fine) < coarse
    # the baseline logit is the logit of the all-token-0 input embeddings
    with torch.no_grad():
        base = model(torch.zeros_like(tokens))[0, -1, fine.target].item()
    assert fine.baseline_logit == pytest.approx(base, rel=1e-5, abs=1e-6)


# --- (5) shapes, default target, causality -------------------------------------------------------
def test_shapes_default_target_and_causality(model):
    tokens = _tokens(5)
    d = model.W_E.shape[1]
    with torch.no_grad():
        logits = model(tokens)[0]
    for method in ("lrp", "grad_x_input"):
        attr = explain(model, tokens[0], method=method)  # [pos] tokens accepted too
        assert isinstance(attr, Attribution) and attr.method == method
        assert attr.relevance.shape == (L,) and attr.relevance_embed.shape == (L, d)
        assert attr.position == L - 1
        assert attr.target == int(logits[-1].argmax())
        assert attr.logit == pytest.approx(float(logits[-1, attr.target]), rel=1e-5, abs=1e-6)

    p = 6
    attr = explain(model, tokens, position=p, target=3)
    assert attr.target == 3 and attr.position == p
    assert attr.logit == pytest.approx(float(logits[p, 3]), rel=1e-5, abs=1e-6)
    assert torch.all(attr.relevance[p + 1:] == 0) and torch.all(attr.relevance_embed[p + 1:] == 0)
    assert attr.relevance[: p + 1].abs().sum() > 0
    # later tokens are ignored: same relevance as on the truncated sequence
    short = explain(model, tokens[:, : p + 1], target=3)
    assert torch.allclose(attr.relevance[: p + 1], short.relevance, rtol=1e-4, atol=1e-6)

    with pytest.raises(ValueError):
        explain(model, tokens, method="nope")
    with pytest.raises(IndexError):
        explain(model, tokens, position=L)


# --- (6) interaction rows ------------------------------------------------------------------------
def test_interaction_rows_match_explain(model):
    tokens = _tokens(6)
    positions = [0, 5, L - 1]
    rows = interaction_rows(model, tokens, positions=positions)
    assert rows.shape == (len(positions), L)
    for r, p in enumerate(positions):
        ref = explain(model, tokens, position=p).relevance
        assert torch.allclose(rows[r], ref, rtol=1e-4, atol=1e-6), (p, (rows[r] - ref).abs().max())
        assert torch.all(rows[r, p + 1:] == 0)
    full = interaction_rows(model, tokens, batch_size=5)  # full map, in chunks
    assert full.shape == (L, L) and torch.allclose(full[positions], rows, rtol=1e-4, atol=1e-6)
    assert torch.equal(full.triu(1), torch.zeros_like(full))  # causal
    assert torch.equal(interaction_rows(model, tokens, positions=[-1]), rows[-1:])  # negative: from the end
    with pytest.raises(IndexError, match="positions"):
        interaction_rows(model, tokens, positions=[L])


def test_one_sequence_at_a_time(model):
    """explain / interaction_rows take one sequence: a batch is refused naming tokens, its shape and what to do."""
    batch = _tokens(8).repeat(2, 1)
    for fn in (explain, interaction_rows):
        with pytest.raises(ValueError, match=rf"tokens of shape \(2, {L}\): loop over the rows"):
            fn(model, batch)
    with pytest.raises(TypeError):
        explain(model, batch[:1], 3)  # target and the rest are keyword-only


def test_lrp_conservation_float64():
    """Also in float64 (the SSM norms still round through float32, as in Hugging Face)."""
    for kind in ("mamba2-g2", "gpt2"):
        model = _make(kind).to(torch.float64)
        with zero_biases(model):
            assert conservation_error(explain(model, _tokens(7))) <= 1e-5
