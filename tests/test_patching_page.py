"""The library behind the app's Patching page and its links: ``interp.patching.patch_sites`` (every site it lists
runs in both sweeps, or refuses with the library's message), ``interp.tasks.patching`` (pairs checked, the view is
the library's sweeps), ``interp.app_links`` (link parsing, short links, widget bounds)."""

from __future__ import annotations

import pytest
import torch

import interp
import interp.zoo
from interp.app_links import DEFAULTS, check_value, link_of, parse_link
from interp.data import tokfsm_patching_pairs
from interp.hooks.hook_points import UnknownHookError
from interp.patching import (LogitDiff, attribution_sweep, component_sweep, hook_template, patch_sites,
                             patch_sweep)
from interp.tasks.patching import patching_pairs, patching_view

MODELS = [m for m in ("tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer") if m in interp.zoo.list_models()]


@pytest.mark.parametrize("name", MODELS)
def test_every_listed_site_runs(name):
    model = interp.load(name)
    sites = patch_sites(model)
    assert sites[0] == "resid_pre" and len(set(sites)) == len(sites)
    assert ("state" in sites) == (name != "tokfsm-transformer")
    templates = {hook_template(model, s) for s in sites}
    assert len(templates) == len(sites)  # one hook per site
    c, k, a, w = tokfsm_patching_pairs(2, seed=1)
    kw = dict(corrupted=k, metric=LogitDiff(a, w), layers=[1], positions=[4, 9])
    for site in sites:
        assert patch_sweep(model, c, hook=site, **kw).values.shape == (1, 2), site
        if site == "state":
            with pytest.raises(NotImplementedError, match="recurrent state"):
                attribution_sweep(model, c, hook=site, **kw)
        else:
            assert attribution_sweep(model, c, hook=site, **kw).values.shape == (1, 2), site
    with pytest.raises(UnknownHookError):
        hook_template(model, "no_such_site")


@pytest.fixture(scope="module")
def mamba():
    if "tokfsm-mamba" not in MODELS:
        pytest.skip("embedded tokfsm-mamba not installed")
    return interp.load("tokfsm-mamba")


def test_pairs_are_checked(mamba):
    p = patching_pairs(mamba, task="typed", clean="<bos>0841", corrupted="<bos>0847", answer="7", wrong="3")
    assert p.clean.tolist() == [[10, 0, 8, 4, 1]] and p.corrupted.tolist() == [[10, 0, 8, 4, 7]]
    assert p.answer.tolist() == [7] and p.wrong.tolist() == [3] and p.str_tokens[0] == "<bos>"
    with pytest.raises(ValueError, match="same token length"):
        patching_pairs(mamba, task="typed", clean="<bos>0841", corrupted="<bos>08471")
    with pytest.raises(ValueError, match="'77' is not a single token"):
        patching_pairs(mamba, task="typed", clean="<bos>0841", corrupted="<bos>0847", answer="77")
    no_answer = patching_pairs(mamba, task="typed", clean="<bos>0841", corrupted="<bos>0847")
    with pytest.raises(ValueError, match="needs an answer"):
        patching_view(mamba, no_answer, hook="resid_pre", metric="logit_diff")
    kl = patching_view(mamba, no_answer, hook="resid_pre", metric="kl")
    assert kl.sweep.values.shape == (mamba.cfg.n_layers, 5)
    tok = patching_pairs(mamba, task="tokfsm", n=3)
    ref = tokfsm_patching_pairs(3, seed=0)
    for got, want in zip((tok.clean, tok.corrupted, tok.answer, tok.wrong), ref):
        assert torch.equal(got, want)


def test_view_is_the_library_sweeps(mamba):
    c, k, a, w = tokfsm_patching_pairs(3, seed=0)
    pairs = patching_pairs(mamba, task="tokfsm", n=3)
    kw = dict(corrupted=k, metric=LogitDiff(a, w), hook="mixer_out", direction="noise")
    v = patching_view(mamba, pairs, hook="mixer_out", metric="logit_diff", direction="noise", components=True,
                      dla=True)
    ref = patch_sweep(mamba, c, **kw)
    assert torch.equal(v.sweep.values, ref.values) and f"clean run {ref.clean:.4g}" in v.caption
    assert torch.equal(v.components.values, component_sweep(mamba, c, corrupted=k, metric=LogitDiff(a, w),
                                                            direction="noise").values)
    torch.testing.assert_close(v.dla.values.sum(0) + v.dla.bias, v.dla.target, rtol=1e-4, atol=1e-4)
    ig = patching_view(mamba, pairs, hook="mixer_out", metric="logit_diff", direction="noise", method="ig", steps=3)
    assert torch.equal(ig.sweep.values, attribution_sweep(mamba, c, steps=3, **kw).values)
    assert "3 steps" in ig.caption


def test_links_round_trip():
    view, linked, notes = parse_link({"layer": "2", "rollout": "maybe", "zoom": "3", "embed": "true",
                                      "patch_dla": "1"})
    assert view["layer"] == 2 and view["patch_dla"] is True and linked == {"layer", "patch_dla"}
    assert notes == ["rollout='maybe': not true or false; using False", "zoom='3': this app has no such setting"]
    assert link_of(view) == {"layer": "2", "patch_dla": "True"}
    assert parse_link(link_of(view))[0] == view
    assert link_of(DEFAULTS) == {}
    assert check_value(7, options=[0, 1, 2]) == (0, "not one of 0..2")
    assert check_value(-1, min_value=0) == (0, "below the minimum 0")
    assert check_value(5, max_value=3) == (3, "above the maximum 3")
    assert check_value(2, options=[0, 1, 2], min_value=0, max_value=2) == (2, None)
