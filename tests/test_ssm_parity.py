"""Our Mamba-1 / Mamba-2 forward equals Hugging Face's, loaded from a save_pretrained folder."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.hooks import HookedSSM

TOL = 1e-4


@pytest.mark.parametrize("L", [8, 13, 24])  # chunk_size 8 for Mamba-2: multiples and not
def test_logits_match_huggingface(hf_ssm, ssm, L):
    tokens = torch.randint(0, 61, (2, L), generator=torch.Generator().manual_seed(L))
    with torch.no_grad():
        ref = hf_ssm(tokens).logits
        ours = ssm(tokens)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= TOL


def test_padded_batch_matches_huggingface(hf_ssm, ssm):
    tokens = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0
    with torch.no_grad():
        ref = hf_ssm(tokens, attention_mask=mask).logits
        ours = ssm(tokens, attention_mask=mask)
    real = mask.bool()
    assert (ours[real] - ref[real]).abs().max().item() <= TOL


def test_in_memory_model_and_round_trip(hf_ssm, tmp_path):
    model = interp.load(hf_ssm)
    assert isinstance(model, HookedSSM)
    model.save_pretrained(str(tmp_path / "ours"))
    # our checkpoint loads back into transformers and into us with identical logits
    from transformers import AutoModelForCausalLM

    hf_again = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ours_again = interp.load(str(tmp_path / "ours"))
    tokens = torch.randint(0, 61, (1, 10))
    with torch.no_grad():
        ref = hf_ssm(tokens).logits
        assert (hf_again(tokens).logits - ref).abs().max() <= TOL
        assert (ours_again(tokens) - ref).abs().max() <= TOL


def test_long_sequence_uses_several_chunks(hf_ssm, ssm):
    tokens = torch.randint(0, 61, (1, 150), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ssm(tokens) - hf_ssm(tokens).logits).abs().max().item() <= TOL


def test_static_parameters_exposed(ssm):
    mixer = ssm.blocks[0].ssm
    assert torch.allclose(mixer.A, -torch.exp(mixer.A_log.float()))
    assert mixer.conv_weight.shape == (ssm.cfg.conv_channels, ssm.cfg.d_conv)
    assert mixer.W_in.shape[1] == ssm.cfg.d_model and mixer.W_out.shape[0] == ssm.cfg.d_model
