"""The logit lens (interp.lens): one prompt per call (a batch is refused), windows keyword-only and bounds-checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from conftest import make_hf_ssm
from interp.lens import logit_lens


@pytest.fixture(scope="module")
def model():
    return interp.load(make_hf_ssm("mamba1"))


def test_window_equals_the_full_lens(model):
    tokens = torch.randint(0, 19, (1, 12), generator=torch.Generator().manual_seed(0))
    full = logit_lens(model, tokens)
    part = logit_lens(model, tokens[0], start=3, length=5)  # [L] is one prompt too
    assert part.positions.tolist() == [3, 4, 5, 6, 7] and part.n_tokens == 12
    np.testing.assert_allclose(part.top_prob, full.top_prob[:, 3:8], rtol=1e-5)
    assert (part.next_id == tokens[0, 4:9].numpy()).all()
    with pytest.raises(ValueError, match="window"):
        logit_lens(model, tokens, start=10, length=5)
    vocab = [str(i) for i in range(model.cfg.d_vocab)]
    assert part.table(-5, vocab) == part.table(7, vocab)  # -5 of 12 tokens is position 7
    with pytest.raises(IndexError, match="position=12 is out of range"):  # no wrapping to position 0
        part.table(12, vocab)


def test_a_batch_is_refused(model):
    batch = torch.randint(0, 19, (3, 8))
    with pytest.raises(ValueError, match=r"tokens of shape \(3, 8\): take one lens per row"):
        logit_lens(model, batch)
    with pytest.raises(TypeError):
        logit_lens(model, batch[:1], 0, 4)  # start and length are keyword-only


@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer"])
@pytest.mark.parametrize("per_head", [False, True])
def test_direct_logit_attribution_sums_to_the_logit_difference(name, per_head):
    """Σ components + biases = logit[answer] - logit[wrong] of the actual run (the final norm's scale frozen)."""
    from interp.lens import direct_logit_attribution, logit_attribution_figure

    model = interp.load(name)
    tokens = torch.randint(1, 10, (3, 12), generator=torch.Generator().manual_seed(0))
    logits = model(tokens).detach()
    for wrong in (None, [2, 5, 0]):
        d = direct_logit_attribution(model, tokens, answer=[1, 4, 7], wrong=wrong, per_head=per_head)
        want = logits[[0, 1, 2], -1, [1, 4, 7]] - (0 if wrong is None else logits[[0, 1, 2], -1, wrong])
        torch.testing.assert_close(d.target, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(d.values.sum(0) + d.bias, d.target, atol=1e-4, rtol=0)
        assert d.values.shape == (len(d.labels), 3) and d.labels[0] in ("embed", "L0H0", "L0G0")
        if "mamba" in name:
            assert torch.equal(d.bias, torch.zeros(3))  # RMSNorm and unembedding without biases
    assert per_head == any(label.startswith("L0") for label in d.labels)  # per head / channel group
    assert len(logit_attribution_figure(d).data[0].y) == len(d.labels)
    with pytest.raises(ValueError, match="answer must be one token id or one per prompt"):
        direct_logit_attribution(model, tokens, answer=[1, 2])
