"""interp.sae: metrics in closed form, the four architectures on synthetic sparse data, save/load, kill-and-resume,
the NaN guard, inserting into a model (interp.hooks.insert; the SAE's hook points in the model's cache), splicing
(exact with the error term), steering and feature analysis.

Everything is tiny (d_in 32, CPU); synthetic activations are x = sparse codes @ a random unit-norm dictionary."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import interp
from interp.sae import (
    NonFiniteTrainingError,
    SAEConfig,
    SparseAutoencoder,
    activation_density,
    latent_intervention,
    load_checkpoint_sae,
    logit_effects,
    lr_factor,
    run_with_sae,
    splice_metrics,
    spliced,
    top_activating_examples,
    train_sae,
)
from interp.hooks import insert, inserted, remove
from interp.steering import Intervention, SAELatents
from interp.sae import functional as F
from interp.sae import metrics

# The synthetic data source, shared verbatim with the subprocess of the kill-and-resume test.
SYNTH_SRC = '''
import torch

D_IN, N_FEAT, N_ACTIVE = 32, 48, 2

def dictionary(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(N_FEAT, D_IN, generator=g)
    return d / d.norm(dim=-1, keepdim=True)

def synth_batch(i, batch_size=256, seed=1):
    """Batch i of the stream: exactly N_ACTIVE features per token, magnitudes U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed * 100_003 + i)
    r = torch.rand(batch_size, N_FEAT, generator=g)
    on = r >= r.topk(N_ACTIVE, dim=-1).values[:, -1:]
    mag = torch.rand(batch_size, N_FEAT, generator=g) + 0.5
    return (on * mag) @ dictionary()

def synth_stream(n, start=0, batch_size=256, seed=1):
    for i in range(start, n):
        yield synth_batch(i, batch_size, seed)
'''
exec(SYNTH_SRC)  # defines D_IN, dictionary, synth_batch, synth_stream

BS = 256


def _cfg(**kw) -> SAEConfig:
    base = dict(d_in=D_IN, d_sae=64, batch_size=BS, total_training_tokens=BS * 600, lr=5e-3, checkpoint_every=0,
                log_every=50, dead_window_tokens=BS * 50, seed=0)
    return SAEConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def eval_x() -> torch.Tensor:
    return synth_batch(10_000, batch_size=2048, seed=7)


# ----------------------------------------------------------------------------------------------------------------
# config


def test_config_round_trip_and_validation():
    cfg = _cfg(architecture="topk", k=4, hook_name="blocks.0.hook_resid_post")
    again = SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.total_steps == 600
    with pytest.raises(ValueError, match="unknown SAEConfig field"):
        SAEConfig.from_dict({**cfg.to_dict(), "l1_coeff": 1.0})
    with pytest.raises(ValueError, match="architecture 'gated'"):
        _cfg(architecture="gated")
    with pytest.raises(ValueError, match="topk needs an integer k"):
        _cfg(architecture="topk", k=1000)


def test_lr_schedule():
    cfg = _cfg(lr_warmup_steps=10, lr_decay="cosine", min_lr_ratio=0.1, total_training_tokens=BS * 100)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 100) == pytest.approx(0.1)
    lin = cfg.replace(lr_decay="linear", lr_decay_steps=20, min_lr_ratio=0.0)
    assert lr_factor(lin, 79) == 1.0 and lr_factor(lin, 90) == pytest.approx(0.5)
    assert lr_factor(cfg.replace(lr_decay="constant"), 99) == 1.0


# ----------------------------------------------------------------------------------------------------------------
# metrics in closed form


def test_metrics_closed_form():
    x = torch.randn(500, 16, dtype=torch.float64)
    assert metrics.explained_variance(x, x) == 1.0
    assert metrics.explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mse(x, x) == 0.0
    assert metrics.mse(x, x + 0.5) == pytest.approx(0.25)
    stream = metrics.ExplainedVariance()
    y = x + 0.3 * torch.randn_like(x)
    for i in range(0, 500, 100):
        stream.update(x[i:i + 100], y[i:i + 100])
    assert stream.compute() == pytest.approx(metrics.explained_variance(x, y), rel=1e-9)

    lat = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    assert metrics.l0(lat) == 1.5
    dens = metrics.feature_density(lat)
    assert dens.tolist() == [0.0, 0.5, 1.0]
    assert metrics.dead_fraction(dens) == pytest.approx(1 / 3)
    assert metrics.dense_fraction(dens, 0.6) == pytest.approx(1 / 3)
    fig = metrics.density_histogram(dens)
    assert "1 dead of 3" in fig.layout.title.text

    assert metrics.ce_loss_recovered(ce_clean=2.0, ce_sae=2.0, ce_ablate=5.0) == 1.0
    assert metrics.ce_loss_recovered(ce_clean=2.0, ce_sae=5.0, ce_ablate=5.0) == 0.0
    assert metrics.ce_loss_recovered(2.0, 3.5, 5.0) == 0.5
    assert math.isnan(metrics.ce_loss_recovered(2.0, 3.0, 2.0))
    logits = torch.randn(2, 5, 11)
    assert metrics.kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert metrics.kl_divergence(logits, torch.zeros_like(logits)) > 0


# ----------------------------------------------------------------------------------------------------------------
# the math


def test_activation_functions():
    pre = torch.randn(8, 20)
    t = F.topk(pre, 3)
    assert ((t != 0).sum(-1) <= 3).all() and torch.equal(t, F.topk(pre, 3))
    assert torch.equal(t.max(-1).values, pre.relu().max(-1).values)
    b = F.batch_topk(pre.abs() + 0.1, 2.5)
    assert int((b != 0).sum()) == 20  # round(2.5 * 8)

    # JumpReLU / step: the rectangle-kernel pseudo-derivatives
    pre = torch.tensor([[0.50, 0.52, 0.9]], requires_grad=True)
    theta = torch.tensor([0.51, 0.51, 0.51], requires_grad=True)
    eps = 0.04
    out = F.jumprelu(pre, theta, eps)
    assert out.tolist() == [[0.0, pytest.approx(0.52), pytest.approx(0.9)]]
    out.sum().backward()
    assert pre.grad.tolist() == [[0.0, 1.0, 1.0]]
    assert theta.grad.tolist() == pytest.approx([-0.51 / eps, -0.51 / eps, 0.0])
    theta.grad = None
    F.step(pre, theta, eps).sum().backward()
    assert theta.grad.tolist() == pytest.approx([-1 / eps, -1 / eps, 0.0])

    w = F.unit_norm_rows(torch.randn(6, 5))
    g = F.remove_parallel_component(torch.randn(6, 5), w)
    assert (g * w).sum(-1).abs().max() < 1e-6

    pts = torch.cat([torch.randn(99, 3) * 0.1, torch.full((1, 3), 1000.0)])
    assert F.geometric_median(pts).norm() < 0.2 < pts.mean(0).norm()


# ----------------------------------------------------------------------------------------------------------------
# training on synthetic sparse data

ARCH_SETTINGS = {
    "relu": dict(l1_coefficient=0.3),
    "topk": dict(k=2),
    "batchtopk": dict(k=2),
    "jumprelu": dict(l0_coefficient=0.05, jumprelu_init_threshold=0.1, jumprelu_bandwidth=0.05),
}


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_architecture_learns_sparse_code(arch, eval_x, one_thread):
    cfg = _cfg(architecture=arch, **ARCH_SETTINGS[arch])
    res = train_sae(cfg, lambda: synth_stream(cfg.total_steps), progress=False, device="cpu")
    sae = res.sae
    assert res.steps == 600 and res.tokens == 600 * BS and not sae.training
    lat = sae.encode(eval_x)
    ev, l0 = metrics.explained_variance(eval_x, sae.decode(lat)), metrics.l0(lat)
    assert ev > 0.9, (arch, ev, l0)
    if arch == "topk":
        assert l0 <= 2.0 and l0 > 1.9
    elif arch == "batchtopk":
        assert res.final["l0"] == pytest.approx(2.0, abs=0.01)  # batch-level top-k in training
        assert 1.5 < l0 < 2.6  # per-token threshold at inference
        assert float(sae.threshold.min()) > 0
    else:
        assert 1.5 < l0 < 4.5, (arch, l0)
    norms = sae.decoder_norms
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert len(res.losses) == 600 and res.losses[-1] < res.losses[0]
    part = {"relu": "l1_loss", "jumprelu": "l0_loss"}.get(arch, "auxk_loss")
    assert {"reconstruction_loss", part, "l0", "explained_variance", "mse", "dead_fraction"} <= set(res.final)
    assert res.final["loss"] == pytest.approx(res.final["reconstruction_loss"] + res.final[part], rel=1e-5)


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_save_load_round_trip(arch, tmp_path):
    cfg = _cfg(architecture=arch, hook_name="blocks.0.hook_resid_post", **ARCH_SETTINGS[arch])
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
    sae.eval()
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "checksums.json",
                                                                     "sae_weights.safetensors"]
    back = SparseAutoencoder.load(tmp_path / "sae")
    assert back.cfg == cfg
    x = synth_batch(0)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x), sae(x))
    with pytest.raises(FileNotFoundError, match="not a saved SAE"):
        SparseAutoencoder.load(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: kill and resume, NaN guard


def test_kill_and_resume_matches_uninterrupted(tmp_path, one_thread):
    cfg = _cfg(architecture="topk", k=2, total_training_tokens=BS * 60, checkpoint_every=10, log_every=5)
    ref = train_sae(cfg, lambda: synth_stream(60), out=tmp_path / "ref", progress=False, device="cpu")

    run = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(SYNTH_SRC + textwrap.dedent(f"""
        import time
        torch.set_num_threads(1)
        from interp.sae import SAEConfig, train_sae

        def slow():
            for b in synth_stream(60):
                time.sleep(0.1)
                yield b

        cfg = SAEConfig.from_dict({cfg.to_dict()!r})
        train_sae(cfg, slow, out={str(run)!r}, progress=False, device="cpu")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 60
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    _, saved = load_checkpoint_sae(run)  # checkpoint/ (or checkpoint.old/ if killed mid-swap)
    killed_at = saved["step"]
    assert 10 <= killed_at < 60 and not (run / "sae_weights.safetensors").exists(), err.decode()[-2000:]

    resumed = train_sae(cfg, lambda: synth_stream(60), out=run, progress=False, device="cpu")
    assert resumed.resumed_from == killed_at and ref.resumed_from == 0
    assert resumed.steps == ref.steps == 60
    assert resumed.losses == ref.losses  # bit-identical curve: same batches, same thread count
    assert resumed.history == ref.history
    for name, p in ref.sae.state_dict().items():
        assert torch.equal(p, resumed.sae.state_dict()[name]), name
    again = train_sae(cfg, lambda: synth_stream(60), out=run, progress=False, device="cpu")  # finished: no-op
    assert again.losses == ref.losses and again.resumed_from == 60

    with pytest.raises(ValueError, match="different SAEConfig"):
        train_sae(cfg.replace(lr=1e-3), lambda: synth_stream(60), out=run, progress=False, device="cpu")


def test_nan_batch_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    cfg = _cfg(architecture="relu", l1_coefficient=0.3, total_training_tokens=BS * 40, checkpoint_every=10)

    def poisoned(start):  # a seekable stream: starts at batch `start`
        for i in range(start, 40):
            yield torch.full((BS, D_IN), float("nan")) if i == 25 else synth_batch(i)

    with pytest.raises(NonFiniteTrainingError, match=r"step 25: input batch is not finite") as info:
        train_sae(cfg, poisoned, out=tmp_path, progress=False, device="cpu")
    assert info.value.step == 25 and "step 20" in str(info.value)
    sae, state = load_checkpoint_sae(tmp_path)
    assert state["step"] == 20 and all(torch.isfinite(p).all() for p in sae.parameters())

    def clean(start):
        return synth_stream(40, start=start)

    res = train_sae(cfg, clean, out=tmp_path, progress=False, device="cpu")  # resumes from step 20
    assert res.steps == 40 and len(res.losses) == 40


def test_huge_lr_stops_with_advice(tmp_path):
    cfg = _cfg(architecture="topk", k=2, lr=1e30, total_training_tokens=BS * 20, checkpoint_every=5)
    with pytest.raises(NonFiniteTrainingError, match="lower the learning rate") as info:
        train_sae(cfg, lambda: synth_stream(20), out=tmp_path, progress=False, device="cpu")
    assert "loss" in info.value.quantity or "parameter" in info.value.quantity
    assert "No checkpoint" in str(info.value) or info.value.checkpoint is not None


# ----------------------------------------------------------------------------------------------------------------
# splicing into a model

HOOK = "blocks.0.hook_resid_post"


def _ssm():
    from conftest import make_hf_ssm

    return interp.load(make_hf_ssm("mamba1"))


def _transformer():
    from transformer_lens import HookedTransformerConfig

    from interp.hooks.transformer import HookedTransformerModel

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=32, d_head=8, d_vocab=61, act_fn="gelu",
                                  normalization_type="LN")
    return HookedTransformerModel(cfg).eval()


@pytest.fixture(scope="module", params=["ssm", "transformer"])
def model(request):
    return _ssm() if request.param == "ssm" else _transformer()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 61, (4, 12), generator=torch.Generator().manual_seed(0))


def _random_sae(d_in=32, d_sae=64, **kw) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=HOOK, **kw))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def _identity_sae(d: int = 32) -> SparseAutoencoder:
    """relu(x) - relu(-x) = x: a perfect (bit-exact) reconstruction."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=2 * d, hook_name=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_splice_with_error_term_is_exact(model, tokens):
    sae = _random_sae()
    clean = model(tokens)
    with_err = run_with_sae(model, tokens, sae=sae, with_error=True)
    assert torch.equal(with_err, clean)
    without = run_with_sae(model, tokens, sae=sae, with_error=False)
    assert not torch.allclose(without, clean, atol=1e-3)
    # the exact splice is the identity for gradients too
    x = torch.randn(2, 3, 32, requires_grad=True)
    sae.with_error = True
    out = sae(x)
    sae.with_error = False
    out.backward(torch.ones_like(out))
    assert torch.equal(out, x) and torch.equal(x.grad, torch.ones_like(x)) and sae.W_dec.grad is not None
    # identity SAE: splicing its reconstruction changes nothing
    assert torch.equal(run_with_sae(model, tokens, sae=_identity_sae()), clean)


def test_inserted_sae_exposes_its_hook_points(model, tokens):
    """insert(model, hook, sae): the SAE is a child of the hook point, its hook points are the model's
    (``<hook>.sae.hook_sae_*``), with the error term the output is unchanged, acts_post in the cache is
    sae.encode; remove() (or leaving the block, even on an error) gives the model back as it was."""
    sae = _random_sae()
    clean = model(tokens)
    names = [f"{HOOK}.sae.hook_sae_{n}" for n in ("input", "acts_pre", "acts_post", "recons", "error", "output")]
    sae.with_error = True
    try:
        ins = insert(model, HOOK, sae)
        assert model.get_submodule(f"{HOOK}.sae") is sae and inserted(model) == {HOOK: sae}
        assert all(n in model.hook_dict for n in names)
        logits, cache = model.run_with_cache(tokens)
        torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(tokens), clean, atol=1e-5, rtol=0)
        acts = cache[f"{HOOK}.sae.hook_sae_acts_post"]
        assert acts.shape == (*tokens.shape, 64)
        torch.testing.assert_close(acts, sae.encode(cache[f"{HOOK}.sae.hook_sae_input"]), atol=0, rtol=0)
        torch.testing.assert_close(cache[HOOK], cache[f"{HOOK}.sae.hook_sae_input"], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache[f"{HOOK}.sae.hook_sae_error"] + cache[f"{HOOK}.sae.hook_sae_recons"],
                                   cache[f"{HOOK}.sae.hook_sae_input"], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="already inserted"):
            insert(model, HOOK, _random_sae())
        assert remove(model) == {HOOK: sae} and ins.remove() is sae  # removing twice is harmless
    finally:
        sae.with_error = False
    assert not inserted(model) and not any(n in model.hook_dict for n in names)
    assert sae.hook_sae_acts_post.name == "hook_sae_acts_post"  # the SAE names its hook points afresh
    assert torch.equal(model(tokens), clean)
    with pytest.raises(RuntimeError, match="boom"):
        with spliced(model, sae=sae, with_error=True):
            assert inserted(model) == {HOOK: sae}
            raise RuntimeError("boom")
    assert not inserted(model) and sae.with_error is False


def test_sae_hook_points_standalone():
    """An SAE alone is a hooked module: its cache holds every hook point; with the error term an edit of the
    latents or of the reconstruction reaches the output as a change from x, an edited error term replaces ε."""
    sae = _random_sae()
    x = torch.randn(2, 3, 32)
    _, cache = sae.run_with_cache(x)
    assert torch.equal(cache["hook_sae_acts_post"], sae.encode(x))
    assert torch.allclose(cache["hook_sae_recons"] + cache["hook_sae_error"], x, atol=1e-5)
    assert torch.equal(cache["hook_sae_output"], sae.decode(sae.encode(x)))
    sae.with_error = True
    try:
        assert torch.equal(sae(x), x)
        with sae.hooks(fwd_hooks=[("hook_sae_recons", lambda a, hook: a + 1.0)]):
            assert torch.allclose(sae(x), x + 1.0, atol=1e-5)
        with sae.hooks(fwd_hooks=[("hook_sae_acts_post", lambda a, hook: torch.zeros_like(a))]):
            assert torch.allclose(sae(x), x - sae.encode(x) @ sae.W_dec, atol=1e-5)
        with sae.hooks(fwd_hooks=[("hook_sae_error", lambda a, hook: torch.zeros_like(a))]):
            assert torch.equal(sae(x), sae.decode(sae.encode(x)))
    finally:
        sae.with_error = False


def test_splice_metrics_ce_recovered(model, tokens):
    perfect = splice_metrics(model, tokens, sae=_identity_sae())
    assert perfect.ce_recovered_zero == 1.0 and perfect.ce_recovered_mean == 1.0
    assert perfect.kl_sae == pytest.approx(0.0, abs=1e-12) and perfect.explained_variance == 1.0
    assert perfect.kl_zero > 0 and perfect.ce_zero != perfect.ce_clean

    # an "SAE" that outputs the ablation itself: W_dec = 0, b_dec = 0 (zero) or the mean activation (mean)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    mean = cache[HOOK].reshape(-1, 32).mean(0)
    for kind, b_dec in (("zero", torch.zeros(32)), ("mean", mean)):
        sae = _random_sae()
        with torch.no_grad():
            sae.W_dec.zero_()
            sae.b_dec.copy_(b_dec)
        m = splice_metrics(model, tokens, sae=sae, ablations=(kind,), mean_activation=mean)
        assert getattr(m, f"ce_recovered_{kind}") == pytest.approx(0.0, abs=1e-6), kind
        assert m.explained_variance <= 1e-6

    noisy = splice_metrics(model, tokens, sae=_random_sae())
    assert set(noisy.to_dict()) >= {"l0", "explained_variance", "mse", "ce_clean", "ce_sae", "kl_sae", "ce_zero",
                          "ce_mean", "ce_recovered_zero", "ce_recovered_mean", "kl_zero", "kl_mean"}


def test_splice_during_generation(model, tokens):
    sae = _random_sae()
    prompt = tokens[:2, :5]
    plain = model.generate(prompt, max_new_tokens=4, stop_at_eos=False)
    cache: dict = {}

    def keep(act, hook):
        cache[HOOK] = act.detach()

    with spliced(model, sae=sae, with_error=True):
        gen = model.generate(prompt, max_new_tokens=4, stop_at_eos=False,
                             fwd_hooks=[(f"{HOOK}.sae.hook_sae_acts_post", keep)])
    assert torch.equal(gen, plain)
    assert cache[HOOK].shape == (2, 1, 64)  # the last decoding step: one position
    with spliced(model, sae=_identity_sae(), with_error=False):
        perfect = model.generate(prompt, max_new_tokens=4, stop_at_eos=False)
    assert torch.equal(perfect, plain)


# ----------------------------------------------------------------------------------------------------------------
# steering and analysis


def test_steering_adds_alpha_times_decoder_row(model, tokens):
    sae = _random_sae()
    seen: dict = {}

    def before(act, hook):
        seen["before"] = act.clone()

    def after(act, hook):
        seen["after"] = act.clone()

    alpha, latent = 3.5, 7
    steer = Intervention(SAELatents(sae, latent), HOOK, "add", scale=alpha)
    model.run_with_hooks(tokens, fwd_hooks=[(HOOK, before), *steer.hooks(model), (HOOK, after)])
    assert torch.equal(seen["after"], seen["before"] + alpha * sae.W_dec[latent].detach())
    assert torch.allclose(seen["after"] - seen["before"], (alpha * sae.W_dec[latent]).expand_as(seen["before"]),
                          atol=1e-5)

    # only at chosen positions
    at_2 = Intervention(SAELatents(sae, latent), HOOK, "add", scale=alpha, positions=[2])
    model.run_with_hooks(tokens, fwd_hooks=[(HOOK, before), *at_2.hooks(model), (HOOK, after)])
    diff = (seen["after"] - seen["before"]).abs().sum(-1)
    assert (diff[:, 2] > 0).all() and diff[:, [0, 1, 3]].eq(0).all()

    # clamping a latent of the spliced SAE with the error term kept: the value moves by (value - f) * row
    model.run_with_hooks(tokens, fwd_hooks=[(HOOK, before)])  # the value at the hook before the splice
    clamp = latent_intervention(sae, latent, "clamp", value=5.0)
    with spliced(model, sae=sae, with_error=True):
        model.run_with_hooks(tokens, fwd_hooks=[*clamp.hooks(model), (HOOK, after)])
    f = sae.encode(seen["before"])[..., latent]
    expected = seen["before"] + (5.0 - f)[..., None] * sae.W_dec[latent]
    assert torch.allclose(seen["after"], expected.detach(), atol=1e-5)


def test_feature_analysis(model, tokens):
    sae = _random_sae()
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    lat = sae.encode(cache[HOOK]).detach()  # [4, 12, 64]
    dens = activation_density(model, tokens, sae=sae, batch_size=3)
    assert torch.allclose(dens, metrics.feature_density(lat))

    latent = int(lat.reshape(-1, 64).amax(0).argmax())
    ex = top_activating_examples(model, tokens, sae=sae, latents=[latent, 0], k=3, context=(3, 1), batch_size=3)
    best = ex[latent][0]
    seq, pos = divmod(int(lat[..., latent].argmax()), 12)
    assert (best.sequence, best.position) == (seq, pos)
    assert best.activation == pytest.approx(float(lat[seq, pos, latent]))
    assert best.tokens == tokens[seq, max(0, pos - 3):pos + 2].tolist()
    assert best.activations[best.focus] == pytest.approx(best.activation)
    assert len(best.str_tokens) == len(best.tokens) and str(best)
    assert [e.activation for e in ex[latent]] == sorted((e.activation for e in ex[latent]), reverse=True)

    eff = logit_effects(model, sae=sae, latents=[latent], k=5)
    w = model.ln_final.weight if hasattr(model.ln_final, "weight") else model.ln_final.w
    expected = (sae.W_dec[latent] * w) @ model.W_U
    assert torch.allclose(eff.effects[0], expected.detach(), atol=1e-5)
    assert eff.top_values[0, 0] == pytest.approx(float(expected.detach().max()), abs=1e-5)
    with pytest.raises(ValueError, match="residual-stream hook"):
        logit_effects(model, sae=sae, hook="blocks.0.hook_attn_scores_nonexistent")


def test_sae_folders_fit_and_latent_report(tmp_path):
    """find_sae_folders finds saved SAEs (not a symlink leaving the root); check_fits refuses an SAE of another
    width or hook; latent_trace is the latent's column of latent_activations; latent_report bundles density,
    examples and logit effects."""
    from interp.demo import tiny_model
    from interp.sae import (
        SAEConfig, SparseAutoencoder, activation_density, check_fits, find_sae_folders, latent_activations,
        latent_report, latent_trace,
    )

    model = tiny_model()
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=model.cfg.d_model, d_sae=16, hook_name="blocks.1.hook_resid_post"))
    sae.save(tmp_path / "root" / "a" / "sae")
    (tmp_path / "outside").mkdir()
    sae.save(tmp_path / "outside" / "sae")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    assert find_sae_folders([tmp_path / "root"]) == [(tmp_path / "root" / "a" / "sae").resolve()]
    check_fits(sae, model)
    for cfg, message in [(SAEConfig(d_in=7, d_sae=4, hook_name="blocks.1.hook_resid_post"), "d_in=7"),
                         (SAEConfig(d_in=model.cfg.d_model, d_sae=4, hook_name="blocks.9.hook_resid_post"), "another")]:
        with pytest.raises(ValueError, match=message):
            check_fits(SparseAutoencoder(cfg), model)
    toks = torch.randint(0, 10, (3, 12), generator=torch.Generator().manual_seed(0))
    batch, = latent_activations(model, toks[:1], sae=sae)
    torch.testing.assert_close(latent_trace(model, toks[:1], sae=sae, latent=5), batch.latents[0, :, 5].float())
    with pytest.raises(ValueError, match="one sequence at a time"):
        latent_trace(model, toks, sae=sae, latent=5)
    r = latent_report(model, toks, sae=sae, latent=5, k=3)
    torch.testing.assert_close(r.density, activation_density(model, toks, sae=sae))
    assert r.latent == 5 and len(r.examples) <= 3 and (r.effects is None) == (r.effects_error is not None)
