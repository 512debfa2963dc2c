"""nnsight on our models: ``ssm.hook_state`` in a trace (read, edit, ``.grad``) with no TransformerLens hook
attached, backward hooks on the state alone, generation inside a trace, and the clear error of
``nnsight.LanguageModel``. References: ``run_with_cache``, TransformerLens hooks, ``interp.patching.run_patched``,
and autograd through a hand-written recurrence."""

from __future__ import annotations

import warnings

import pytest
import torch

import interp
import interp.hooks.mamba as mamba_module
from interp.patching import run_patched

nnsight = pytest.importorskip("nnsight")

SSMS = ["tokfsm-mamba", "tokfsm-mamba2"]


@pytest.fixture(scope="module", params=SSMS)
def ssm(request):
    model = interp.load(request.param)
    yield model
    model.reset_hooks(including_permanent=True)


@pytest.fixture(scope="module")
def transformer():
    return interp.load("tokfsm-transformer")


def tokens_for(model, L=10, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (b, L), generator=g)


@pytest.fixture
def count_materialised(monkeypatch):
    """How many times the scan materialised states: the real ``scan_with_states``, counted."""
    calls = [0]
    real = mamba_module.scan_with_states

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "scan_with_states", counted)
    return calls


# ------------------------------------------------------------------------------------------------
# reading and editing the state in a trace
# ------------------------------------------------------------------------------------------------
def test_state_read_in_a_trace_equals_run_with_cache(ssm):
    tokens = tokens_for(ssm)
    _, cache = ssm.run_with_cache(tokens, names_filter=lambda n: n.endswith("ssm.hook_state"))
    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens):
        states = nnsight.save([])
        for i in range(ssm.cfg.n_layers):
            states.append(wrapped.blocks[i].ssm.hook_state.output)
    for i, s in enumerate(states):
        cfg = ssm.cfg
        assert s.shape == (2, 10, cfg.H, cfg.P, cfg.d_state)  # every position at the default state_positions
        torch.testing.assert_close(s, cache[f"blocks.{i}.ssm.hook_state"], rtol=0, atol=0)
    assert not any(b.ssm.hook_state._forward_hooks for b in ssm.blocks)  # no dummy hook needed, none left


@pytest.mark.parametrize("p", [0, 4, 9])
def test_state_patch_in_a_trace_equals_run_patched_and_a_hook(ssm, p):
    """Patching the state at position p from a source prompt: nnsight's `.output[:, p] = ...` equals
    interp.patching.run_patched and a TransformerLens hook doing the same edit (the edit runs through the rest of
    the recurrence)."""
    tokens, source = tokens_for(ssm, seed=1), tokens_for(ssm, seed=2)
    hook = "blocks.1.ssm.hook_state"
    _, src_cache = ssm.run_with_cache(source, names_filter=hook)
    donor = src_cache[hook][:, p]
    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens):
        wrapped.blocks[1].ssm.hook_state.output[:, p] = donor
        logits = wrapped.output.save()

    def patch(state, hook):
        state = state.clone()
        state[:, p] = donor
        return state

    by_hook = ssm.run_with_hooks(tokens, fwd_hooks=[(hook, patch)])
    by_patching = run_patched(ssm, tokens, source=source, hook=hook, positions=[p])
    assert (logits - ssm(tokens)).abs().max() > 1e-3  # the edit changed something
    torch.testing.assert_close(logits, by_hook, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, by_patching, rtol=0, atol=1e-5)


def test_states_are_materialised_only_when_observed(ssm, count_materialised):
    tokens = tokens_for(ssm)
    ssm(tokens)
    assert count_materialised[0] == 0  # plain forward: the cheap scan
    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens):
        dt = wrapped.blocks[0].ssm.hook_dt.output.save()
    assert dt.shape[:2] == (2, 10) and count_materialised[0] == 0  # a trace that does not look at the state
    with wrapped.trace(tokens):
        s = wrapped.blocks[2].ssm.hook_state.output.save()
    assert s.shape[1] == 10 and count_materialised[0] == 1  # only the block looked at
    ssm(tokens)
    assert count_materialised[0] == 1  # and the plain forward stays cheap after a trace


def test_explicit_switch_fires_the_state_hook(ssm, count_materialised):
    mixer = ssm.blocks[0].ssm
    try:
        mixer.fire_state_hook = True
        ssm(tokens_for(ssm))
    finally:
        mixer.fire_state_hook = False
    assert count_materialised[0] == 1


# ------------------------------------------------------------------------------------------------
# gradients of the state
# ------------------------------------------------------------------------------------------------
def _autograd_state_grads(model, tokens, layer):
    """dL/dh_t for every t of ``layer`` by autograd: y of that layer recomputed by a hand-written recurrence
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_tᵀ + ε_t, y_t = h_t C_t + D u_t, with ε = 0 leaves; the loss's gradient
    with respect to ε_t is the gradient of the state at t (the rest of the recurrence carried)."""
    cfg, mixer = model.cfg, model.blocks[layer].ssm
    b, L = tokens.shape
    eps = torch.zeros(b, L, cfg.H, cfg.P, cfg.d_state, requires_grad=True)
    seen = {}

    def keep(x, hook):
        seen[hook.name.rsplit("_", 1)[-1]] = x

    def recompute(y, hook):
        u, dt, B, C = seen["u"].float(), seen["dt"].float(), seen["B"].float(), seen["C"].float()
        rep = cfg.H // B.shape[2]
        B, C = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)  # [b, L, H, N]
        A = mixer.A
        h, ys = torch.zeros(b, cfg.H, cfg.P, cfg.d_state), []
        for t in range(L):
            decay = torch.exp(dt[:, t, :, None] * A)[:, :, None, :] if A.dim() == 2 \
                else torch.exp(dt[:, t] * A)[:, :, None, None]
            h = decay * h + (dt[:, t, :, None] * u[:, t])[..., None] * B[:, t, :, None, :] + eps[:, t]
            ys.append((h * C[:, t, :, None, :]).sum(-1) + mixer.D.float()[:, None] * u[:, t])
        return torch.stack(ys, 1).to(y.dtype)

    names = [f"blocks.{layer}.ssm.hook_{n}" for n in ("u", "dt", "B", "C")]
    loss = model.run_with_hooks(tokens, return_type="loss",
                                fwd_hooks=[(n, keep) for n in names] + [(f"blocks.{layer}.ssm.hook_y", recompute)])
    loss.backward()
    model.zero_grad(set_to_none=True)
    return eps.grad


@pytest.mark.parametrize("layer", [0, 3])
def test_backward_hooks_on_the_state_alone_give_the_autograd_gradient(ssm, layer):
    tokens = tokens_for(ssm)
    expected = _autograd_state_grads(ssm, tokens, layer)
    name = f"blocks.{layer}.ssm.hook_state"
    assert expected.abs().max() > 0

    grads = []
    ssm.add_hook(name, lambda g, hook: grads.append(g.detach().clone()), dir="bwd")
    try:
        ssm(tokens, return_type="loss").backward()
    finally:
        ssm.reset_hooks()
    ssm.zero_grad(set_to_none=True)

    loss = ssm.run_with_hooks(tokens, return_type="loss", reset_hooks_end=False,
                              bwd_hooks=[(name, lambda g, hook: grads.append(g.detach().clone()))])
    try:
        loss.backward()
    finally:
        ssm.reset_hooks()
    ssm.zero_grad(set_to_none=True)

    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens, return_type="loss"):
        state = wrapped.blocks[layer].ssm.hook_state.output
        with wrapped.output.backward():
            grads.append(state.grad.save())
    ssm.zero_grad(set_to_none=True)

    assert len(grads) == 3
    for g in grads:
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)


def test_reading_the_state_leaves_parameter_gradients_unchanged(ssm):
    """The zero path that carries dL/dh adds nothing to the gradients of the weights."""
    tokens = tokens_for(ssm)
    ssm(tokens, return_type="loss").backward()
    plain = {n: p.grad.clone() for n, p in ssm.named_parameters() if p.grad is not None}
    ssm.zero_grad(set_to_none=True)
    ssm.add_hook("blocks.1.ssm.hook_state", lambda g, hook: None, dir="bwd")
    try:
        ssm(tokens, return_type="loss").backward()
    finally:
        ssm.reset_hooks()
    for n, p in ssm.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6)
    ssm.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------
# generation inside a trace; LanguageModel
# ------------------------------------------------------------------------------------------------
def test_generation_inside_a_trace_reads_each_steps_state(ssm):
    """`NNsight(model).trace(tokens, fn=model.generate, ...)`: the prompt's forward then one per new token; the
    state of block 0 read only at the last step (nothing looks at it before) equals the state a TransformerLens
    hook sees at that step, and the tokens equal model.generate's."""
    tokens = tokens_for(ssm, L=6)
    seen = []
    expected = ssm.generate(tokens, max_new_tokens=3,
                            fwd_hooks=[("blocks.0.ssm.hook_state", lambda s, hook: seen.append(s.clone()))])
    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens, fn=ssm.generate, max_new_tokens=3) as tracer:
        dts = nnsight.save([])
        for step in tracer.iter[0:3]:
            dts.append(wrapped.blocks[0].ssm.hook_dt.output.shape[1])
            if step == 2:
                state = wrapped.blocks[0].ssm.hook_state.output.save()
        out = tracer.result.save()
    assert torch.equal(out, expected)
    assert list(dts) == [6, 1, 1]
    assert [s.shape[1] for s in seen] == [6, 1, 1]
    # the hooked run's prompt forward took the state-materialising scan, the traced one the cheap scan: rounding
    torch.testing.assert_close(state, seen[2], rtol=0, atol=1e-6)


def test_edit_inside_a_generation_trace_equals_generate_with_hooks(ssm):
    tokens = tokens_for(ssm, L=6)
    expected = ssm.generate(tokens, max_new_tokens=3,
                            fwd_hooks=[("blocks.1.hook_resid_post", lambda r, hook: torch.zeros_like(r))])
    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens, fn=ssm.generate, max_new_tokens=3) as tracer:
        for _ in tracer.iter[0:3]:
            resid = wrapped.blocks[1].hook_resid_post.output
            wrapped.blocks[1].hook_resid_post.output = torch.zeros_like(resid)
        out = tracer.result.save()
    assert torch.equal(out, expected)
    assert not torch.equal(out, ssm.generate(tokens, max_new_tokens=3))


def test_transformer_trace_save_edit_and_generation(transformer):
    tokens = tokens_for(transformer, L=6)
    name = "blocks.0.hook_resid_post"
    _, cache = transformer.run_with_cache(tokens, names_filter=name)
    wrapped = nnsight.NNsight(transformer)
    with wrapped.trace(tokens):
        resid = wrapped.blocks[0].hook_resid_post.output.save()
        wrapped.blocks[0].hook_resid_post.output = torch.zeros_like(wrapped.blocks[0].hook_resid_post.output)
        logits = wrapped.output.save()
    torch.testing.assert_close(resid, cache[name], rtol=0, atol=0)
    torch.testing.assert_close(logits, transformer.run_with_hooks(
        tokens, fwd_hooks=[(name, lambda r, hook: torch.zeros_like(r))]), rtol=0, atol=1e-5)

    seen = []
    expected = transformer.generate(tokens, max_new_tokens=3,
                                    fwd_hooks=[(name, lambda r, hook: seen.append(r.clone()))])
    with wrapped.trace(tokens, fn=transformer.generate, max_new_tokens=3) as tracer:
        for step in tracer.iter[0:3]:
            if step == 1:
                step1 = wrapped.blocks[0].hook_resid_post.output.save()
        out = tracer.result.save()
    assert torch.equal(out, expected)
    torch.testing.assert_close(step1, seen[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-transformer"])
def test_language_model_wrapping_raises_a_clear_error(name):
    model = interp.load(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel's own deprecation warning
        with pytest.raises(NotImplementedError, match=r"nnsight\.NNsight\(model\).*fn=model\.generate"):
            nnsight.LanguageModel(model, tokenizer=model.tokenizer)
    with pytest.raises(NotImplementedError, match="transformers pipeline"):
        model.can_generate()


def test_state_positions_apply_in_a_trace(ssm):
    tokens = tokens_for(ssm)
    _, cache = ssm.run_with_cache(tokens, names_filter="blocks.0.ssm.hook_state")
    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens, state_positions=[5]):
        s = wrapped.blocks[0].ssm.hook_state.output.save()
    assert s.shape[1] == 1
    torch.testing.assert_close(s[:, 0], cache["blocks.0.ssm.hook_state"][:, 5], rtol=0, atol=1e-6)
