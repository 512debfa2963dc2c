"""Forward speed: our HookedSSM against Hugging Face's PyTorch path, in one run, on the CPU.

    python bench/forward.py                  # mamba-130m / mamba2-130m shapes, batch 1, L = 1024
    python bench/forward.py --layers 4 --seq-len 256 --repeats 2   # quick look

Random weights with the real shapes (nothing is downloaded). Prints seconds (median of
--repeats interleaved rounds) and ratios: HF / ours with no hooks (target >= 2x for Mamba-1, >= 1x for Mamba-2) and
the overhead of caching every ``hook_resid_post`` (target <= 10%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from interp.hooks import HookedSSM


def timed_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in interleaved rounds so all see the same machine load."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def build(family: str, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "mamba1":  # state-spaces/mamba-130m-hf
        cfg = MambaConfig(vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=layers, expand=2)
        return MambaForCausalLM(cfg).eval()
    # state-spaces/mamba2-130m
    cfg = Mamba2Config(vocab_size=50280, hidden_size=768, state_size=128, num_hidden_layers=layers, expand=2,
                       head_dim=64, num_heads=24, n_groups=1, chunk_size=256)
    return Mamba2ForCausalLM(cfg).eval()


@torch.no_grad()
def bench(family: str, layers: int, seq_len: int, repeats: int) -> dict[str, float]:
    hf = build(family, layers)
    ours = HookedSSM.from_hf_model(hf)
    tokens = torch.randint(0, 50280, (1, seq_len), generator=torch.Generator().manual_seed(0))
    err = (hf(tokens).logits - ours(tokens)).abs().max().item()
    resid = lambda n: n.endswith("hook_resid_post")
    t = timed_interleaved({"hf": lambda: hf(tokens), "ours": lambda: ours(tokens),
                           "cache": lambda: ours.run_with_cache(tokens, names_filter=resid)}, repeats)
    t_hf, t_ours, t_cache = t["hf"], t["ours"], t["cache"]
    return dict(max_abs_err=err, hf_s=t_hf, ours_s=t_ours, ours_cache_s=t_cache,
                speedup=t_hf / t_ours, cache_overhead=t_cache / t_ours - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--families", nargs="+", default=["mamba1", "mamba2"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, batch 1, L={a.seq_len}, {a.layers} layers, fp32")
    print(f"{'model':8} {'HF s':>8} {'ours s':>8} {'cache s':>8} {'HF/ours':>8} {'cache +%':>9} {'max|dlogit|':>12}")
    for fam in a.families:
        r = bench(fam, a.layers, a.seq_len, a.repeats)
        print(f"{fam:8} {r['hf_s']:8.3f} {r['ours_s']:8.3f} {r['ours_cache_s']:8.3f} {r['speedup']:7.2f}x "
              f"{100 * r['cache_overhead']:8.1f}% {r['max_abs_err']:12.2e}")


if __name__ == "__main__":
    main()
