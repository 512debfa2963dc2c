"""Forward speed: our hooked models against Hugging Face's PyTorch path, in one run, on the CPU.

    python bench/forward.py                  # mamba-130m / mamba2-130m shapes, batch 1, L = 1024
    python bench/forward.py --layers 4 --seq-len 256 --repeats 2   # quick look
    python bench/forward.py --families jamba zamba2 falcon_h1 --layers 4   # hybrids (HookedHybrid)

Random weights (nothing is downloaded): the Mamba families have the real 130m shapes; each hybrid has its family's
layer layout (which layers are attention, MoE, shared blocks; see HYBRIDS) at d_model 768, with the depth --layers.
Prints seconds (median of --repeats interleaved rounds) and ratios: HF / ours with no hooks (targets: >= 2x for
Mamba-1, >= 1x for Mamba-2 and every hybrid) and the overhead of caching every ``hook_resid_post`` (target <= 10%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

import interp


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
    if family == "mamba2":  # state-spaces/mamba2-130m
        cfg = Mamba2Config(vocab_size=50280, hidden_size=768, state_size=128, num_hidden_layers=layers, expand=2,
                           head_dim=64, num_heads=24, n_groups=1, chunk_size=256)
        return Mamba2ForCausalLM(cfg).eval()
    import transformers

    config_name, model_name, fields = HYBRIDS[family]
    cfg = getattr(transformers, config_name)(**fields(layers))
    return getattr(transformers, model_name)(cfg).eval()


def _attn_at(layers: int, every: int) -> list[int]:
    """Attention layers: the middle one, then every ``every``-th (at least one)."""
    return sorted({layers // 2, *range(every - 1, layers, every)} & set(range(layers)))


_SHARED = dict(vocab_size=50280, hidden_size=768, num_attention_heads=12, num_key_value_heads=4,
               intermediate_size=2048)
#: family -> (HF config class, HF model class, fields(n_layers)): each family's layout at d_model 768
HYBRIDS = {
    "falcon_mamba": ("FalconMambaConfig", "FalconMambaForCausalLM", lambda n: dict(
        vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=n, expand=2)),
    "jamba": ("JambaConfig", "JambaForCausalLM", lambda n: dict(  # 1 attention layer in 8, MoE every 2nd layer
        _SHARED, num_hidden_layers=n, attn_layer_period=min(8, n), attn_layer_offset=min(8, n) // 2,
        expert_layer_period=2, expert_layer_offset=1, num_experts=16, num_experts_per_tok=2, mamba_d_state=16,
        mamba_expand=2)),
    "bamba": ("BambaConfig", "BambaForCausalLM", lambda n: dict(
        _SHARED, num_hidden_layers=n, attn_layer_indices=_attn_at(n, 8), mamba_n_heads=24, mamba_d_head=64,
        mamba_d_state=128, mamba_chunk_size=256)),
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM", lambda n: dict(  # M-M-*-: mixers and MLPs alternate
        _SHARED, head_dim=64, layers_block_type=[
            "full_attention" if i in _attn_at(n, 8) and i % 2 == 0 else "mlp" if i % 2 else "linear_attention"
            for i in range(n)], mamba_num_heads=24, mamba_head_dim=64, ssm_state_size=128, n_groups=1,
        chunk_size=256)),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", lambda n: dict(  # 4.0-H-tiny-like
        _SHARED, num_hidden_layers=n, layer_types=[
            "full_attention" if i in _attn_at(n, 8) else "linear_attention" for i in range(n)],
        num_local_experts=16, num_experts_per_tok=4, intermediate_size=512, shared_intermediate_size=1024,
        position_embedding_type="nope", mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128, mamba_chunk_size=256,
        embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078125, logits_scaling=6.0)),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM", lambda n: dict(  # attention beside Mamba-2 in every layer
        _SHARED, num_hidden_layers=n, head_dim=64, mamba_d_ssm=1536, mamba_n_heads=24, mamba_d_head=64,
        mamba_d_state=128, mamba_chunk_size=256, mamba_rms_norm=True)),
    "zamba2": ("Zamba2Config", "Zamba2ForCausalLM", lambda n: dict(  # a shared block every 6th layer, as Zamba2
        vocab_size=50280, hidden_size=768, num_hidden_layers=n, num_attention_heads=12, intermediate_size=2048,
        layers_block_type=["hybrid" if i % 6 == 5 or i == n // 2 else "linear_attention" for i in range(n)],
        num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=64, use_mem_rope=True,
        n_mamba_heads=24, mamba_d_state=64, chunk_size=256, tie_word_embeddings=True)),
}


@torch.no_grad()
def bench(family: str, layers: int, seq_len: int, repeats: int) -> dict[str, float]:
    hf = build(family, layers)
    ours = interp.load(hf)
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
    p.add_argument("--families", nargs="+", default=["mamba1", "mamba2"],
                   choices=["mamba1", "mamba2", *HYBRIDS])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, batch 1, L={a.seq_len}, {a.layers} layers, fp32")
    print(f"{'model':16} {'HF s':>8} {'ours s':>8} {'cache s':>8} {'HF/ours':>8} {'cache +%':>9} {'max|dlogit|':>12}")
    for fam in a.families:
        r = bench(fam, a.layers, a.seq_len, a.repeats)
        print(f"{fam:16} {r['hf_s']:8.3f} {r['ours_s']:8.3f} {r['ours_cache_s']:8.3f} {r['speedup']:7.2f}x "
              f"{100 * r['cache_overhead']:8.1f}% {r['max_abs_err']:12.2e}")


if __name__ == "__main__":
    main()
