"""Cost curves: how the time of the four things researchers wait for grows, ours and the anchor in one run.

    python bench/cost_curves.py                       # all four, writes docs/figures/cost_*.png + cost_curves.json
    python bench/cost_curves.py --only forward map    # some of them
    python bench/cost_curves.py --quick               # small sizes: checks the script runs

* forward: Hugging Face ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` against ours (``interp.load`` of the same
  model), mamba-130m / mamba2-130m widths at ``--layers`` layers (default 4: HF at 24 layers and L 8,192 takes
  minutes per call), batch 1, L 256 → 8,192, no hooks (``bench/forward.py``'s ``bench``, one timed call each).
* map: the channel-mean |α| hidden-attention map of one mamba-130m-shaped layer, ours (``hidden_attention_reduced``)
  against the direct construction, L 256 → 8,192 for ours, the direct one up to ``--direct-max`` (it materialises
  the [D, L, L, N] decays, D·N·L²·4 bytes: 6.4 GiB at L 256, 26 GiB at 512); ``bench/attention.py``'s children
  (fresh process each).
* caching: ``interp.activations.cache_activations`` against SAE-Lens's ``CacheActivationsRunner`` on the same
  TransformerLens model and tokens (``bench/sae.py``'s ``bench_caching``), 16k → 1M tokens, d_model ``--cache-d``.
* SAE training: ``interp.sae.train_sae`` against SAE-Lens's ``SAETrainer`` (TopK, ``bench/sae.py``'s
  ``bench_training`` on its synthetic activations), 16k → 1M tokens, d_in ``--sae-d``, 16 · d_in latents, k 32.

Each point is one timed run per side after a warm-up (interleaved for caching and training); run on a quiet machine.
Figures: one plotly figure per curve (log-log seconds against L or tokens), PNG through kaleido (Chromium), else the
figure's HTML; the numbers go to ``cost_curves.json`` and are printed as markdown tables for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attention as attention_bench  # noqa: E402  (bench/attention.py)
import forward as forward_bench  # noqa: E402  (bench/forward.py)
import sae as sae_bench  # noqa: E402  (bench/sae.py)

CURVES = ("forward", "map", "caching", "training")


def forward_curve(lengths: list[int], layers: int) -> list[dict]:
    rows = []
    for family in ("mamba1", "mamba2"):
        for L in lengths:
            r = forward_bench.bench(family, layers, L, repeats=1)
            rows.append(dict(family=family, x=L, ours_s=r["ours_s"], anchor_s=r["hf_s"], max_abs_err=r["max_abs_err"]))
            print(f"  forward {family} L {L:6d}: HF {r['hf_s']:7.2f}s ours {r['ours_s']:7.2f}s "
                  f"({r['speedup']:.2f}x)", flush=True)
    return rows


def map_curve(lengths: list[int], direct_max: int, threads: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for L in lengths:
            ours = attention_bench.run_child("ours", L, threads, env)
            row = dict(family="hidden attention", x=L, ours_s=ours["seconds"], ours_mib=ours["peak_mib"],
                       anchor_s=None, anchor_mib=None)
            if L <= direct_max:
                direct = attention_bench.run_child("direct", L, threads, env)
                row.update(anchor_s=direct["seconds"], anchor_mib=direct["peak_mib"])
            rows.append(row)
            print(f"  map L {L:6d}: ours {ours['seconds']:7.2f}s {ours['peak_mib']:7.0f} MiB, direct "
                  f"{row['anchor_s'] if row['anchor_s'] is not None else '-'}", flush=True)
    return rows


def caching_curve(tokens: list[int], d_model: int) -> list[dict]:
    rows = []
    for n in tokens:
        r = sae_bench.bench_caching(n // 128, 128, d_model, 2, repeats=1, model_batch=32, shard_tokens=8192)
        rows.append(dict(family="caching", x=n, ours_s=r["ours"]["seconds"], anchor_s=r["sae_lens"]["seconds"]))
    return rows


def training_curve(tokens: list[int], d_in: int, batch: int) -> list[dict]:
    rows = []
    for n in tokens:
        setup = sae_bench.TrainSetup(d_in=d_in, d_sae=16 * d_in, k=32, batch_size=batch, steps=max(1, n // batch))
        r = sae_bench.bench_training(setup, repeats=1, saelens_sparse=False, eval_tokens=batch)
        rows.append(dict(family="SAE training", x=setup.steps * batch, ours_s=r["ours"]["seconds"],
                         anchor_s=r["sae_lens"]["seconds"]))
    return rows


ANCHORS = {"forward": "Hugging Face", "map": "direct construction", "caching": "SAE-Lens", "training": "SAE-Lens"}
X_LABEL = {"forward": "sequence length L", "map": "sequence length L", "caching": "tokens", "training": "tokens"}


def figure(name: str, rows: list[dict], out: Path, note: str) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    for family in dict.fromkeys(r["family"] for r in rows):
        pts = [r for r in rows if r["family"] == family]
        label = f" ({family})" if name == "forward" else ""
        fig.add_scatter(x=[r["x"] for r in pts], y=[r["ours_s"] for r in pts], mode="lines+markers",
                        name=f"ours{label}")
        anchor = [r for r in pts if r["anchor_s"] is not None]
        fig.add_scatter(x=[r["x"] for r in anchor], y=[r["anchor_s"] for r in anchor], mode="lines+markers",
                        name=f"{ANCHORS[name]}{label}", line=dict(dash="dash"))
    fig.update_layout(title=f"{name}: seconds against {X_LABEL[name]} ({note})", xaxis_title=X_LABEL[name],
                      yaxis_title="seconds", xaxis_type="log", yaxis_type="log", width=820, height=480,
                      template="plotly_white")
    try:
        path = out / f"cost_{name}.png"
        fig.write_image(path, scale=1.5)
    except Exception as e:  # no Chromium for kaleido: the interactive figure instead
        print(f"  (no PNG: {type(e).__name__}: {e}; writing HTML)")
        path = out / f"cost_{name}.html"
        fig.write_html(path, include_plotlyjs="cdn")
    return path


def table(name: str, rows: list[dict]) -> str:
    head = f"| {X_LABEL[name]} | | ours s | {ANCHORS[name]} s | {ANCHORS[name]} / ours |\n|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['x']:,} | {r['family']} | {r['ours_s']:.3g} | "
        + ("–" if r["anchor_s"] is None else f"{r['anchor_s']:.3g}") + " | "
        + ("–" if r["anchor_s"] is None else f"{r['anchor_s'] / r['ours_s']:.2f}x") + " |\n" for r in rows)
    return head + body


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=CURVES, default=list(CURVES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4, help="forward: layers of the mamba-130m-shaped models")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    p.add_argument("--direct-max", type=int, default=256,
                   help="map: longest L of the direct construction (its [D, L, L, N] decays: 6.4 GiB at 256)")
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536, 262144, 1048576])
    p.add_argument("--cache-d", type=int, default=256, help="caching: d_model of the 2-layer model")
    p.add_argument("--sae-d", type=int, default=256, help="training: d_in (16 x latents, k 32)")
    p.add_argument("--sae-batch", type=int, default=4096)
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.layers, a.lengths, a.direct_max, a.tokens = 1, [64, 128], 64, [2048, 4096]
        a.cache_d, a.sae_d, a.sae_batch = 64, 32, 512
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {a.threads} threads, load average {os.getloadavg()[0]:.2f}", flush=True)
    notes = {"forward": f"mamba-130m widths, {a.layers} layers, batch 1", "map": "one mamba-130m layer, D 1536, N 16",
             "caching": f"TransformerLens model d_model {a.cache_d}, 2 layers, ctx 128",
             "training": f"TopK d_in {a.sae_d}, {16 * a.sae_d} latents, k 32, batch {a.sae_batch}"}
    previous = out / "cost_curves.json"  # --only reruns some curves: keep the others' numbers
    results: dict = json.loads(previous.read_text()) if previous.exists() and set(a.only) != set(CURVES) else {}
    results.update({"notes": {**results.get("notes", {}), **{n: notes[n] for n in a.only}}, "threads": a.threads})
    for name in a.only:
        t = time.perf_counter()
        print(f"{name} ...", flush=True)
        if name == "forward":
            rows = forward_curve(a.lengths, a.layers)
        elif name == "map":
            rows = map_curve(a.lengths, a.direct_max, a.threads)
        elif name == "caching":
            rows = caching_curve(a.tokens, a.cache_d)
        else:
            rows = training_curve(a.tokens, a.sae_d, a.sae_batch)
        results[name] = rows
        (out / "cost_curves.json").write_text(json.dumps(results, indent=1))  # kept if a later curve fails
        path = figure(name, rows, out, notes[name])
        print(f"{name}: {time.perf_counter() - t:.0f}s, figure {path}\n{table(name, rows)}", flush=True)
    results["load_average_end"] = os.getloadavg()[0]
    (out / "cost_curves.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
