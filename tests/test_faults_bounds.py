"""Issue 16, bounds and memory guards: no index is wrapped Python-style (out of range -> IndexError naming the
argument, its value and the valid range), generation / SAE arguments are checked, every interaction-map method
is refused before allocating past its budget, and a config.json describing a huge model is refused before
anything is built."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import interp
from interp.attention import interaction_map, mamba_attr, query_rows
from interp.attention.maps import MapTooLargeError, map_memory_bytes
from interp.attention.methods import methods_for
from interp.hooks.loading import ModelTooLargeError, estimate_parameters
from interp.hooks.positions import IndexOutOfRange, check_index, check_indices, check_layer

L = 12
PROPS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def mamba():
    return interp.load("tokfsm-mamba")


@pytest.fixture(scope="module")
def transformer():
    return interp.load("tokfsm-transformer")


@pytest.fixture(scope="module")
def toks(mamba):
    return torch.randint(0, mamba.cfg.d_vocab, (1, L), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------
# the one helper
# ---------------------------------------------------------------------------------------------------------
def test_check_index_helper(mamba):
    assert check_index(-1, 12, "position") == 11 and check_index(0, 12, "position") == 0
    assert check_indices([0, -2], 12, "rows") == [0, 10]
    assert check_layer(mamba, -1) == mamba.cfg.n_layers - 1
    with pytest.raises(IndexError, match=r"position=12 .*valid: 0\.\.11 or -12\.\.-1"):
        check_index(12, 12, "position")
    with pytest.raises(IndexError, match=r"rows=\[1, 17, -100\]: \[17, -100\]"):
        check_indices([1, 17, -100], 12, "rows")
    with pytest.raises(TypeError, match="integer index"):
        check_index(True, 12, "position")
    with pytest.raises(ValueError, match="empty"):
        check_indices([], 12, "rows")
    assert issubclass(IndexOutOfRange, IndexError) and issubclass(IndexOutOfRange, ValueError)


# ---------------------------------------------------------------------------------------------------------
# the cases of the issue
# ---------------------------------------------------------------------------------------------------------
def test_issue_cases_raise_naming_the_argument(mamba, transformer, toks):
    with pytest.raises(IndexError, match=r"positions=\[-100\]"):
        query_rows(mamba, toks, positions=[-100], layer=0)
    with pytest.raises(IndexError, match=r"positions=\[17\]"):
        query_rows(mamba, toks, positions=[17], layer=0)
    for model in (mamba, transformer):
        with pytest.raises(IndexError, match=r"layer=-9 .*4-layer"):
            interaction_map(model, toks, layer=-9)
    with pytest.raises(IndexError, match=r"pos_slice=\[100\]"):
        mamba.run_with_cache(toks, pos_slice=[100])
    with pytest.raises(IndexError, match=r"pos_slice=\[-13\]"):
        mamba.run_with_cache(toks, pos_slice=-13)
    with pytest.raises(IndexError, match=r"position=\[50\]"):
        mamba_attr(mamba, toks, position=50)
    with pytest.raises(IndexError, match=r"input holds a negative token id \(-1\)"):
        transformer(torch.tensor([[1, -1]]))
    with pytest.raises(IndexError, match=r"state_positions=\[5, 1000\]: \[1000\]"):
        mamba.run_with_cache(toks, names_filter="blocks.0.ssm.hook_state", state_positions=[5, 1000])
    for model in (mamba, transformer):
        with pytest.raises(ValueError, match="max_new_tokens=-3"):
            model.generate(toks, max_new_tokens=-3)
        with pytest.raises(ValueError, match="temperature=-1"):
            model.generate(toks, max_new_tokens=2, temperature=-1)
        with pytest.raises(ValueError, match="input has no positions"):
            model(torch.zeros(1, 0, dtype=torch.long))
        with pytest.raises(ValueError, match="input has no positions"):
            model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=1)
    with pytest.raises(TypeError, match="returned a torch.int64 tensor"):
        mamba.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x.long())])


def test_channels_heads_rows_positions_never_wrap(mamba, toks):
    H = mamba.cfg.d_inner
    with pytest.raises(IndexError, match=f"aggregate={H} "):
        interaction_map(mamba, toks, layer=0, aggregate=H)
    with pytest.raises(IndexError, match=r"heads=\[0, -1000\]"):
        interaction_map(mamba, toks, layer=0, heads=[0, -1000])
    from interp.attention.hidden import hidden_attention_rows
    from interp.attention.maps import ssm_parameters
    from interp.attention.perturbation import perturbation_curve
    p = ssm_parameters(mamba, toks, layer=0)
    with pytest.raises(IndexError, match="rows=12"):
        hidden_attention_rows(p.dt, p.A, p.B, p.C, [12])
    with pytest.raises(IndexError, match="position=-13"):
        perturbation_curve(mamba, toks, scores=torch.zeros(L), position=-13, baseline_id=0)
    # in range: the negative index is the explicit one
    assert torch.equal(interaction_map(mamba, toks, layer=0, aggregate=-1),
                       interaction_map(mamba, toks, layer=0, aggregate=H - 1))


def test_sae_arguments(tmp_path):
    from interp.sae import SAEConfig
    from interp.sae.train import train_sae
    for field in ("l1_coefficient", "l0_coefficient", "aux_coefficient"):
        with pytest.raises(ValueError, match=f"{field} must be a finite number >= 0"):
            SAEConfig(d_in=4, d_sae=8, **{field: -1.0})
    cfg = SAEConfig(d_in=4, d_sae=8, batch_size=4, total_training_tokens=16, b_dec_init="zeros")
    with pytest.raises(ValueError, match="batches yielded no batch"):
        train_sae(cfg, lambda: iter([]), progress=False, device="cpu")


# ---------------------------------------------------------------------------------------------------------
# properties: every in-range index equals its explicit non-negative form; every out-of-range one raises
# ---------------------------------------------------------------------------------------------------------
@PROPS
@given(p=st.integers(-3 * L, 3 * L))
def test_prop_query_rows(mamba, toks, p):
    if -L <= p < L:
        assert torch.equal(query_rows(mamba, toks, positions=[p], layer=1), query_rows(mamba, toks, positions=[p % L],
                                                                                       layer=1))
    else:
        with pytest.raises(IndexError, match=f"positions=\\[{p}\\]"):
            query_rows(mamba, toks, positions=[p], layer=1)


@PROPS
@given(layer=st.integers(-10, 10), length=st.integers(2, 10))
def test_prop_map_layers(mamba, layer, length):
    t = torch.arange(length)[None] % mamba.cfg.d_vocab
    n = mamba.cfg.n_layers
    if -n <= layer < n:
        assert torch.equal(interaction_map(mamba, t, layer=layer), interaction_map(mamba, t, layer=layer % n))
    else:
        with pytest.raises(IndexError, match=f"layer={layer} "):
            interaction_map(mamba, t, layer=layer)


@PROPS
@given(ps=st.lists(st.integers(-2 * L, 2 * L), min_size=1, max_size=4))
def test_prop_cache_pos_slice(mamba, toks, ps):
    name = "blocks.1.hook_resid_pre"
    if all(-L <= p < L for p in ps):
        got = mamba.run_with_cache(toks, names_filter=name, pos_slice=ps)[1][name]
        want = mamba.run_with_cache(toks, names_filter=name, pos_slice=[p % L for p in ps])[1][name]
        assert got.shape[1] == len(ps) and torch.equal(got, want)
    else:
        with pytest.raises(IndexError, match="pos_slice="):
            mamba.run_with_cache(toks, names_filter=name, pos_slice=ps)


@PROPS
@given(p=st.integers(-2 * L, 2 * L), layer=st.integers(-6, 6))
def test_prop_patching_positions_and_layers(mamba, toks, p, layer):
    """A patch of ``blocks.{layer}.hook_resid_pre`` at position ``p`` (the patching packages read positions
    through Positions.indices and layers through check_layer)."""
    from interp.hooks.positions import Positions
    n = mamba.cfg.n_layers
    if not -L <= p < L:
        with pytest.raises(IndexError, match=f"positions=\\[{p}\\]"):
            Positions.parse([p]).indices(L)
        return
    if not -n <= layer < n:
        with pytest.raises(IndexError, match=f"layer={layer} "):
            check_layer(mamba, layer)
        return
    (pos,), lay = Positions.parse([p]).indices(L), check_layer(mamba, layer)
    assert pos == p % L and lay == layer % n

    def zero(x, hook):
        x = x.clone()
        x[:, pos] = 0
        return x
    out = mamba.run_with_hooks(toks, fwd_hooks=[(f"blocks.{lay}.hook_resid_pre", zero)])
    clean = mamba(toks)
    assert torch.equal(out[:, :pos], clean[:, :pos])  # causal: positions before the patch are untouched


@PROPS
@given(p=st.integers(-2 * L, 2 * L))
def test_prop_steering_positions(mamba, toks, p):
    """Steering positions are a Positions spec: in range, -k and L-k edit the same position; out of range,
    an analysis over the sequence (Positions.indices) refuses naming the argument."""
    from interp.hooks.positions import Positions
    if -L <= p < L:
        m = Positions.parse([p]).mask(torch.arange(L))
        assert m.sum() == 1 and bool(m[p % L]) and Positions.parse([p]).indices(L) == [p % L]
    else:
        with pytest.raises(IndexError, match=f"positions=\\[{p}\\]"):
            Positions.parse([p]).indices(L)


@PROPS
@given(n=st.integers(-5, 4), temperature=st.floats(-3, 3, allow_nan=False))
def test_prop_generation_arguments(mamba, n, temperature):
    t = torch.tensor([[1, 2, 3]])
    if n < 0:
        with pytest.raises(ValueError, match=f"max_new_tokens={n}"):
            mamba.generate(t, max_new_tokens=n, temperature=temperature)
    elif temperature < 0:
        with pytest.raises(ValueError, match="temperature="):
            mamba.generate(t, max_new_tokens=n, temperature=temperature)
    else:
        out = mamba.generate(t, max_new_tokens=n, temperature=temperature)
        assert out.shape == (1, 3 + n) and torch.equal(out[:, :3], t)


# ---------------------------------------------------------------------------------------------------------
# memory guards
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-mamba2"])
def test_every_map_method_refused_fast_at_30k(name):
    model = interp.load(name)
    toks = torch.randint(0, model.cfg.d_vocab, (1, 30_000))
    for method in methods_for(model):
        for aggregate in ("mean_abs", "mean", "max", "none", 0):
            t0 = time.perf_counter()
            with pytest.raises(MapTooLargeError, match="over the budget"):
                interaction_map(model, toks, layer=0, method=method, aggregate=aggregate)
            assert time.perf_counter() - t0 < 5, (method, aggregate)


def test_map_estimate_covers_each_method(mamba):
    b, n = 1, 100
    sq = 4 * n * n
    assert map_memory_bytes(mamba, b, n, method="hidden") >= sq
    assert map_memory_bytes(mamba, b, n, method="unified") >= 4 * sq
    assert map_memory_bytes(mamba, b, n, method="latim") >= sq * mamba.cfg.d_model
    assert map_memory_bytes(mamba, b, n, method="hidden", aggregate="none") >= sq * mamba.cfg.d_inner
    # under the budget the maps still compute, and a small budget refuses before any forward
    assert interaction_map(mamba, torch.arange(8)[None] % 11, layer=0, method="unified").shape == (1, 8, 8)
    with pytest.raises(MapTooLargeError):
        interaction_map(mamba, torch.arange(8)[None] % 11, layer=0, method="unified", max_bytes=1000)


@pytest.mark.parametrize("field,value", [("hidden_size", 12_000), ("num_hidden_layers", 10**6)])
def test_config_json_refused_before_allocation(tmp_path, monkeypatch, field, value):
    from interp.hooks.mamba import HookedSSM
    from interp.hooks.transformer import HookedTransformerModel
    mamba_cfg = {"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280,
                 "state_size": 16, "expand": 2, "conv_kernel": 4}
    neox_cfg = {"model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12, "vocab_size": 50432,
                "num_attention_heads": 12}  # intermediate_size: 4 * hidden_size
    for cls, raw in ((HookedSSM, mamba_cfg), (HookedTransformerModel, neox_cfg)):
        folder = tmp_path / raw["model_type"]
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**raw, field: value}))
        save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))  # a folder that looks complete
        t0 = time.perf_counter()
        with pytest.raises(ModelTooLargeError, match=rf"config\.json.*{field}={value}"):
            cls.from_pretrained(str(folder))
        assert time.perf_counter() - t0 < 5
    # the budget knob: a normal config refused under a 1 MiB budget, naming the file
    monkeypatch.setenv("INTERP_MAX_MODEL_BYTES", str(2**20))
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "config.json").write_text(json.dumps(mamba_cfg))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "small" / "model.safetensors"))
    with pytest.raises(ModelTooLargeError, match=r"small/config\.json.*hidden_size=768"):
        HookedSSM.from_pretrained(str(tmp_path / "small"))
    # realistic sizes pass the default budget: Mamba-2.8B, a 7B transformer
    assert estimate_parameters({"model_type": "mamba", "hidden_size": 2560, "num_hidden_layers": 64,
                                "vocab_size": 50280, "intermediate_size": 5120}) < 3.2e9
