"""interp.attention.views: sort metrics and pooling against closed forms; thumbnails and rollout against
interaction_map; figure exports."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from interp.attention import interaction_map, normalize, rollout
from interp.attention.figures import figure_exports, npz_bytes, pooled_heatmap
from interp.attention.views import (
    METRIC_DEFINITIONS, METRICS, aggregates_for, causal_masked, detail_map, map_metric, n_channels, pool_map,
    rollout_map, thumbnail_maps,
)
from interp.demo import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_metrics_and_pooling_closed_forms():
    m = np.arange(16, dtype=float).reshape(4, 4)
    p, f = pool_map(m, out=2)
    assert f == 2 and p.tolist() == [[2.5, 4.5], [10.5, 12.5]]
    eye = np.eye(5)[None]
    assert map_metric(eye, "diagonal")[0] == pytest.approx(1.0) and map_metric(eye, "distance")[0] == 0.0
    assert map_metric(eye, "mass")[0] == pytest.approx(5.0) and map_metric(2 * eye, "max")[0] == 2.0
    sub = np.tril(np.ones((4, 4)), -1)[None]  # every token looks at each earlier one
    assert map_metric(sub, "distance")[0] == pytest.approx((3 * 1 + 2 * 2 + 1 * 3) / 6)
    assert set(METRIC_DEFINITIONS) == set(METRICS)
    with pytest.raises(ValueError):
        map_metric(eye, "nope")
    c = causal_masked(np.ones((3, 3)))
    assert np.isnan(c[0, 1]) and c[1, 0] == 1.0
    pooled, f = pool_map(causal_masked(np.ones((5, 5))), out=3)  # NaN cells ignored, an all-NaN block stays NaN
    assert f == 2 and pooled[0, 0] == 1.0 and np.isnan(pooled[0, 2])
    fig = pooled_heatmap(pooled, f, 5, "t")
    assert list(fig.data[0].x) == ["0–1", "2–3", "4–4"]


def test_views_match_interaction_map():
    model = tiny_model()
    toks = torch.randint(0, 10, (1, 9), generator=torch.Generator().manual_seed(0))
    assert aggregates_for("latim") == [] and "channel" in aggregates_for("hidden")
    assert n_channels(model) == model.cfg.d_inner
    np.testing.assert_allclose(detail_map(model, toks, layer=1, method="hidden"),
                               interaction_map(model, toks, layer=1)[0].numpy(), rtol=1e-6)
    ref = normalize(rollout([interaction_map(model, toks, layer=i).abs() for i in range(model.cfg.n_layers)]), "row")
    np.testing.assert_allclose(rollout_map(model, toks, method="hidden", normalize_="row"), ref[0].numpy(), rtol=1e-6)
    th = thumbnail_maps(model, toks, method="hidden", per_layer=3)
    assert th.maps.shape == (2 * 3, 9, 9) and [k[0] for k in th.keys] == [0, 0, 0, 1, 1, 1]
    top = th.sorted_by("mass", top=4)
    assert top.names[0] == f"L{th.keys[top.order[0]][0]} ch{th.keys[top.order[0]][1]}"
    assert list(top.scores) == sorted(top.scores, reverse=True) and top.pooled.shape == (4, 9, 9)


def test_figure_exports_and_npz():
    import plotly.graph_objects as go

    files = figure_exports(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])))
    assert 'src="http' not in files["html"].decode() and json.loads(files["json"])["data"][0]["type"] == "heatmap"
    back = np.load(io.BytesIO(npz_bytes({"t": torch.arange(3), "s": np.array(["a"])})))
    assert back["t"].tolist() == [0, 1, 2] and back["t"].dtype == np.int64 and back["s"].tolist() == ["a"]


def test_map_view_is_the_layer_map_or_the_rows_of_an_attribution():
    from interp.attention.views import attribution_rows, map_view

    model = tiny_model()
    toks = torch.randint(0, 10, (1, 9), generator=torch.Generator().manual_seed(0))
    v = map_view(model, toks, method="hidden", layer=1, aggregate=2, normalize_="row")
    np.testing.assert_array_equal(v.values, detail_map(model, toks, layer=1, method="hidden", aggregate=2,
                                                       normalize_="row"))
    assert v.rows is None and v.title == "layer 1, hidden attention (SSM), channel 2, row"
    np.testing.assert_array_equal(v.row(-1 % 9), v.values[8])
    r = map_view(model, toks, method="hidden", rollout=True)
    np.testing.assert_array_equal(r.values, rollout_map(model, toks, method="hidden"))
    assert r.title.startswith("rollout, ") and not r.signed
    w = map_view(model, toks, method="grad_x_input", query=2, all_rows_max=4)  # 9 tokens > 4: not every row
    assert w.rows == [1, 2, 3, 4, 5, 6, 7, 8] and w.values.shape == (8, 9)  # the query and the last 8 rows
    np.testing.assert_allclose(w.values, attribution_rows(model, toks, positions=w.rows, method="grad_x_input"))
    np.testing.assert_array_equal(w.row(2), w.values[1])
