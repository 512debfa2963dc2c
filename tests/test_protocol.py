"""The HookedModel protocol: both model families satisfy it, and their configs share TransformerLens's names."""

from __future__ import annotations

import json

import pytest
import torch

import interp
from interp.hooks import HookedModel, HookedModelConfig, HookedSSM, SSMConfig
from interp.hooks.config import UNBOUNDED_CTX

NAMES = ["tokfsm-mamba", "tokfsm-transformer"]


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    return interp.load(request.param)


def test_both_families_are_hooked_models(model):
    assert isinstance(model, HookedModel)
    assert isinstance(model.cfg, HookedModelConfig)


def test_plain_objects_are_not_hooked_models():
    assert not isinstance(object(), HookedModel)
    assert not isinstance(torch.nn.Linear(2, 2), HookedModel)


def test_cfg_fields_mean_the_same(model):
    tokens = model.to_tokens("0123", prepend_bos=False) if model.tokenizer is not None else torch.tensor([[1, 2, 3]])
    logits = model(tokens)
    cfg = model.cfg
    assert cfg.d_vocab == logits.shape[-1] == model.W_E.shape[0] == model.W_U.shape[-1]
    assert cfg.d_model == model.W_E.shape[1] == model.W_U.shape[0]
    assert cfg.n_layers == len(model.blocks)
    assert isinstance(cfg.n_ctx, int) and cfg.n_ctx >= tokens.shape[1]
    assert isinstance(cfg.device, str)
    assert torch.device(cfg.device) == next(model.parameters()).device
    # the final norm and unembedding map the residual stream to the logits on both
    _, cache = model.run_with_cache(tokens)
    resid = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(model.unembed(model.ln_final(resid)), logits, rtol=1e-4, atol=1e-4)


def test_ssm_config_aliases():
    cfg = SSMConfig(family="mamba1", d_model=16, n_layers=1, vocab_size=23, d_state=4)
    assert cfg.d_vocab == cfg.vocab_size == 23
    cfg.d_vocab = 29
    assert cfg.vocab_size == 29
    assert cfg.n_ctx == UNBOUNDED_CTX
    # the saved dict keeps the Hugging Face name and round-trips; a TransformerLens-named dict loads too
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["vocab_size"] == 29 and "d_vocab" not in d
    assert SSMConfig.from_dict(d) == cfg
    tl_named = {k: v for k, v in d.items() if k != "vocab_size"} | {"d_vocab": 31}
    assert SSMConfig.from_dict(tl_named).vocab_size == 31


def test_ssm_cfg_device_follows_the_parameters():
    cfg = SSMConfig(family="mamba1", d_model=16, n_layers=1, vocab_size=23, d_state=4)
    assert cfg.device is None
    model = HookedSSM(cfg)
    assert model.cfg.device == "cpu"
    model.to(torch.float64)
    assert model.cfg.device == "cpu"
    assert HookedSSM(SSMConfig(family="mamba1", d_model=16, n_layers=1, vocab_size=23, d_state=4,
                               device=torch.device("cpu"))).cfg.device == "cpu"
    if torch.cuda.is_available():
        model.to("cuda")
        assert model.cfg.device == str(model.W_E.device)
        model.cpu()
        assert model.cfg.device == "cpu"


def test_describe_and_residual_hooks_read_the_shared_names(model):
    from interp.hooks.hook_points import residual_hooks
    from interp.hooks.protocol import describe

    d = describe(model)
    assert d["name"] == model.cfg.model_name and d["layers"] == model.cfg.n_layers
    assert d["vocab"] == model.cfg.d_vocab and d["hook points"] == len(model.hook_dict)
    assert d["architecture"] in ("mamba1", "mamba2", "transformer") or d["architecture"].endswith("ForCausalLM") or \
        d["architecture"].endswith("LMHeadModel")
    n = model.cfg.n_layers
    assert residual_hooks(model, ("post",)) == ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    both = residual_hooks(model)
    assert both[1:3] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"] and len(both) == 1 + 2 * n
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter=both)
    assert set(cache.keys()) == set(both)  # every name is a real hook point that fires
