"""``make demo``: the main job on the embedded default model, as a terminal summary and an HTML report.

    python -m interp.demo [--model NAME_OR_FOLDER] [--out runs/demo]

Loads the model (the embedded ``tokfsm-mamba`` when installed, else a tiny random Mamba built
here so the demo always runs offline), caches every hook on a prompt, checks that the hooked SSM
output reconstructs from the cached Δ, B, C and u, patches a recurrent state, generates with a
steering hook active, measures TokFSM transition accuracy (trained models), and writes plotly figures
(Δ heat map, logit lens, the hidden-attention interaction map of the last layer) to ``OUT/report.html``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import plotly.graph_objects as go
import torch

import interp
from interp.hooks import HookedSSM, SSMConfig
from interp.attention.figures import interaction_heatmap
from interp.attention.maps import interaction_map
from interp.hooks.scan import sequential_scan

DEFAULT_MODEL = "tokfsm-mamba"


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


def load_default(name: str | None) -> HookedSSM:
    if name:
        return interp.load(name)
    try:
        return interp.load(DEFAULT_MODEL)
    except Exception:
        print(f"(embedded {DEFAULT_MODEL!r} not installed yet: using a tiny random Mamba)")
        return tiny_model()


def logit_lens_figure(model, cache, str_tokens: list[str]) -> go.Figure:
    """Top-1 probability of the final-norm + unembed read-out of each layer's residual stream."""
    rows = []
    for i in range(model.cfg.n_layers):
        resid = cache[f"blocks.{i}.hook_resid_post"][0]
        probs = model.unembed(model.ln_final(resid)).softmax(-1)
        rows.append(probs.max(-1).values)
    z = torch.stack(rows).detach().numpy()
    ticks = [f"{j}:{t}" for j, t in enumerate(str_tokens)]  # position keeps repeated tokens apart
    return go.Figure(go.Heatmap(z=z, x=ticks, y=[f"layer {i}" for i in range(len(rows))], colorscale="Viridis",
                                colorbar=dict(title="top-1 p")),
                     layout=dict(title="Logit lens: confidence of each layer's read-out"))


def codebook_section(name: str, tokens: torch.Tensor, str_tokens: list[str]) -> go.Figure | None:
    """If the embedded codebook model of ``name`` is installed: its transition accuracy and the code each
    layer's k = 1 codebook picks at every prompt position (a heatmap), else None."""
    from interp.zoo import WEIGHTS_DIR

    cb_name = f"{name}-codebooks"
    if not (WEIGHTS_DIR / cb_name / "codebooks.json").is_file():
        return None
    from interp.codebook import collect_codes, load_codebook_model
    from interp.zoo.evaluate import transition_accuracy

    cb = load_codebook_model(cb_name)
    print(f"{cb_name}: transition accuracy with k=1 codebooks at every mixer output: {transition_accuracy(cb):.4f}")
    run = collect_codes(cb, tokens, keep_inputs=False)
    z = [run.ids[s][0, :, 0].tolist() for s in run.sites]
    return go.Figure(go.Heatmap(z=z, x=[f"{j}:{t}" for j, t in enumerate(str_tokens)], y=run.sites, text=z,
                                texttemplate="%{text}", colorscale="Viridis", showscale=False),
                     layout=dict(title=f"{cb_name}: code chosen at each position (one row per codebook)"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="interp demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="embedded name, folder or hub id (default tokfsm-mamba)")
    p.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_default(a.model)
    cfg = model.cfg
    print(f"model {cfg.name}: {cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{len(model.hook_dict)} hook points, loaded in {time.perf_counter() - t0:.2f}s")

    prompt = "<bos>" + "".join(f"{s:02d}" for s in (8, 41, 17, 93, 5, 60))
    tokens = model.to_tokens(prompt, prepend_bos=False) if model.tokenizer is not None else torch.randint(0, cfg.vocab_size, (1, 13))
    # every hook but the per-position state, so the fast chunked scan runs
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: not n.endswith("hook_state"))
    print(f"prompt {prompt!r}: {tokens.shape[1]} tokens, cached {len(cache.keys())} activations")

    worst = 0.0
    for i, block in enumerate(model.blocks):
        c = lambda h: cache[f"blocks.{i}.ssm.{h}"]
        y_ref, _ = sequential_scan(c("hook_u"), c("hook_dt"), block.ssm.A, c("hook_B"), c("hook_C"), block.ssm.D.detach())
        worst = max(worst, (y_ref - c("hook_y")).abs().max().item())
    print(f"hook_y (fast scan) == C·h + D·u by a sequential re-scan of cached Δ, B, C, u: max error {worst:.2e}")

    t = tokens.shape[1] // 2
    patched = model.run_with_hooks(tokens, state_positions=[t],
                                   fwd_hooks=[("blocks.0.ssm.hook_state", lambda h, hook: torch.zeros_like(h))])
    changed = (patched - logits).abs().amax(-1)[0]
    print(f"zeroing the layer-0 state at position {t}: logits change only from position "
          f"{int(torch.nonzero(changed > 0)[0])} on (max {changed.max():.3f})")

    gen = model.generate(tokens, max_new_tokens=16, stop_at_eos=False)
    push = torch.randn(cfg.d_model) * 4
    steered = model.generate(tokens, max_new_tokens=16, stop_at_eos=False, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x + push)])
    show = (lambda ids: model.to_string(ids)) if model.tokenizer is not None else (lambda ids: ids.tolist())
    print(f"greedy continuation : {show(gen[0, tokens.shape[1]:])}")
    print(f"with a steering hook: {show(steered[0, tokens.shape[1]:])}")

    if getattr(model.tokenizer, "vocab_size", None) == 11 and cfg.name != "tiny-random-mamba":  # trained on TokFSM
        from interp.zoo.evaluate import transition_accuracy

        print(f"TokFSM transition accuracy (100 samples of 128 tokens from BOS, T=1): {transition_accuracy(model):.4f}")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    str_tokens = model.to_str_tokens(tokens) if model.tokenizer is not None else [str(i) for i in tokens[0].tolist()]
    dt = cache["blocks.0.ssm.hook_dt"][0].T[:64].numpy()
    figs = [
        go.Figure(go.Heatmap(z=dt, x=[f"{j}:{s}" for j, s in enumerate(str_tokens)], colorscale="Magma"),
                  layout=dict(title="Layer 0 Δ (first 64 channels/heads) per position")),
        logit_lens_figure(model, cache, str_tokens),
    ]
    last = cfg.n_layers - 1
    hidden = interaction_map(model, tokens, layer=last, method="hidden", aggregate="mean_abs")[0]
    figs.append(interaction_heatmap(hidden, str_tokens, title=f"Hidden attention, layer {last} (channel mean |α|)"))
    print(f"hidden-attention map of layer {last}: {tuple(hidden.shape)}, strongest source of the last token: "
          f"position {int(hidden[-1].argmax())}")
    codebook_fig = codebook_section(cfg.name, tokens, str_tokens)
    if codebook_fig is not None:
        figs.append(codebook_fig)
    html = "".join(f.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False) for i, f in enumerate(figs))
    (out / "report.html").write_text(f"<html><head><meta charset='utf-8'><title>interp demo</title></head><body>"
                                     f"<h1>interp demo: {cfg.name}</h1>{html}</body></html>")
    print(f"report: {out / 'report.html'} (plotly, no network needed)  [{time.perf_counter() - t0:.1f}s]")


if __name__ == "__main__":
    main()
