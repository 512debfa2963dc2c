"""TransformerLens conventions on our SSMs and the transformer adapter: ActivationCache helpers with the SSM
meaning (decompositions that sum to the residual stream, apply_ln from the cached RMSNorm scale, logit_attrs that
reproduce the logit difference), model members (b_U, to_single_token, tokens_to_residual_directions,
loss_per_token, to_str_tokens(prepend_bos=)), run_with_cache(incl_bwd=True), and transformer_lens.patching /
utils.test_prompt run unmodified."""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stdout

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import patching
from transformer_lens.utilities.exploratory_utils import test_prompt as tl_test_prompt

from interp.hooks import HookedModel, HookedSSM, SSMConfig
from interp.hooks.cache import InterpActivationCache, NoSSMCounterpartError

from conftest import load_tokfsm

NAMES = ["tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer"]
SSM_NAMES = NAMES[:2]


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    return load_tokfsm(request.param)


@pytest.fixture(scope="module", params=SSM_NAMES)
def ssm_model(request):
    return load_tokfsm(request.param)


def tokens_for(model, b=3, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (b, L), generator=g)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def final_resid(model, cache):
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


# --------------------------------------------------------------------------------------------
# decompositions
# --------------------------------------------------------------------------------------------
def test_decompose_resid_sums_to_the_residual_stream(model):
    tokens = tokens_for(model)
    _, cache = model.run_with_cache(tokens)
    assert isinstance(cache, InterpActivationCache)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert stack.shape[0] == len(labels) and labels[0] == "embed"
    assert rel_err(stack.sum(0), final_resid(model, cache)) <= 1e-5
    for layer in range(model.cfg.n_layers):  # up to the input of each block
        part = cache.decompose_resid(layer)
        assert rel_err(part.sum(0), cache["resid_pre", layer]) <= 1e-5
    if isinstance(model, HookedSSM):
        assert labels == ["embed"] + [f"{l}_mixer_out" for l in range(model.cfg.n_layers)]


def test_logit_attrs_reproduce_the_logit_difference(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    right, wrong = torch.tensor([1, 4, 7]), torch.tensor([2, 5, 0])
    stack = cache.decompose_resid(pos_slice=-1)  # [n, b, d_model]
    attrs = cache.logit_attrs(stack, right, incorrect_tokens=wrong, pos_slice=-1)  # [n, b]
    bias = model.b_U[right] - model.b_U[wrong]
    ln_b = getattr(model.ln_final, "b", None)  # the transformer's final LayerNorm has a bias (zero for the SSMs)
    if ln_b is not None:
        bias = bias + ln_b @ (model.W_U[:, right] - model.W_U[:, wrong])
    else:
        assert torch.equal(model.b_U, torch.zeros_like(model.b_U))
    target = logits[torch.arange(3), -1, right] - logits[torch.arange(3), -1, wrong]
    torch.testing.assert_close(attrs.sum(0) + bias, target, atol=1e-4, rtol=0)
    # the full decomposition (per head / channel) gives the same total
    full = cache.get_full_resid_decomposition(pos_slice=-1, expand_neurons=False)
    attrs_full = cache.logit_attrs(full, right, incorrect_tokens=wrong, pos_slice=-1)
    torch.testing.assert_close(attrs_full.sum(0) + bias, target, atol=1e-4, rtol=0)


def test_logit_attrs_on_a_folded_transformer_need_only_b_U():
    """TransformerLens's own convention: with the final LayerNorm folded (fold_ln), Σ logit_attrs + b_U = logit."""
    model = copy.deepcopy(load_tokfsm("tokfsm-transformer"))
    model.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    assert not hasattr(model.ln_final, "w")
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), torch.tensor([1, 4, 7]), pos_slice=-1)
    target = logits[torch.arange(3), -1, torch.tensor([1, 4, 7])]
    torch.testing.assert_close(attrs.sum(0) + model.b_U[torch.tensor([1, 4, 7])], target, atol=1e-4, rtol=0)


@pytest.mark.parametrize("expand_neurons", [True, False])
def test_full_resid_decomposition_of_an_ssm(ssm_model, expand_neurons):
    cfg = ssm_model.cfg
    tokens = tokens_for(ssm_model)
    _, cache = ssm_model.run_with_cache(tokens)
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, return_labels=True)
    per_block = cfg.d_inner if expand_neurons else len(cfg.out_groups())
    assert cfg.family == "mamba1" or expand_neurons or per_block == cfg.n_heads  # Mamba-2: one row per head
    assert len(labels) == stack.shape[0] == cfg.n_layers * per_block + 2
    assert labels[-2:] == ["embed", "bias"]
    tag = "C" if expand_neurons else ("H" if cfg.family == "mamba2" else "G")
    assert labels[0] == f"L0{tag}0" and labels[per_block] == f"L1{tag}0"
    assert rel_err(stack.sum(0), final_resid(ssm_model, cache)) <= 1e-5
    # each block's rows sum to its mixer output (no out_proj bias here)
    for l in range(cfg.n_layers):
        rows = stack[l * per_block:(l + 1) * per_block]
        assert rel_err(rows.sum(0), cache["mixer_out", l]) <= 1e-5
    # up to a middle layer, and projected onto a direction (folded into W_out first), with apply_ln
    mid = cache.get_full_resid_decomposition(2, expand_neurons=expand_neurons)
    assert rel_err(mid.sum(0), cache["resid_pre", 2]) <= 1e-5
    v = torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(1))
    proj = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, project_output_onto=v, apply_ln=True)
    torch.testing.assert_close(proj, cache.apply_ln_to_stack(stack) @ v, atol=1e-4, rtol=1e-4)


def test_stack_head_results_of_an_ssm(ssm_model):
    cfg = ssm_model.cfg
    _, cache = ssm_model.run_with_cache(tokens_for(ssm_model))
    stack, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert labels[-1] == "remainder" and len(labels) == cfg.n_layers * len(cfg.out_groups()) + 1
    assert rel_err(stack.sum(0), final_resid(ssm_model, cache)) <= 1e-5
    # the remainder is the embedding (no out_proj bias)
    assert rel_err(stack[-1], cache["hook_embed"]) <= 1e-5
    groups = cache.stack_head_results(1, group_size=32)
    assert groups.shape[0] == cfg.d_inner // 32


def test_out_groups():
    m1 = SSMConfig(family="mamba1", d_model=20, n_layers=1, vocab_size=5, d_inner=40)
    assert m1.out_groups() == [(0, 16), (16, 32), (32, 40)]
    assert m1.out_groups(20) == [(0, 20), (20, 40)]
    m2 = SSMConfig(family="mamba2", d_model=32, n_layers=1, vocab_size=5, head_dim=16)
    assert m2.out_groups() == [(0, 16), (16, 32), (32, 48), (48, 64)]


# --------------------------------------------------------------------------------------------
# norms
# --------------------------------------------------------------------------------------------
def test_apply_ln_uses_the_cached_rmsnorm_scale(ssm_model):
    cfg = ssm_model.cfg
    _, cache = ssm_model.run_with_cache(tokens_for(ssm_model))
    assert cache["ln_final.hook_scale"].shape == (3, 9, 1)
    # dividing the stream by the cached scale is the norm's output before its weight
    resid = final_resid(ssm_model, cache)
    torch.testing.assert_close(cache.apply_ln_to_stack(resid[None])[0], cache["ln_final.hook_normalized"])
    for l in range(cfg.n_layers):
        torch.testing.assert_close(cache.apply_ln_to_stack(cache["resid_pre", l][None], l)[0],
                                   cache["normalized", l])
    with pytest.raises(NotImplementedError, match="no ln2"):
        cache.apply_ln_to_stack(resid[None], 1, mlp_input=True)


def test_accumulated_resid_with_apply_ln_is_the_logit_lens(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    acc, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert labels[-1] == "final_post" and acc.shape[0] == model.cfg.n_layers + 1
    torch.testing.assert_close(acc[-1] @ model.W_U + model.b_U, logits, atol=1e-4, rtol=1e-4)
    # an intermediate row is that layer's stream through the final norm
    torch.testing.assert_close(acc[1], model.ln_final(cache["resid_pre", 1]), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# cache keys
# --------------------------------------------------------------------------------------------
def test_shorthand_reaches_the_mixer_hooks(ssm_model):
    _, cache = ssm_model.run_with_cache(tokens_for(ssm_model))
    n = ssm_model.cfg.n_layers
    assert cache["dt", 3] is cache["blocks.3.ssm.hook_dt"]
    assert cache["dt3"] is cache["blocks.3.ssm.hook_dt"]
    assert cache["state", -1] is cache[f"blocks.{n - 1}.ssm.hook_state"]
    assert cache["z", 0] is cache["blocks.0.ssm.hook_z"]  # not TransformerLens's attn.hook_z
    assert cache["scale", 2] is cache["blocks.2.ln1.hook_scale"]
    assert cache["resid_pre", 1] is cache["blocks.1.hook_resid_pre"]
    assert cache["mixer_out", 1] is cache["blocks.1.hook_mixer_out"]
    for key in [("resid_mid", 0), ("attn_out", 1), ("mlp_out", 0), ("pattern", 0), ("q", 2, "attn")]:
        with pytest.raises(NoSSMCounterpartError, match="no counterpart in an SSM"):
            cache[key]
    with pytest.raises(KeyError):  # code that probes a cache with `except KeyError` keeps working
        cache["resid_mid", 0]
    _, part = ssm_model.run_with_cache(tokens_for(ssm_model), names_filter="blocks.0.ssm.hook_dt")
    with pytest.raises(KeyError, match="names_filter"):
        part["dt", 1]
    with pytest.raises(NotImplementedError, match="attention / MLP split"):
        cache.decompose_resid(mode="attn")
    assert isinstance(cache.apply_slice_to_batch_dim(0), InterpActivationCache)


# --------------------------------------------------------------------------------------------
# model members
# --------------------------------------------------------------------------------------------
def test_model_members(model):
    assert isinstance(model, HookedModel)
    assert model.b_U.shape == (model.cfg.d_vocab,)
    if isinstance(model, HookedSSM):
        assert not model.b_U.any()
    assert model.to_single_token("7") == model.to_tokens("7", prepend_bos=False).item()
    with pytest.raises((ValueError, AssertionError)):
        model.to_single_token("71")
    w = model.ln_final.weight if isinstance(model, HookedSSM) else model.ln_final.w
    dirs = model.tokens_to_residual_directions(torch.tensor([[1, 2], [3, 4]]))
    assert dirs.shape == (2, 2, model.cfg.d_model)
    torch.testing.assert_close(dirs[1, 0], w * model.W_U[:, 3])
    torch.testing.assert_close(model.tokens_to_residual_directions("3"), dirs[1, 0])
    torch.testing.assert_close(model.tokens_to_residual_directions(torch.tensor(3)), dirs[1, 0])
    # str tokens, with and without BOS; a 0-dim id decodes
    assert model.to_str_tokens("012", prepend_bos=False) == ["0", "1", "2"]
    assert model.to_str_tokens("012", prepend_bos=True) == ["<bos>", "0", "1", "2"]
    assert model.to_str_tokens(["01", "2"], prepend_bos=False) == [["0", "1"], ["2"]]
    assert model.to_string(torch.tensor(5)) == "5"


def test_loss_per_token(model):
    tokens = tokens_for(model)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (3, 8)
    torch.testing.assert_close(per_token.mean(), model(tokens, return_type="loss"))
    logits = model(tokens)
    manual = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(per_token, manual, atol=1e-5, rtol=1e-5)
    mask = torch.ones_like(tokens)
    mask[0, -3:] = 0  # right padding: predictions into or from the pads count 0
    masked = model(tokens, return_type="loss", loss_per_token=True, attention_mask=mask)
    assert not masked[0, -3:].any() and masked[0, :-3].all()


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------
def test_run_with_cache_incl_bwd(model):
    tokens = tokens_for(model)
    names = ["hook_embed", "blocks.1.hook_resid_pre", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter=names)
    assert set(cache.keys()) == set(names) | {n + "_grad" for n in names}
    # the cached gradient of the final residual stream = autograd through the final norm and unembedding
    resid = cache[names[-1]].clone().requires_grad_(True)
    logits = model.unembed(model.ln_final(resid))
    ref_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
    (grad,) = torch.autograd.grad(ref_loss, resid)
    torch.testing.assert_close(ref_loss, loss.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache[names[-1] + "_grad"], grad, atol=1e-6, rtol=1e-4)
    assert cache["blocks.1.hook_resid_pre_grad"].shape == cache["blocks.1.hook_resid_pre"].shape
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="return_type='loss'"):
        model.run_with_cache(tokens, incl_bwd=True, names_filter=names)
    assert not any(hp._backward_hooks or hp._forward_hooks for hp in model.hook_dict.values())


def test_state_gradients(ssm_model):
    """hook_state's gradient (incl_bwd) is the loss's gradient with respect to an edit of the state, and a
    backward hook alone on hook_state fires."""
    tokens = tokens_for(ssm_model, b=2, L=7)
    name = "blocks.1.ssm.hook_state"
    _, cache = ssm_model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter=name,
                                        state_positions=[2, 5])
    grad = cache[name + "_grad"]
    assert grad.shape == cache[name].shape and grad.shape[1] == 2 and grad.abs().sum() > 0
    # finite difference along the gradient: edit the state at those positions by eps * grad
    eps = 1e-3

    def loss_with_edit(scale):
        def edit(h, hook):
            return h + scale * grad

        return ssm_model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(name, edit)],
                                        state_positions=[2, 5]).detach().double()

    slope = (loss_with_edit(eps) - loss_with_edit(-eps)) / (2 * eps)
    assert abs(float(slope) - float((grad.double() ** 2).sum())) <= 2e-2 * float((grad.double() ** 2).sum())
    seen = []
    with ssm_model.hooks(bwd_hooks=[(name, lambda g, hook: seen.append(g.shape))]):
        ssm_model(tokens, return_type="loss", state_positions="last").backward()
    ssm_model.zero_grad(set_to_none=True)
    assert seen == [(2, 1, ssm_model.cfg.H, ssm_model.cfg.P, ssm_model.cfg.d_state)]


# --------------------------------------------------------------------------------------------
# TransformerLens functions, unmodified
# --------------------------------------------------------------------------------------------
def test_transformer_lens_patching_runs(model):
    """get_act_patch_resid_pre on a corrupted prompt that differs from the clean one at the last token only: by
    causality, patching a position before it changes nothing (corrupted metric) and patching the last position at
    layer 0 restores the clean run (clean metric)."""
    clean = tokens_for(model, b=1, L=6, seed=3)
    corrupted = clean.clone()
    corrupted[0, -1] = (clean[0, -1] + 1) % 10

    def metric(logits):
        return logits[0, -1, 1] - logits[0, -1, 2]

    clean_logits, cache = model.run_with_cache(clean)
    out = patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    assert out.shape == (model.cfg.n_layers, 6)
    corrupted_metric = metric(model(corrupted))
    torch.testing.assert_close(out[:, :-1], corrupted_metric.detach().expand(model.cfg.n_layers, 5),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, -1], metric(clean_logits).detach().expand(model.cfg.n_layers),
                               atol=1e-4, rtol=0)
    if isinstance(model, HookedSSM):
        with pytest.raises(NotImplementedError, match="no counterpart in an SSM"):
            patching.get_act_patch_resid_mid(model, corrupted, cache, metric)
        with pytest.raises(NotImplementedError, match="no counterpart in an SSM"):
            patching.get_act_patch_block_every(model, corrupted, cache, metric)


def test_transformer_lens_test_prompt_runs(model):
    buf = io.StringIO()
    with redirect_stdout(buf):
        tl_test_prompt("0123", "4", model, prepend_space_to_answer=False)
    text = buf.getvalue()
    assert "Tokenized prompt: ['<bos>', '0', '1', '2', '3']" in text and "Ranks of the answer tokens" in text
