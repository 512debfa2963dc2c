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


def test_a_batch_is_refused(model):
    batch = torch.randint(0, 19, (3, 8))
    with pytest.raises(ValueError, match=r"tokens of shape \(3, 8\): take one lens per row"):
        logit_lens(model, batch)
    with pytest.raises(TypeError):
        logit_lens(model, batch[:1], 0, 4)  # start and length are keyword-only
