"""SAE-Lens interoperability (interp.sae.saelens): our SAEs saved in SAE-Lens's format load with
``sae_lens.SAE.load_from_disk`` and encode / decode identically; SAE-Lens SAEs (in memory or on disk, inference
and training classes) convert to ours with identical encodings; folders of neither format give clear errors.

Tolerance: both sides run the same float32 matmuls on the same tensors, so most comparisons are bit-exact; we
allow 1e-6 of the compared tensor's scale (max(1, max |value|)), a few float32 ulps, for the conversions that
fold decoder norms into the encoder (one extra rounding per product).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from interp.sae import SAEConfig, SparseAutoencoder, run_with_sae
from interp.sae.saelens import (
    INTERP_CONFIG_KEY, SAEFormatError, from_saelens, load_sae, load_saelens, sae_format, save_saelens, to_saelens,
)

sae_lens = pytest.importorskip("sae_lens")

D_IN, D_SAE, K = 24, 64, 6
HOOK = "blocks.0.hook_resid_post"
TOL = 1e-6


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _x(n: int = 200, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


def _ours(arch: str, apply_b_dec_to_input: bool = True) -> SparseAutoencoder:
    """A random SAE of ours with non-trivial biases and thresholds (eval mode)."""
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=K, hook_name=HOOK,
                                      model_name="tiny-model", apply_b_dec_to_input=apply_b_dec_to_input, seed=3))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE, generator=g))
        sae.b_dec.copy_(0.3 * torch.randn(D_IN, generator=g))
        if arch in ("jumprelu", "batchtopk"):
            sae.threshold.copy_(0.6 * torch.rand(D_SAE, generator=g))
    return sae.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= TOL * scale, f"max |a - b| = {err:.3g} at scale {scale:.3g}"


# ----------------------------------------------------------------------------------------------------------------
# ours -> SAE-Lens


EXPECTED_CLASS = {"relu": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE", "batchtopk": "JumpReLUSAE"}


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_ours_saved_loads_in_sae_lens_with_identical_encodings(arch, apply_b_dec, tmp_path):
    sae = _ours(arch, apply_b_dec)
    save_saelens(sae, tmp_path / "sl", metadata={"context_size": 128})
    sl = sae_lens.SAE.load_from_disk(str(tmp_path / "sl"))
    assert type(sl).__name__ == EXPECTED_CLASS[arch]
    assert sl.cfg.apply_b_dec_to_input is apply_b_dec
    assert sl.cfg.metadata.hook_name == HOOK and sl.cfg.metadata.model_name == "tiny-model"
    assert sl.cfg.metadata.context_size == 128
    if arch == "topk":
        assert sl.cfg.k == K and sl.cfg.rescale_acts_by_decoder_norm is False
    if arch == "batchtopk":
        assert sl.cfg.metadata.training_architecture == "batchtopk"

    x = _x()
    with torch.no_grad():
        ours_f, theirs_f = sae.encode(x), sl.encode(x)
        _close(ours_f, theirs_f)
        _close(sae.decode(ours_f), sl.decode(theirs_f))
        _close(sae(x), sl(x))
        # [batch, pos, d_in] inputs too
        x3 = x.reshape(8, 25, D_IN)
        _close(sae.encode(x3), sl.encode(x3))
    assert (ours_f != 0).any() and (ours_f == 0).any()  # the comparison is not vacuous

    # and back: same architecture, config and weights
    back = load_sae(tmp_path / "sl")
    assert back.cfg == sae.cfg
    for k, v in sae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_to_saelens_in_memory_and_refusals():
    sae = _ours("topk")
    sl = to_saelens(sae)
    assert type(sl).__name__ == "TopKSAE"
    x = _x()
    with torch.no_grad():
        _close(sae.encode(x), sl.encode(x))
        _close(sae(x), sl(x))
    bad = _ours("jumprelu")
    with torch.no_grad():
        bad.threshold[0] = -0.1
    with pytest.raises(SAEFormatError, match="negative"):
        to_saelens(bad)
    with pytest.raises(SAEFormatError, match="hook name ending in '_z'"):
        save_saelens(sae, "/nonexistent/never-written", reshape_activations="hook_z")


# ----------------------------------------------------------------------------------------------------------------
# SAE-Lens -> ours


def _randomise(sl, seed: int = 5, unit_decoder: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sl.W_enc.copy_(torch.randn(sl.W_enc.shape, generator=g) / D_IN ** 0.5)
        w = torch.randn(sl.W_dec.shape, generator=g)  # rows of norm 1 (unit_decoder) or 0.5..1.5
        w = w / w.norm(dim=-1, keepdim=True)
        w = w if unit_decoder else w * (0.5 + torch.rand(D_SAE, 1, generator=g))
        sl.W_dec.copy_(w)
        sl.b_enc.copy_(0.2 * torch.randn(sl.b_enc.shape, generator=g))
        sl.b_dec.copy_(0.2 * torch.randn(sl.b_dec.shape, generator=g))
        if hasattr(sl, "threshold") and isinstance(sl.threshold, torch.nn.Parameter):
            sl.threshold.copy_(0.4 * torch.rand(sl.threshold.shape, generator=g))


def _sl_inference(arch: str, **extra):
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": extra.pop("apply_b_dec", True),
           "metadata": {"hook_name": HOOK, "model_name": "tiny-model"}, **extra}
    sl = sae_lens.SAE.from_dict(cfg)
    _randomise(sl)
    return sl.eval()


SL_CASES = {
    "standard": (lambda: _sl_inference("standard"), "relu"),
    "standard_no_bdec": (lambda: _sl_inference("standard", apply_b_dec=False), "relu"),
    "topk": (lambda: _sl_inference("topk", k=K), "topk"),
    "topk_rescaled": (lambda: _sl_inference("topk", k=K, rescale_acts_by_decoder_norm=True), "topk"),
    "jumprelu": (lambda: _sl_inference("jumprelu"), "jumprelu"),
}


@pytest.mark.parametrize("case", list(SL_CASES))
def test_saelens_inference_sae_converts_with_identical_encodings(case, tmp_path):
    sl, arch = SL_CASES[case][0](), SL_CASES[case][1]
    ours = from_saelens(sl)
    assert ours.cfg.architecture == arch and ours.cfg.hook_name == HOOK and ours.cfg.model_name == "tiny-model"
    assert not ours.training
    x = _x()
    with torch.no_grad():
        theirs_f, ours_f = sl.encode(x), ours.encode(x)
        _close(ours_f, theirs_f)
        _close(ours.decode(ours_f), sl.decode(theirs_f))
        _close(ours(x), sl(x))
    assert (ours_f != 0).any() and (ours_f == 0).any()
    # the same through a folder written by SAE-Lens itself
    sl.save_model(str(tmp_path / "f"))
    assert sae_format(tmp_path / "f") == "sae_lens"
    from_folder = load_saelens(tmp_path / "f")
    with torch.no_grad():
        _close(from_folder.encode(x), theirs_f)


def test_saelens_jumprelu_negative_threshold_is_exact_after_clamp():
    sl = _sl_inference("jumprelu")
    with torch.no_grad():
        sl.threshold[:10] = -0.3  # SAE-Lens: ReLU(z)·H(z - θ) -> negative θ acts as 0
    ours = from_saelens(sl)
    assert bool((ours.threshold >= 0).all())
    x = _x()
    with torch.no_grad():
        _close(ours.encode(x), sl.encode(x))


def test_saelens_training_saes_convert():
    x = _x(64)
    # TopK training SAE: rescale_acts_by_decoder_norm defaults to True
    tk = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    _randomise(tk)
    ours = from_saelens(tk)
    assert ours.cfg.architecture == "topk" and ours.cfg.k == K
    with torch.no_grad():
        _close(ours.encode(x), tk.encode(x))
        _close(ours(x), tk(x))

    # BatchTopK training SAE: batch-level top-k in training, its threshold (a JumpReLU) at inference
    cfg = sae_lens.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=False)
    btk = sae_lens.BatchTopKTrainingSAE(cfg)
    _randomise(btk)
    btk.topk_threshold = torch.tensor(0.25, dtype=torch.double)
    ours = from_saelens(btk)
    assert ours.cfg.architecture == "batchtopk" and ours.cfg.k == K
    assert torch.allclose(ours.threshold, torch.full((D_SAE,), 0.25))
    with torch.no_grad():
        _close(ours.encode(x, use_batch_topk=True), btk.encode(x))  # the training-time activation
    # what SAE-Lens writes for inference (a JumpReLU with the threshold) loads back as our batchtopk
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        btk.save_inference_model(d)
        inference = sae_lens.SAE.load_from_disk(d)
        assert type(inference).__name__ == "JumpReLUSAE"
        loaded = load_saelens(d)
        assert loaded.cfg.architecture == "batchtopk" and loaded.cfg.k == K
        with torch.no_grad():
            _close(loaded.encode(x), inference.encode(x))
            _close(loaded(x), inference(x))


def test_converted_saelens_sae_splices_into_our_model():
    """A SAE-Lens SAE, once converted, works with our splice code (the error term makes it exact)."""
    import interp
    from conftest import make_hf_ssm

    model = interp.load(make_hf_ssm("mamba1"))  # d_model 32
    cfg = {"architecture": "topk", "d_in": 32, "d_sae": 64, "k": 4, "metadata": {"hook_name": HOOK}}
    sl = sae_lens.SAE.from_dict(cfg)
    ours = from_saelens(sl)
    tokens = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model(tokens)
        spliced = run_with_sae(model, tokens, sae=ours, with_error=True)
        recon_only = run_with_sae(model, tokens, sae=ours, with_error=False)
    assert torch.allclose(clean, spliced, atol=1e-5)
    assert not torch.allclose(clean, recon_only, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# format detection and errors


def test_folder_of_neither_format_gives_clear_error(tmp_path):
    with pytest.raises(SAEFormatError, match="is not a folder"):
        load_sae(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SAEFormatError, match=r"not a saved SAE: missing \['cfg.json', 'sae_weights.safetensors'\]"):
        load_sae(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "cfg.json").write_text(json.dumps({"hidden_size": 32, "model_type": "mamba"}))
    (other / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(SAEFormatError, match="neither an interp SAE config nor an SAE-Lens one"):
        load_sae(other)
    (other / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="not valid JSON"):
        load_sae(other)
    # an unsupported SAE-Lens architecture names what is supported
    gated = tmp_path / "gated"
    sae_lens.SAE.from_dict({"architecture": "gated", "d_in": D_IN, "d_sae": D_SAE}).save_model(str(gated))
    with pytest.raises(SAEFormatError, match="'gated' has no equivalent here; supported"):
        load_sae(gated)
    # each loader refuses the other's format with a pointer to the right one
    ours = tmp_path / "ours"
    _ours("relu").save(ours)
    assert sae_format(ours) == "interp"
    with pytest.raises(SAEFormatError, match="interp's own format"):
        load_saelens(ours)
    assert load_sae(ours).cfg.architecture == "relu"
    with pytest.raises(SAEFormatError, match="expected a sae_lens.SAE or a folder"):
        from_saelens(object())


def test_layer_norm_saes_are_refused_with_advice(tmp_path):
    sl = sae_lens.SAE.from_dict({"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE,
                                 "normalize_activations": "layer_norm"})
    with pytest.raises(SAEFormatError, match="layer_norm"):
        from_saelens(sl)


def test_interp_config_is_carried_in_metadata(tmp_path):
    sae = _ours("topk")
    save_saelens(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["metadata"][INTERP_CONFIG_KEY]["k"] == K
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
