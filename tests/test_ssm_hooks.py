"""Hook semantics of HookedSSM: reconstruction, state patching, generation, errors, nnsight."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.hooks import (
    CacheTooLargeError, CheckpointError, HookNotFiredError, HookShapeError, UnknownHookError,
)
from interp.hooks.scan import sequential_scan, step

LAYER_HOOKS = [
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "ssm.hook_in", "ssm.hook_x", "ssm.hook_z", "ssm.hook_conv",
    "ssm.hook_u", "ssm.hook_dt", "ssm.hook_B", "ssm.hook_C", "ssm.hook_state", "ssm.hook_y",
    "ssm.hook_gated", "ssm.hook_out", "hook_mixer_out", "hook_resid_post",
]


def tokens_for(model, L=12, b=2, seed=0):
    return torch.randint(0, model.cfg.vocab_size, (b, L), generator=torch.Generator().manual_seed(seed))


def test_every_hook_in_the_vocabulary_fires(ssm):
    expected = {"hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"} | {
        f"blocks.{i}.{h}" for i in range(ssm.cfg.n_layers) for h in LAYER_HOOKS
    }
    assert set(ssm.hook_dict) == expected
    tokens = tokens_for(ssm)
    _, cache = ssm.run_with_cache(tokens)
    assert set(cache.keys()) == expected
    cfg, (b, L) = ssm.cfg, tokens.shape
    assert cache["blocks.0.ssm.hook_u"].shape == (b, L, cfg.H, cfg.P)
    assert cache["blocks.0.ssm.hook_B"].shape == (b, L, cfg.G, cfg.d_state)
    assert cache["blocks.0.ssm.hook_state"].shape == (b, L, cfg.H, cfg.P, cfg.d_state)
    assert cache["blocks.0.ssm.hook_conv"].shape == (b, L, cfg.conv_channels)
    assert torch.equal(cache["blocks.1.hook_mixer_out"], cache["blocks.1.ssm.hook_out"])


def test_hooks_do_not_change_outputs(ssm):
    tokens = tokens_for(ssm)
    plain = ssm(tokens)
    logits, _ = ssm.run_with_cache(tokens)
    assert torch.allclose(plain, logits, atol=1e-5)


def test_y_reconstructs_from_cached_parameters(ssm):
    """hook_y == C·h + D·u from the cached dt, B, C, u and a reference sequential scan."""
    tokens = tokens_for(ssm, L=20)
    _, cache = ssm.run_with_cache(tokens, names_filter=lambda n: n.split(".")[-1] in ("hook_u", "hook_dt", "hook_B", "hook_C", "hook_y"))
    for i, block in enumerate(ssm.blocks):
        c = lambda h: cache[f"blocks.{i}.ssm.{h}"]
        y_ref, _ = sequential_scan(c("hook_u"), c("hook_dt"), block.ssm.A, c("hook_B"), c("hook_C"), block.ssm.D.detach())
        assert torch.allclose(c("hook_y"), y_ref, atol=1e-5, rtol=1e-4), f"layer {i}"


def test_state_cache_at_chosen_positions_matches_reference(ssm):
    tokens = tokens_for(ssm, L=30)
    positions = [3, 17, -1]
    _, cache = ssm.run_with_cache(tokens, names_filter=lambda n: "ssm.hook_" in n, state_positions=positions)
    c = lambda h: cache[f"blocks.1.ssm.{h}"]
    _, states = sequential_scan(c("hook_u"), c("hook_dt"), ssm.blocks[1].ssm.A, c("hook_B"), c("hook_C"), ssm.blocks[1].ssm.D.detach())
    assert c("hook_state").shape[1] == 3
    assert torch.allclose(c("hook_state"), states[:, [3, 17, 29]], atol=1e-5)



def test_state_positions_take_every_positions_spec(ssm):
    """state_positions is a Positions spec, as an intervention's positions: "last", a slice, a list."""
    tokens = tokens_for(ssm, L=12)
    _, full = ssm.run_with_cache(tokens, names_filter="blocks.0.ssm.hook_state")
    for spec, want in (("last", [11]), (slice(9, None), [9, 10, 11]), ([2, -2], [2, 10]), ("all", list(range(12)))):
        _, cache = ssm.run_with_cache(tokens, names_filter="blocks.0.ssm.hook_state", state_positions=spec)
        torch.testing.assert_close(cache["blocks.0.ssm.hook_state"], full["blocks.0.ssm.hook_state"][:, want],
                                   atol=1e-5, rtol=1e-4, msg=str(spec))


@pytest.mark.parametrize("t", [0, 9, 20])
def test_state_patch_equals_sequential_rescan(ssm, t):
    """Setting h_t equals a full sequential re-scan with the patched state; only positions >= t change."""
    tokens = tokens_for(ssm, L=21)
    layer = 1
    _, clean = ssm.run_with_cache(tokens, names_filter=lambda n: n.startswith(f"blocks.{layer}.ssm."))
    patched_state = torch.randn_like(clean[f"blocks.{layer}.ssm.hook_state"][:, t])

    def patch(states, hook):
        assert hook.ctx["positions"].tolist() == [t]
        states = states.clone()
        states[:, 0] = patched_state
        return states

    captured = {}
    logits_clean = ssm(tokens)
    logits = ssm.run_with_hooks(
        tokens, state_positions=[t],
        fwd_hooks=[(f"blocks.{layer}.ssm.hook_state", patch),
                   (f"blocks.{layer}.ssm.hook_y", lambda y, hook: captured.__setitem__("y", y))],
    )
    # reference: sequential scan with the state replaced at t
    mixer = ssm.blocks[layer].ssm
    c = lambda h: clean[f"blocks.{layer}.ssm.{h}"]
    u, dt, B, C = c("hook_u"), c("hook_dt"), c("hook_B"), c("hook_C")
    h = torch.zeros_like(patched_state)
    ys = []
    for s in range(tokens.shape[1]):
        y, h = step(h, u[:, s], dt[:, s], mixer.A, B[:, s], C[:, s], mixer.D.detach())
        if s == t:
            h = patched_state
            y = torch.einsum("bhpn,bhn->bhp", h, C[:, s].repeat_interleave(ssm.cfg.H // ssm.cfg.G, 1)) + mixer.D.detach()[:, None] * u[:, s]
        ys.append(y)
    assert (captured["y"] - torch.stack(ys, 1)).abs().max().item() <= 1e-5
    diff = (logits - logits_clean).abs().amax(-1)
    if t:
        assert diff[:, :t].max().item() == 0.0
    assert diff[:, t:].min().item() > 0.0


def test_greedy_generation_equals_full_forward_argmax(ssm):
    prompt = tokens_for(ssm, L=7, b=1)
    fired = []
    out = ssm.generate(prompt, max_new_tokens=32,
                       fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: fired.append(hook.ctx["positions"].tolist()))])
    assert out.shape == (1, 7 + 32)
    full = ssm(out).argmax(-1)
    assert torch.equal(out[0, 7:], full[0, 6:-1])
    assert len(fired) == 32  # the prompt once, then one step per new token
    assert fired[0] == list(range(7)) and fired[1] == [7] and fired[-1] == [7 + 30]


def test_steering_hook_applies_during_decoding(ssm):
    prompt = tokens_for(ssm, L=5, b=1)
    base = ssm.generate(prompt, max_new_tokens=10)
    direction = torch.randn(ssm.cfg.d_model) * 50

    def steer(resid, hook):
        return resid + direction

    with ssm.hooks(fwd_hooks=[("blocks.0.hook_resid_post", steer)]):
        steered = ssm.generate(prompt, max_new_tokens=10)
        # the recurrent decode applies the hook like a full forward would
        assert torch.equal(steered[0, 5:], ssm(steered).argmax(-1)[0, 4:-1])
    assert not torch.equal(base, steered)


def test_state_hook_during_decoding(ssm):
    prompt = tokens_for(ssm, L=6, b=1)
    seen = []
    with ssm.hooks(fwd_hooks=[("blocks.0.ssm.hook_state", lambda h, hook: seen.append(hook.ctx.get("positions")))]):
        ssm.generate(prompt, max_new_tokens=4)
    assert len(seen) == 4  # prompt (all positions) + 3 decoding steps
    assert seen[0].tolist() == list(range(6)) and [p.tolist() for p in seen[1:]] == [[6], [7], [8]]


def test_run_with_cache_options(ssm):
    tokens = tokens_for(ssm, L=10)
    _, cache = ssm.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post", pos_slice=slice(-3, None))
    assert list(cache.keys()) == ["blocks.0.hook_resid_post"] and cache["blocks.0.hook_resid_post"].shape[1] == 3
    resid, cache = ssm.run_with_cache(tokens, stop_at_layer=1)
    assert resid.shape == (2, 10, ssm.cfg.d_model)
    assert not any(k.startswith("blocks.1") or k.startswith("ln_final") for k in cache.keys())
    assert torch.equal(resid, cache["blocks.0.hook_resid_post"])


def test_cache_memory_estimate_refuses(ssm):
    tokens = tokens_for(ssm, L=10)
    need = ssm.estimate_cache_bytes(2, 10)
    with pytest.raises(CacheTooLargeError, match="max_cache_bytes"):
        ssm.run_with_cache(tokens, max_cache_bytes=need // 2)
    _, cache = ssm.run_with_cache(tokens, max_cache_bytes=need)
    assert sum(v.numel() * 4 for v in cache.cache_dict.values()) == need


@pytest.mark.parametrize("state_positions", [None, [3, 17, -1, 29]])  # [.., 40]: IndexError (test_faults_bounds)
def test_hook_shapes_equal_a_real_forward(ssm, state_positions):
    """hook_shapes (a forward on the meta device) gives the shape of every cached activation, ssm.hook_state at
    the requested positions inside the sequence included."""
    tokens = tokens_for(ssm, L=30, b=3)
    _, cache = ssm.run_with_cache(tokens, state_positions=state_positions)
    shapes = ssm.hook_shapes(3, 30, state_positions=state_positions)
    assert set(shapes) == set(ssm.hook_dict) == set(cache.keys())
    for name in cache.keys():
        assert tuple(cache[name].shape) == shapes[name], name


def test_unknown_hook_name_suggests_close_names(ssm):
    with pytest.raises(UnknownHookError, match="blocks.0.ssm.hook_dt"):
        ssm.run_with_hooks(tokens_for(ssm), fwd_hooks=[("blocks.0.ssm.hook_delta", lambda x, hook: None)])
    with pytest.raises(UnknownHookError):
        ssm.run_with_cache(tokens_for(ssm), names_filter=["blocks.0.hook_resid_mid"])


def test_wrong_shape_from_hook_names_the_hook(ssm):
    with pytest.raises(HookShapeError, match="blocks.1.ssm.hook_B"):
        ssm.run_with_hooks(tokens_for(ssm), fwd_hooks=[("blocks.1.ssm.hook_B", lambda x, hook: x[..., :2])])


def test_hook_that_cannot_fire_raises(ssm):
    with pytest.raises(HookNotFiredError, match="blocks.1.hook_resid_post"):
        ssm.run_with_hooks(tokens_for(ssm), stop_at_layer=1, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: None)])
    with pytest.raises(ValueError, match="state_positions"):
        ssm.run_with_hooks(tokens_for(ssm, L=5), state_positions=[50],
                           fwd_hooks=[("blocks.0.ssm.hook_state", lambda x, hook: None)])


def test_checkpoint_errors_name_the_file(ssm_folder, tmp_path):
    with pytest.raises(CheckpointError, match="not found|could not get"):
        interp.load(str(tmp_path / "nope" / "missing"))
    weights = ssm_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        interp.load(str(ssm_folder))
    weights.unlink()
    (ssm_folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only"):
        interp.load(str(ssm_folder))
    (ssm_folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        interp.load(str(ssm_folder))


def test_nnsight_reads_and_sets_hook_outputs(ssm):
    nnsight = pytest.importorskip("nnsight")
    tokens = tokens_for(ssm, L=9)
    _, cache = ssm.run_with_cache(tokens, names_filter="blocks.0.ssm.hook_dt")
    wrapped = nnsight.NNsight(ssm)
    with wrapped.trace(tokens):
        dt = wrapped.blocks[0].ssm.hook_dt.output.save()
    assert torch.allclose(dt, cache["blocks.0.ssm.hook_dt"])

    with wrapped.trace(tokens):
        wrapped.blocks[0].hook_resid_post.output = torch.zeros_like(wrapped.blocks[0].hook_resid_post.output)
        logits = wrapped.output.save()
    expected = ssm.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: torch.zeros_like(x))])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(logits, ssm(tokens), atol=1e-3)


@pytest.mark.parametrize("cuts", [[9], [1, 2, 9], [5, 6, 7], [3, 17]])
def test_continuing_from_a_state_in_chunks_equals_one_forward(ssm, cuts):
    """A prompt fed in chunks through one SSMState (chunks longer than one token take the scan, one token the
    recurrent step) gives the logits of one full forward: the conv window carries over between chunks."""
    from interp.hooks.mamba import SSMState

    tokens = tokens_for(ssm, L=20)
    with torch.no_grad():
        full = ssm(tokens)
        state, outs, prev = SSMState(), [], 0
        for cut in [*cuts, 20]:
            outs.append(ssm(tokens[:, prev:cut], state=state))
            prev = cut
    assert state.offset == 20
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=5e-5, rtol=1e-4)
