"""SAE training and activation-caching throughput: ours against SAE-Lens, in one run, on the CPU.

    python bench/sae.py                        # d_in 768, 16x latents (12288), k 32, batch 4096, 2 threads
    python bench/sae.py --quick                # smoke test at small scale (about a minute): checks the script runs
    python bench/sae.py --skip-cache           # training only;  --skip-train: caching only

Training (``interp.sae.train_sae`` against SAE-Lens's ``SAETrainer`` driving a ``TopKTrainingSAE``):

* the same architecture: TopK (k = 32) of d_sae = 16 · d_in latents, ``b_dec`` subtracted from the input, AuxK
  loss with coefficient 1/32 (Gao et al.; SAE-Lens's default 1.0 is set to 1/32 too) and aux_k = d_in / 2, a
  dead-latent window of 1000 steps, Adam (lr 3e-4, betas 0.9 / 0.999, constant schedule), gradient-norm clipping
  at 1.0 (always on in SAE-Lens, so turned on in ours), float32, no autocast; each library keeps its own
  decoder-norm handling (ours: unit-norm rows, gradient projected; SAE-Lens: decoder init norm 0.1 and
  pre-activations rescaled by decoder norms); ``b_dec`` starts from the data in both (ours: the geometric median
  of the first batch, inside the timed run; SAE-Lens 6 starts from zeros, which with a residual-stream-sized mean
  and a few dozen steps at lr 3e-4 leaves its explained variance far below zero, so the script sets its ``b_dec``
  to the first batch's mean, also timed; ``--saelens-zero-bdec`` keeps SAE-Lens's own zeros);
* the same batches, in the same order, from an in-memory iterator (SAE-Lens's ``data_provider``; ours takes the
  list itself), the same batch size and number of steps; nothing written to disk, no logging service;
* timed end to end (building the SAE and optimizer, every step), interleaved: each repeat runs both trainers from
  scratch, alternating which goes first, so both see the same machine load; the median tokens/s is reported;
* explained variance (docs/design.md §5.3, x̄ = mean over the evaluation set) of both SAEs on the same held-out tokens
  after the same number of training tokens. SAE-Lens also runs with ``use_sparse_activations=True`` (its sparse
  COO decoder) if ``--saelens-sparse`` is given.

Activations are synthetic but shaped like a residual stream (:func:`synthetic_batches`): a large mean vector, plus
a sparse non-negative combination of unit "true features" (2 · d_sae of them, Zipf-distributed frequencies, on
average 48 active per token, exponential magnitudes, per-token scale jitter), plus isotropic Gaussian noise (5%
of the signal's per-dimension standard deviation). That gives an SAE something real to find (EV climbs with
training, dead latents appear at the usual rates) without needing a model large enough for d_in = 768 on a CPU;
throughput itself does not depend on the values.

Caching (``interp.activations.cache_activations`` against SAE-Lens's ``CacheActivationsRunner``): both run the
same randomly initialised transformer (GPT-2-small widths: d_model 768, 12 heads, d_mlp 3072, 4 layers, vocab
4096; built from a config, nothing downloaded) over the same pre-tokenised sequences (128 tokens each, no BOS
dropped, no shuffling), cache ``blocks.1.hook_resid_post`` in float32 to a temporary folder, with the same shard
size and model batch size. Ours runs it as ``interp.hooks.HookedTransformerModel`` (its fused inference forward,
``interp.hooks.transformer_fused``); SAE-Lens runs a plain TransformerLens ``HookedTransformer`` holding the same
weights, which is what its loader returns. SAE-Lens's runner only loads models by name (``load_model`` ->
``HookedTransformer.from_pretrained``), which needs the network; the script replaces that one function in
``sae_lens.cache_activations_runner`` by one returning the local model (``override_dataset`` takes the tokens
as an in-memory ``datasets.Dataset``). Everything else is SAE-Lens's own code path (``ActivationsStore``, Arrow
shards, consolidation). Timed end to end, interleaved; tokens/s is tokens cached per second. Before timing, the
script caches the first two batches with both and prints the largest difference between their rows.

Results go to ``docs/benchmarks.md`` (copy the printed table).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------------------------
# synthetic activations


@dataclass
class Synthetic:
    """A fixed generative model of residual-stream-like activations (see the module docstring)."""

    mean: Tensor  # [d_in]
    features: Tensor  # [n_features, d_in], unit rows
    freq: Tensor  # [n_features], sums to 1 (Zipf)
    mean_active: float
    noise: float


def make_synthetic(d_in: int, n_features: int, mean_active: float = 48.0, seed: int = 0) -> Synthetic:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_features, d_in, generator=g)
    feats /= feats.norm(dim=-1, keepdim=True)
    mean = torch.randn(d_in, generator=g) * 2.0
    freq = 1.0 / (torch.arange(n_features, dtype=torch.float64) + 20.0) ** 0.8
    freq = (freq / freq.sum()).float()
    # per-dimension std of the sparse part is about sqrt(mean_active * E[a^2] / d_in)
    signal_std = math.sqrt(mean_active * 2.0 / d_in)
    return Synthetic(mean=mean, features=feats, freq=freq, mean_active=mean_active, noise=0.05 * signal_std)


def synthetic_batch(s: Synthetic, batch_size: int, g: torch.Generator) -> Tensor:
    """One batch [batch_size, d_in] float32: mean + Σ a_i f_i (sparse, non-negative) + noise."""
    n_draws = 2 * max(1, round(s.mean_active))
    idx = torch.multinomial(s.freq.expand(batch_size, -1), n_draws, replacement=True, generator=g)  # [B, n]
    mag = torch.empty(batch_size, n_draws).exponential_(1.0, generator=g)
    # each draw kept with probability 1/2: a binomial number of active features per token, mean_active on average
    mag *= (torch.rand(batch_size, n_draws, generator=g) < 0.5).float()
    scale = 1.0 + 0.2 * torch.randn(batch_size, 1, generator=g)
    x = torch.nn.functional.embedding_bag(idx, s.features, per_sample_weights=mag, mode="sum") * scale
    return x + s.mean + s.noise * torch.randn(batch_size, s.features.shape[1], generator=g)


def synthetic_batches(s: Synthetic, n: int, batch_size: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [synthetic_batch(s, batch_size, g) for _ in range(n)]


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# ----------------------------------------------------------------------------------------------------------------
# the two trainers


@dataclass
class TrainSetup:
    d_in: int
    d_sae: int
    k: int
    batch_size: int
    steps: int
    lr: float = 3e-4
    aux_coefficient: float = 1 / 32
    dead_window_steps: int = 1000


def train_ours(setup: TrainSetup, batches: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """Train with ``interp.sae.train_sae``; returns x [n, d_in] -> x̂ [n, d_in]."""
    from interp.sae import SAEConfig, train_sae

    cfg = SAEConfig(
        d_in=setup.d_in, d_sae=setup.d_sae, architecture="topk", k=setup.k, lr=setup.lr,
        batch_size=setup.batch_size, total_training_tokens=setup.steps * setup.batch_size,
        aux_coefficient=setup.aux_coefficient, aux_k=setup.d_in // 2,
        dead_window_tokens=setup.dead_window_steps * setup.batch_size, grad_clip=1.0,
        checkpoint_every=0, seed=0,
    )
    sae = train_sae(cfg, batches[: setup.steps], device="cpu", progress=False).sae

    @torch.no_grad()
    def reconstruct(x: Tensor) -> Tensor:
        return sae(x)

    return reconstruct


def train_saelens(setup: TrainSetup, batches: list[Tensor], sparse: bool = False,
                  init_b_dec: bool = True, saelens_defaults: bool = False, return_sae: bool = False) -> Any:
    """Train with SAE-Lens's ``SAETrainer`` on a ``TopKTrainingSAE``; returns x [n, d_in] -> x̂ [n, d_in] (the SAE
    itself with ``return_sae``).

    ``init_b_dec``: start ``b_dec`` at the first batch's mean (SAE-Lens itself starts from zeros).
    ``saelens_defaults``: SAE-Lens's own AuxK coefficient and dead-feature window instead of ``setup``'s."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training import sae_trainer as trainer_mod
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    aux = {} if saelens_defaults else {"aux_loss_coefficient": setup.aux_coefficient}
    sae_cfg = TopKTrainingSAEConfig(
        d_in=setup.d_in, d_sae=setup.d_sae, k=setup.k, dtype="float32", device="cpu",
        apply_b_dec_to_input=True, use_sparse_activations=sparse, **aux,
    )
    sae = TopKTrainingSAE(sae_cfg)
    if init_b_dec:
        with torch.no_grad():
            sae.b_dec.copy_(batches[0].mean(0))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=setup.steps * setup.batch_size, train_batch_size_samples=setup.batch_size,
        lr=setup.lr, lr_end=setup.lr, lr_scheduler_name="constant", adam_beta1=0.9, adam_beta2=0.999,
        device="cpu", autocast=False, **({} if saelens_defaults else {"dead_feature_window": setup.dead_window_steps}),
        feature_sampling_window=max(setup.steps, 1), n_checkpoints=0, checkpoint_path=None,
        save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(batches[: setup.steps]))
    bar, trainer_mod.tqdm = trainer_mod.tqdm, functools.partial(trainer_mod.tqdm, disable=True)  # as progress=False
    try:
        sae = trainer.fit()
    finally:
        trainer_mod.tqdm = bar
    if return_sae:
        return sae.eval()

    @torch.no_grad()
    def reconstruct(x: Tensor) -> Tensor:
        sae.eval()
        acts = sae.encode(x)
        out = sae.decode(acts)
        return out.to_dense() if out.is_sparse else out

    return reconstruct


def bench_training(setup: TrainSetup, repeats: int, saelens_sparse: bool, eval_tokens: int,
                   saelens_init_b_dec: bool = True) -> dict[str, Any]:
    synth = make_synthetic(setup.d_in, 2 * setup.d_sae)
    t0 = time.perf_counter()
    batches = synthetic_batches(synth, setup.steps, setup.batch_size, seed=1)
    held_out = torch.cat(synthetic_batches(synth, max(1, eval_tokens // setup.batch_size), setup.batch_size, seed=2))
    print(f"  data: {setup.steps} batches of {setup.batch_size} + {held_out.shape[0]} held-out tokens "
          f"generated in {time.perf_counter() - t0:.1f}s", flush=True)
    runners: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
        "ours": lambda: train_ours(setup, batches),
        "sae_lens": lambda: train_saelens(setup, batches, init_b_dec=saelens_init_b_dec),
    }
    if saelens_sparse:
        runners["sae_lens_sparse"] = lambda: train_saelens(setup, batches, sparse=True, init_b_dec=saelens_init_b_dec)
    # warm-up: two steps each (thread pools, allocator, first-call imports)
    warm = TrainSetup(**{**setup.__dict__, "steps": 2})
    train_ours(warm, batches)
    train_saelens(warm, batches)
    times: dict[str, list[float]] = {name: [] for name in runners}
    ev: dict[str, float] = {}
    names = list(runners)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            reconstruct = runners[name]()
            times[name].append(time.perf_counter() - t)
            ev[name] = explained_variance(held_out, reconstruct(held_out))
            print(f"  repeat {r + 1}/{repeats} {name:16} {times[name][-1]:8.2f}s  "
                  f"{setup.steps * setup.batch_size / times[name][-1]:10.0f} tok/s  EV {ev[name]:.4f}", flush=True)
    tokens = setup.steps * setup.batch_size
    return {name: {"seconds": statistics.median(v), "tokens_per_s": tokens / statistics.median(v),
                   "explained_variance": ev[name]} for name, v in times.items()}


# ----------------------------------------------------------------------------------------------------------------
# quality at a converging token budget, on a real model's activations


def tokfsm_activations(n_tokens: int, hook: str = "blocks.2.hook_resid_post") -> Tensor:
    """[n_tokens, 64] float32 residual-stream rows of the embedded ``tokfsm-mamba`` on fresh TokFSM sequences (BOS
    dropped, the stream's own buffer shuffle), as a user would stream them."""
    import interp
    from interp.activations import stream_activations
    from interp.data import tokfsm_batches

    model = interp.load("tokfsm-mamba")
    rows = [x.float() for x in stream_activations(model, tokfsm_batches(64, seed=0), hook=hook, batch_size=8192,
                                                  max_tokens=n_tokens, seed=0, progress=False)]
    return torch.cat(rows)[:n_tokens]


def sae_report(name: str, seconds: float, tokens: int, acts: Tensor, x: Tensor, x_hat: Tensor) -> dict[str, Any]:
    """Held-out explained variance, L0, dead latents (never active on the held-out rows) and training tokens/s."""
    fired = (acts != 0).any(0)
    r = {"explained_variance": explained_variance(x, x_hat), "l0": float((acts != 0).float().sum(1).mean()),
         "dead_fraction": float(1 - fired.float().mean()), "seconds": seconds, "tokens_per_s": tokens / seconds}
    print(f"  {name:34} EV {r['explained_variance']:.4f}  L0 {r['l0']:5.2f}  dead {100 * r['dead_fraction']:5.2f}%  "
          f"{seconds:7.1f}s  {r['tokens_per_s']:9.0f} tok/s", flush=True)
    return r


def bench_quality(train_tokens: int, eval_tokens: int, d_sae: int, k: int, batch_size: int,
                  saelens_lrs: list[float]) -> dict[str, Any]:
    """Ours with the library's defaults (``SAEConfig`` with only the shape, k and budget set) against SAE-Lens's
    ``TopKTrainingSAE`` with its defaults (``b_dec`` started at the first batch's mean, as in the speed test) at
    each learning rate of ``saelens_lrs`` (its default 3e-4 first): the same batches, one pass, then EV, L0 and
    dead latents on held-out rows."""
    from interp.sae import SAEConfig, train_sae

    X = tokfsm_activations(train_tokens + eval_tokens)
    train, held = X[:train_tokens], X[train_tokens:]
    batches = list(train[: (train_tokens // batch_size) * batch_size].split(batch_size))
    tokens = len(batches) * batch_size
    d_in = X.shape[1]
    print(f"  {X.shape[0]} rows of tokfsm-mamba blocks.2.hook_resid_post (d_in {d_in}): {tokens} training tokens "
          f"({len(batches)} steps of {batch_size}), {held.shape[0]} held out; TopK d_sae {d_sae}, k {k}", flush=True)
    results: dict[str, Any] = {}
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, batch_size=batch_size,
                    total_training_tokens=tokens, checkpoint_every=0)
    t = time.perf_counter()
    sae = train_sae(cfg, batches, device="cpu", progress=False).sae
    seconds = time.perf_counter() - t
    with torch.no_grad():
        acts = sae.encode(held)
        results["ours (defaults)"] = sae_report("ours (defaults)", seconds, tokens, acts, held, sae.decode(acts))
    for lr in saelens_lrs:
        setup = TrainSetup(d_in=d_in, d_sae=d_sae, k=k, batch_size=batch_size, steps=len(batches), lr=lr)
        t = time.perf_counter()
        sae_l = train_saelens(setup, batches, saelens_defaults=True, return_sae=True)
        seconds = time.perf_counter() - t
        with torch.no_grad():
            acts = sae_l.encode(held)
            acts = acts.to_dense() if acts.is_sparse else acts
            out = sae_l.decode(acts)
            name = f"SAE-Lens (defaults, lr {lr:g})"
            results[name] = sae_report(name, seconds, tokens, acts, held, out.to_dense() if out.is_sparse else out)
    return results


# ----------------------------------------------------------------------------------------------------------------
# caching


def build_model(d_model: int, n_layers: int, d_vocab: int, n_ctx: int) -> Any:
    from transformer_lens import HookedTransformerConfig

    from interp.hooks.transformer import HookedTransformerModel

    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=d_model // 64, d_head=64, d_mlp=4 * d_model, d_vocab=d_vocab,
        n_ctx=n_ctx, act_fn="gelu_new", normalization_type="LN", device="cpu", seed=0,
    )
    return HookedTransformerModel(cfg).eval()


def cache_ours(model: Any, tokens: Tensor, hook: str, out: Path, model_batch: int, shard_tokens: int) -> int:
    from interp.activations import cache_activations

    manifest = cache_activations(
        model, tokens.split(model_batch), hook=[hook], out=out, dtype=torch.float32, shard_tokens=shard_tokens,
        drop_bos=False, drop_pad=False, progress=False,
    )
    return manifest.n_rows


def cache_saelens(model: Any, tokens: Tensor, hook: str, out: Path, model_batch: int, shard_tokens: int) -> int:
    import datasets
    import sae_lens.cache_activations_runner as runner_mod
    from sae_lens.config import CacheActivationsRunnerConfig

    n_seq, ctx = tokens.shape
    d_in = model.cfg.d_model
    bytes_per_token = d_in * 4
    cfg = CacheActivationsRunnerConfig(
        dataset_path="local-tokens", model_name="local-model", model_batch_size=model_batch, hook_name=hook,
        d_in=d_in, training_tokens=n_seq * ctx, context_size=ctx, model_class_name="HookedTransformer",
        new_cached_activations_path=str(out), shuffle=False, dtype="float32", device="cpu",
        # one Arrow shard per `shard_tokens` tokens, as ours (the runner sizes its buffers from bytes)
        buffer_size_gb=(shard_tokens * bytes_per_token + 0.5) / 1e9,
        prepend_bos=False, streaming=False,
    )
    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    original = runner_mod.load_model, runner_mod.tqdm
    runner_mod.load_model = lambda *a, **kw: model  # the runner loads by name only (network); give it ours
    runner_mod.tqdm = functools.partial(original[1], disable=True)  # its bar (ours runs with progress=False)
    try:
        ds = runner_mod.CacheActivationsRunner(cfg, override_dataset=dataset).run()
    finally:
        runner_mod.load_model, runner_mod.tqdm = original
    return len(ds) * ctx


def cached_difference(root: Path, hook: str) -> float:
    """Largest absolute difference between the rows the two warm-up runs cached (same tokens, same order)."""
    import datasets

    from interp.activations import ActivationStore

    ours = ActivationStore(root / "warm_ours").all(hook)
    theirs = datasets.load_from_disk(str(root / "warm_sae_lens")).with_format("torch")[:][hook]
    return float((ours - theirs.reshape(ours.shape)).abs().max())


def bench_caching(n_seq: int, ctx: int, d_model: int, n_layers: int, repeats: int, model_batch: int,
                  shard_tokens: int) -> dict[str, Any]:
    from transformer_lens import HookedTransformer

    model = build_model(d_model, n_layers, d_vocab=4096, n_ctx=ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        anchor = HookedTransformer(model.cfg).eval()  # what SAE-Lens's loader gives: TransformerLens's own class
    anchor.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 4096, (n_seq, ctx), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_post"
    models = {"ours": model, "sae_lens": anchor}
    runners = {"ours": cache_ours, "sae_lens": cache_saelens}
    root = Path(tempfile.mkdtemp(prefix="bench_sae_cache_"))
    times: dict[str, list[float]] = {n: [] for n in runners}
    rows: dict[str, int] = {}
    try:
        for name, fn in runners.items():  # warm-up on a few sequences
            fn(models[name], tokens[: 2 * model_batch], hook, root / f"warm_{name}", model_batch, shard_tokens)
        print(f"  rows agree: max |ours - SAE-Lens| = {cached_difference(root, hook):.2e}", flush=True)
        names = list(runners)
        for r in range(repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                out = root / f"{name}_{r}"
                t = time.perf_counter()
                rows[name] = runners[name](models[name], tokens, hook, out, model_batch, shard_tokens)
                times[name].append(time.perf_counter() - t)
                print(f"  repeat {r + 1}/{repeats} {name:16} {times[name][-1]:8.2f}s  "
                      f"{rows[name] / times[name][-1]:10.0f} tok/s  ({rows[name]} rows)", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {name: {"seconds": statistics.median(v), "tokens_per_s": rows[name] / statistics.median(v),
                   "rows": rows[name]} for name, v in times.items()}


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20, help="training steps per run (both trainers)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--saelens-sparse", action="store_true", help="also time SAE-Lens with use_sparse_activations")
    p.add_argument("--saelens-zero-bdec", action="store_true", help="leave SAE-Lens's b_dec at its zero init")
    p.add_argument("--cache-seqs", type=int, default=256, help="sequences of 128 tokens cached per run")
    p.add_argument("--cache-layers", type=int, default=4)
    p.add_argument("--model-batch", type=int, default=32)
    p.add_argument("--shard-tokens", type=int, default=8192)
    p.add_argument("--quality-tokens", type=int, default=2_000_000, help="quality: training tokens (one pass)")
    p.add_argument("--quality-eval", type=int, default=65536, help="quality: held-out rows")
    p.add_argument("--quality-saelens-lrs", type=float, nargs="+", default=[3e-4, 1e-3],
                   help="quality: SAE-Lens learning rates (its default 3e-4; 1e-3 is its best measured here)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-cache", action="store_true")
    p.add_argument("--quick", action="store_true", help="small shapes: check that everything runs")
    a = p.parse_args(argv)
    if a.quick:
        a.d_in, a.expansion, a.k, a.batch_size, a.steps, a.repeats = 128, 8, 8, 512, 6, 2
        a.eval_tokens, a.cache_seqs, a.model_batch, a.shard_tokens = 2048, 32, 8, 2048
        a.quality_tokens, a.quality_eval, a.quality_saelens_lrs = 16384, 4096, [3e-4]
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    import sae_lens

    print(f"torch {torch.__version__}, sae_lens {sae_lens.__version__}, {a.threads} threads, "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, Any] = {}
    if not a.skip_train:
        setup = TrainSetup(d_in=a.d_in, d_sae=a.expansion * a.d_in, k=a.k, batch_size=a.batch_size, steps=a.steps)
        print(f"SAE training: TopK d_in {setup.d_in}, d_sae {setup.d_sae}, k {setup.k}, batch {setup.batch_size}, "
              f"{setup.steps} steps ({setup.steps * setup.batch_size} tokens) per run, {a.repeats} interleaved "
              "repeats", flush=True)
        tr = bench_training(setup, a.repeats, a.saelens_sparse, a.eval_tokens, not a.saelens_zero_bdec)
        results["train"] = tr
    if not a.skip_quality:
        print(f"SAE quality: TopK d_sae 1024, k 8 on tokfsm-mamba activations, {a.quality_tokens} training tokens "
              "(one pass), each library's defaults", flush=True)
        results["quality"] = bench_quality(a.quality_tokens, a.quality_eval, 1024, 8, 4096, a.quality_saelens_lrs)
    if not a.skip_cache:
        print(f"Activation caching: {a.cache_seqs} x 128 tokens, d_model {a.d_in}, {a.cache_layers} layers, "
              f"hook blocks.1.hook_resid_post, float32, model batch {a.model_batch}, shards of {a.shard_tokens} "
              f"tokens, {a.repeats} interleaved repeats", flush=True)
        results["cache"] = bench_caching(a.cache_seqs, 128, a.d_in, a.cache_layers, a.repeats, a.model_batch,
                                         a.shard_tokens)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if "train" in results:
        tr = results["train"]
        print(f"{'training':18} {'s/run':>8} {'tok/s':>10} {'EV':>8}")
        for name, r in tr.items():
            print(f"{name:18} {r['seconds']:8.2f} {r['tokens_per_s']:10.0f} {r['explained_variance']:8.4f}")
        ratio = tr["ours"]["tokens_per_s"] / tr["sae_lens"]["tokens_per_s"]
        print(f"ours / sae_lens: {ratio:.2f}x tokens/s (target >= 1.5x), EV {tr['ours']['explained_variance']:.4f} "
              f"vs {tr['sae_lens']['explained_variance']:.4f} after the same tokens")
        results["train_ratio"] = ratio
    if "cache" in results:
        c = results["cache"]
        print(f"{'caching':18} {'s/run':>8} {'tok/s':>10}")
        for name, r in c.items():
            print(f"{name:18} {r['seconds']:8.2f} {r['tokens_per_s']:10.0f}")
        results["cache_ratio"] = c["ours"]["tokens_per_s"] / c["sae_lens"]["tokens_per_s"]
        print(f"ours / sae_lens: {results['cache_ratio']:.2f}x tokens/s")
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
