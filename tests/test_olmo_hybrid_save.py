"""Saving an OLMo-Hybrid-layout HookedHybrid as a Hugging Face ``OlmoHybridForCausalLM`` checkpoint
(hooks/loading.py ``save_hybrid`` dispatching on ``cfg.hf_model_type``, ``to_hf_olmo_hybrid_config``): HF random
model -> ours -> save -> ``interp.load`` gives bit-identical logits and ``OlmoHybridForCausalLM.from_pretrained``
matches ours <= 1e-4 (both tiny variants of tests/test_olmo_hybrid.py, lengths that are and are not multiples of the
chunk); the file holds exactly the tensor names HF's own ``save_pretrained`` writes; a model built from a zoo recipe
(no HF model behind it) round-trips too; what the format cannot hold is refused with a ValueError naming it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

import interp
from interp.hooks import HookedHybrid
from interp.hooks.loading import to_hf_olmo_hybrid_config
from test_olmo_hybrid import OLMO_HYBRID_CONFIGS, make_hf_olmo_hybrid

TOL = 1e-4


def _keys(folder) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("kind", list(OLMO_HYBRID_CONFIGS))
def test_save_round_trips_and_hf_reads_it(kind, tmp_path):
    from transformers import OlmoHybridForCausalLM

    hf = make_hf_olmo_hybrid(kind)
    hf.save_pretrained(str(tmp_path / "hf"))
    ours = interp.load(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ours"))
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == ["OlmoHybridForCausalLM"]
    assert _keys(tmp_path / "ours") == _keys(tmp_path / "hf")  # the names HF's own save_pretrained writes
    back = interp.load(str(tmp_path / "ours"))
    assert back.cfg == ours.cfg
    hf_back = OlmoHybridForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
    g = torch.Generator().manual_seed(1)
    for L in (13, 64, 70):  # the chunk is 64 on both sides
        tokens = torch.randint(3, hf.config.vocab_size, (2, L), generator=g)
        with torch.no_grad():
            ref = ours(tokens, return_type="logits")
            assert torch.equal(back(tokens, return_type="logits"), ref)
            got = hf_back(tokens).logits
            assert (got - ref).abs().max().item() <= TOL, L
            assert (hf(tokens).logits - got).abs().max().item() <= TOL  # HF reads back the model it wrote


def test_recipe_model_round_trips(tmp_path):
    """A model that never came from HF (the zoo's copy-deltanet layout, fresh initialisation) saves and loads."""
    from transformers import OlmoHybridForCausalLM

    from interp.zoo.recipes import get_recipe
    from interp.zoo.train import build_model

    model = build_model(get_recipe("copy-deltanet")).eval()
    with torch.no_grad():  # move the norms off 1 so that each one's name mapping matters
        for name, p in model.named_parameters():
            if name.endswith("ln1.weight") or name.endswith("ln2.weight") or "norm" in name:
                p.normal_(1, 0.3)
    model.save_pretrained(str(tmp_path))
    back = interp.load(str(tmp_path))
    assert isinstance(back, HookedHybrid) and back.cfg.hf_model_type == "olmo_hybrid"
    assert back.cfg.layer_types == model.cfg.layer_types and back.cfg.delta == model.cfg.delta
    hf = OlmoHybridForCausalLM.from_pretrained(str(tmp_path)).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(tokens, return_type="logits")
        assert torch.equal(back(tokens, return_type="logits"), ref)
        assert (hf(tokens).logits - ref).abs().max().item() <= TOL


def _cfg():
    from interp.zoo.recipes import get_recipe

    return get_recipe("copy-deltanet").hybrid_config()


@pytest.mark.parametrize("change, named", [
    (dict(rotary_dim=0), "rotary_dim"),
    (dict(layer_types=["gated_deltanet"] * 3, post_norm_layers=[]), "at least one of each"),
    (dict(layer_types=["gated_deltanet"] * 3, post_norm_layers=[], hf_model_type="bamba"), "model_type"),
    (dict(qk_norm="none"), "qk_norm"),
    (dict(mlp_bias=True), "gated MLP"),
    (dict(post_norm_layers=[]), "post_norm_layers"),
    (dict(logits_scale=2.0), "multipliers"),
])
def test_unholdable_configs_are_refused(change, named):
    cfg = dataclasses.replace(_cfg(), **change)
    with pytest.raises(ValueError, match=named):
        to_hf_olmo_hybrid_config(cfg)


def test_refusals_reach_save_pretrained(tmp_path):
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, delta=dataclasses.replace(cfg.delta, conv_bias=True))
    with pytest.raises(ValueError, match="Gated DeltaNet knobs"):
        HookedHybrid(cfg).save_pretrained(str(tmp_path))
    assert not (tmp_path / "model.safetensors").exists()
