"""``make demo``: the main job on the embedded default model, as a terminal summary and an HTML report.

    python -m interp.demo [--model NAME_OR_FOLDER] [--out runs/demo]

Loads the model (the embedded ``tokfsm-mamba`` when installed, else a tiny random Mamba built
here so the demo always runs offline), caches every hook on a prompt, checks that the hooked SSM
output reconstructs from the cached Δ, B, C and u, patches a recurrent state, generates with a
steering hook active, measures TokFSM transition accuracy (trained models), and draws plotly figures
(Δ heat map, logit lens, the hidden-attention interaction map of the last layer, the codes of the
embedded codebooks).

Everything is computed once, by :func:`run_demo`, into a :class:`DemoResult`; the terminal summary
(:func:`summary_text`) and ``OUT/report.html`` (:func:`report_html`: the same checks as a table at the
top, then the figures) are both rendered from its :meth:`DemoResult.checks`, so they cannot disagree.
"""

from __future__ import annotations

import argparse
import html as _html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import plotly.colors
import plotly.graph_objects as go
import torch

import interp
from interp import lens
from interp.hooks import HookedSSM, SSMConfig
from interp.attention.figures import interaction_heatmap
from interp.attention.maps import interaction_map
from interp.hooks.hook_points import layer_of
from interp.hooks.scan import sequential_scan

DEFAULT_MODEL = "tokfsm-mamba"
MAX_DT_ROWS = 256  # the Δ heat map shows every channel up to this many, else this many (named in its title)
POSITION_AXIS = "position:token"
# distinct qualitative colours for categorical data (codebook codes); cycled when there are more categories
CATEGORICAL = list(dict.fromkeys(plotly.colors.qualitative.Alphabet + plotly.colors.qualitative.Dark24
                                 + plotly.colors.qualitative.Light24))


@dataclass(frozen=True)
class Check:
    """One result of the demo: a line ``name: value`` of the terminal summary, a row of the report's table."""

    name: str
    value: str

    def line(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass
class DemoResult:
    """Everything the demo measured and drew, computed once by :func:`run_demo`."""

    model: str
    family: str
    n_layers: int
    d_model: int
    n_hooks: int
    load_s: float
    prompt: str
    n_tokens: int
    n_cached: int
    scan_max_error: float  # max |hook_y − sequential re-scan of the cached Δ, B, C, u| over all layers
    patch_position: int  # position whose layer-0 state is zeroed
    first_changed: int  # first position whose logits change (== patch_position when causal)
    max_logit_change: float
    greedy: str  # greedy continuation of the prompt
    steered: str  # the same with a steering vector added to the layer-0 residual stream
    hidden_layer: int
    hidden_shape: tuple[int, ...]
    hidden_argmax: int  # strongest source position of the last token in the hidden-attention map
    transition_accuracy: float | None = None  # TokFSM-trained models only
    codebooks: str | None = None  # the embedded codebook model's name, when installed
    codebook_accuracy: float | None = None
    note: str | None = None  # e.g. that the random fallback model was used
    figures: list[go.Figure] = field(default_factory=list, repr=False)

    def checks(self) -> list[Check]:
        """The summary, in order: what the terminal prints and the report's table shows."""
        out = [Check("note", self.note)] if self.note else []
        out += [
            Check(f"model {self.model}", f"{self.family}, {self.n_layers} layers, d_model {self.d_model}, "
                                         f"{self.n_hooks} hook points, loaded in {self.load_s:.2f}s"),
            Check(f"prompt {self.prompt!r}", f"{self.n_tokens} tokens, cached {self.n_cached} activations"),
            Check("hook_y (fast scan) == C·h + D·u by a sequential re-scan of cached Δ, B, C, u",
                  f"max error {self.scan_max_error:.2e}"),
            Check(f"zeroing the layer-0 state at position {self.patch_position}",
                  f"logits change only from position {self.first_changed} on (max {self.max_logit_change:.3f})"),
            Check("greedy continuation", self.greedy),
            Check("with a steering hook", self.steered),
        ]
        if self.transition_accuracy is not None:
            out.append(Check("TokFSM transition accuracy (100 samples of 128 tokens from BOS, T=1)",
                             f"{self.transition_accuracy:.4f}"))
        out.append(Check(f"hidden-attention map of layer {self.hidden_layer}",
                         f"{self.hidden_shape}, strongest source of the last token: position {self.hidden_argmax}"))
        if self.codebook_accuracy is not None:
            out.append(Check(f"{self.codebooks}: transition accuracy with k=1 codebooks at every mixer output",
                             f"{self.codebook_accuracy:.4f}"))
        return out


def summary_text(result: DemoResult) -> str:
    """The terminal summary: one ``name: value`` line per check."""
    return "\n".join(c.line() for c in result.checks())


def checks_table(checks: list[Check]) -> str:
    """The checks as an HTML table (``id="checks"``), one row per check, text escaped."""
    rows = "".join(f"<tr><td>{_html.escape(c.name)}</td><td>{_html.escape(c.value)}</td></tr>" for c in checks)
    return f"<table id='checks'><thead><tr><th>check</th><th>result</th></tr></thead><tbody>{rows}</tbody></table>"


def report_html(result: DemoResult) -> str:
    """The self-contained report: the checks table at the top, then the figures (plotly.js inlined once)."""
    figs = "".join(f.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
                   for i, f in enumerate(result.figures))
    style = ("body{font-family:sans-serif} table{border-collapse:collapse} td{font-family:monospace} "
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}")
    name = _html.escape(result.model)
    return (f"<html><head><meta charset='utf-8'><title>interp demo: {name}</title><style>{style}</style></head><body>"
            f"<h1>interp demo: {name}</h1><h2>Checks</h2>{checks_table(result.checks())}"
            f"<h2>Figures</h2>{figs}</body></html>")


def write_report(result: DemoResult, out: Path) -> Path:
    """Write :func:`report_html` to ``out/report.html``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(report_html(result), encoding="utf-8")
    return path


def tiny_model() -> HookedSSM:
    """A random 2-layer Mamba-1 over the TokFSM digit vocabulary (used before weights ship)."""
    from interp.data import DigitTokenizer

    tok = DigitTokenizer()
    cfg = SSMConfig(family="mamba1", d_model=32, n_layers=2, vocab_size=tok.vocab_size, d_state=8,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                    default_prepend_bos=True, name="tiny-random-mamba")
    torch.manual_seed(0)
    model = HookedSSM(cfg, tokenizer=tok)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.arange(1, cfg.d_state + 1).float()).expand_as(p))
            elif name.endswith("dt_proj.bias"):
                p.fill_(-3.0)
    return model.eval()


def load_default(name: str | None) -> tuple[HookedSSM, str | None]:
    """The model ``name`` (default: the embedded one, else :func:`tiny_model`) and a note when it fell back."""
    if name:
        return interp.load(name), None
    try:
        return interp.load(DEFAULT_MODEL), None
    except Exception:
        return tiny_model(), f"embedded {DEFAULT_MODEL!r} not installed yet: using a tiny random Mamba"


def position_labels(str_tokens: list[str]) -> list[str]:
    """``"{position}:{token}"`` tick labels (the position keeps repeated tokens apart)."""
    return [f"{j}:{t}" for j, t in enumerate(str_tokens)]


def dt_figure(dt: torch.Tensor, str_tokens: list[str], layer: int = 0, unit: str = "channel",
              max_rows: int = MAX_DT_ROWS) -> go.Figure:
    """Heat map of one layer's Δ ``dt`` [pos, H] (one row per channel, or head for Mamba-2).

    Shows all H rows when H <= ``max_rows``; otherwise the ``max_rows`` with the largest mean Δ over the
    prompt, in index order, and the title says so (the y ticks are the channel indices shown).
    """
    n = dt.shape[-1]
    if n <= max_rows:
        shown, which = torch.arange(n), f"all {n} {unit}s"
    else:
        shown = dt.float().mean(0).topk(max_rows).indices.sort().values
        which = f"{unit}s: the {max_rows} of {n} with the largest mean Δ over the prompt, in {unit} order"
    z = dt[:, shown].T.detach().float().numpy()
    fig = go.Figure(go.Heatmap(z=z, x=position_labels(str_tokens), y=[str(int(c)) for c in shown],
                               colorscale="Magma", colorbar=dict(title=dict(text="Δ (softplus)")),
                               hovertemplate=f"{unit} %{{y}}<br>position %{{x}}<br>Δ %{{z:.4g}}<extra></extra>"))
    fig.update_layout(title=f"Layer {layer} Δ per position ({which})",
                      height=int(min(1000, max(420, 3 * len(shown) + 160))),
                      xaxis=dict(title=dict(text=POSITION_AXIS), type="category"),
                      yaxis=dict(title=dict(text=f"{unit} index"), type="category", autorange="reversed"))
    return fig


def logit_lens_figure(model, tokens: torch.Tensor, str_tokens: list[str]) -> go.Figure:
    """The report's logit lens (:func:`interp.lens.logit_lens`, drawn by :func:`interp.lens.logit_lens_figure`):
    each layer's top-1 read-out and its probability."""
    return lens.logit_lens_figure(lens.logit_lens(model, tokens), str_tokens, lens.vocabulary(model))


def _site_label(site: str) -> str:
    """``blocks.3.ssm.hook_out`` → ``L3`` (other names unchanged): short enough for a colour-bar tick."""
    layer = layer_of(site)
    return f"L{layer}" if layer is not None and layer >= 0 else site


def discrete_colorscale(colors: list[str]) -> list[list]:
    """A stepped plotly colour scale: integer value i in [0, len(colors)) gets exactly ``colors[i]`` when
    ``zmin=-0.5, zmax=len(colors) - 0.5`` (no interpolation between categories)."""
    n = len(colors)
    return [[k / n, c] for i, c in enumerate(colors) for k in (i, i + 1)]


def code_figure(ids: dict[str, torch.Tensor], str_tokens: list[str], title: str) -> go.Figure:
    """The code each codebook picks at every position, ``ids[site]`` [pos] (one row per codebook), as
    categories: each (codebook, code) pair gets its own qualitative colour, named on the colour bar,
    in the cell text and on hover (codes of different codebooks are unrelated, so they never share a colour
    unless there are more pairs than :data:`CATEGORICAL` colours)."""
    sites = list(ids)
    codes = [[int(c) for c in ids[s].tolist()] for s in sites]
    cats = list(dict.fromkeys((r, c) for r, row in enumerate(codes) for c in row))  # first-seen order
    index = {cat: i for i, cat in enumerate(cats)}
    z = [[index[(r, c)] for c in row] for r, row in enumerate(codes)]
    colors = [CATEGORICAL[i % len(CATEGORICAL)] for i in range(len(cats))]
    fig = go.Figure(go.Heatmap(
        z=z, x=position_labels(str_tokens), y=sites, text=codes, texttemplate="%{text}", customdata=codes,
        colorscale=discrete_colorscale(colors), zmin=-0.5, zmax=len(cats) - 0.5, xgap=1, ygap=1,
        hovertemplate="codebook %{y}<br>position %{x}<br>code %{customdata}<extra></extra>",
        colorbar=dict(title=dict(text="codebook · code"), tickmode="array", tickvals=list(range(len(cats))),
                      ticktext=[f"{_site_label(sites[r])} · {c}" for r, c in cats], tickfont=dict(size=9)),
    ))
    fig.update_layout(title=title, height=int(max(450, 11 * len(cats) + 140)),
                      xaxis=dict(title=dict(text=POSITION_AXIS), type="category"),
                      yaxis=dict(title=dict(text="codebook (site)"), type="category", autorange="reversed"))
    return fig


class CodebookSection(NamedTuple):
    """The embedded codebook model's part of the demo."""

    name: str
    accuracy: float  # TokFSM transition accuracy with the codebooks in place
    figure: go.Figure  # the code each codebook picks at every prompt position


def codebook_section(name: str, tokens: torch.Tensor, str_tokens: list[str]) -> CodebookSection | None:
    """If the embedded codebook model of ``name`` is installed: its transition accuracy and the code each
    layer's k = 1 codebook picks at every prompt position (a heatmap), else None."""
    from interp.zoo import WEIGHTS_DIR

    cb_name = f"{name}-codebooks"
    if not (WEIGHTS_DIR / cb_name / "codebooks.json").is_file():
        return None
    from interp.codebook import collect_codes, load_codebook_model
    from interp.zoo.evaluate import transition_accuracy

    cb = load_codebook_model(cb_name)
    accuracy = transition_accuracy(cb)
    run = collect_codes(cb, tokens, keep_inputs=False)
    fig = code_figure({s: run.ids[s][0, :, 0] for s in run.hooks}, str_tokens,
                      f"{cb_name}: code chosen at each position (one row per codebook)")
    return CodebookSection(cb_name, accuracy, fig)


def scan_max_error(model: HookedSSM, cache) -> float:
    """Max |hook_y − sequential re-scan of the cached Δ, B, C, u| over all layers (the SSM decomposition)."""
    worst = 0.0
    for i, block in enumerate(model.blocks):
        c = lambda h: cache[f"blocks.{i}.ssm.{h}"]
        y_ref, _ = sequential_scan(c("hook_u"), c("hook_dt"), block.ssm.A, c("hook_B"), c("hook_C"), block.ssm.D.detach())
        worst = max(worst, (y_ref - c("hook_y")).abs().max().item())
    return worst


def state_patch(model: HookedSSM, tokens: torch.Tensor, logits: torch.Tensor) -> tuple[int, int, float]:
    """Zero the layer-0 state at the middle position t: (t, first position whose logits change, max change)."""
    t = tokens.shape[1] // 2
    patched = model.run_with_hooks(tokens, state_positions=[t],
                                   fwd_hooks=[("blocks.0.ssm.hook_state", lambda h, hook: torch.zeros_like(h))])
    changed = (patched - logits).abs().amax(-1)[0]
    return t, int(torch.nonzero(changed > 0)[0]), changed.max().item()


def continuations(model: HookedSSM, tokens: torch.Tensor) -> tuple[str, str]:
    """16 greedy tokens after the prompt, without and with a random steering vector on the layer-0 residual."""
    gen = model.generate(tokens, max_new_tokens=16, stop_at_eos=False)
    push = torch.randn(model.cfg.d_model) * 4
    steered = model.generate(tokens, max_new_tokens=16, stop_at_eos=False,
                             fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x + push)])
    show = (lambda ids: model.to_string(ids)) if model.tokenizer is not None else (lambda ids: str(ids.tolist()))
    return show(gen[0, tokens.shape[1]:]), show(steered[0, tokens.shape[1]:])


def run_demo(model_name: str | None = None) -> DemoResult:
    """Run every step of the demo on ``model_name`` (default: the embedded model) and collect the results."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, note = load_default(model_name)
    load_s = time.perf_counter() - t0
    cfg = model.cfg

    prompt = "<bos>" + "".join(f"{s:02d}" for s in (8, 41, 17, 93, 5, 60))
    tokens = model.to_tokens(prompt, prepend_bos=False) if model.tokenizer is not None else torch.randint(0, cfg.d_vocab, (1, 13))
    # every hook but the per-position state, so the fast chunked scan runs
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: not n.endswith("hook_state"))
    error = scan_max_error(model, cache)
    t, first, change = state_patch(model, tokens, logits)
    greedy, steered = continuations(model, tokens)

    accuracy = None
    if getattr(model.tokenizer, "vocab_size", None) == 11 and cfg.name != "tiny-random-mamba":  # trained on TokFSM
        from interp.zoo.evaluate import transition_accuracy

        accuracy = transition_accuracy(model)

    str_tokens = model.to_str_tokens(tokens) if model.tokenizer is not None else [str(i) for i in tokens[0].tolist()]
    unit = "head" if cfg.family == "mamba2" else "channel"
    figs = [dt_figure(cache["blocks.0.ssm.hook_dt"][0], str_tokens, unit=unit), logit_lens_figure(model, tokens, str_tokens)]
    last = cfg.n_layers - 1
    hidden = interaction_map(model, tokens, layer=last, method="hidden", aggregate="mean_abs")[0]
    figs.append(interaction_heatmap(hidden, str_tokens, title=f"Hidden attention, layer {last} (channel mean |α|)",
                                    colorbar_title="mean |α| over channels"))
    codebooks = codebook_section(cfg.name, tokens, str_tokens)
    if codebooks is not None:
        figs.append(codebooks.figure)
    return DemoResult(
        model=cfg.name, family=cfg.family, n_layers=cfg.n_layers, d_model=cfg.d_model, n_hooks=len(model.hook_dict),
        load_s=load_s, prompt=prompt, n_tokens=tokens.shape[1], n_cached=len(cache.keys()), scan_max_error=error,
        patch_position=t, first_changed=first, max_logit_change=change, greedy=greedy, steered=steered,
        hidden_layer=last, hidden_shape=tuple(hidden.shape), hidden_argmax=int(hidden[-1].argmax()),
        transition_accuracy=accuracy, codebooks=codebooks.name if codebooks else None,
        codebook_accuracy=codebooks.accuracy if codebooks else None, note=note, figures=figs,
    )


def main(argv: list[str] | None = None) -> DemoResult:
    p = argparse.ArgumentParser(prog="interp demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="embedded name, folder or hub id (default tokfsm-mamba)")
    p.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    result = run_demo(a.model)
    print(summary_text(result))
    path = write_report(result, Path(a.out))
    print(f"report: {path.resolve()} (plotly, no network needed)  [{time.perf_counter() - t0:.1f}s]")
    return result


if __name__ == "__main__":
    main()
