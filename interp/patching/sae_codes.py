"""Circuit identification from discrete SAE codes (O'Neill & Bui 2024, "Sparse Autoencoders Enable Scalable and
Reliable Circuit Identification in Language Models"; code github.com/charlieoneill11/sae-circuits).

    from interp.patching import sae_code_circuit, SAECodeConfig
    ranking = sae_code_circuit(model, positives, negatives=negatives, cfg=SAECodeConfig(seed=0))
    ranking.order[:5]       # the components ranked by codes unique to the positive prompts
    ranking.scores          # [n_layers, n_components] that count

The method, as the original code runs it (``src/main.py``, ``src/node.py``):

1. The output of every component (attention head; an SSM's Mamba-2 head or Mamba-1 channel group, its
   ``hook_gated`` channels through the out-projection: :meth:`InterpActivationCache.stack_head_results`) at the
   answer position, on the positive prompts (the model can predict the answer) and the negative prompts (it
   cannot): rows [n_prompts · n_components, d_model].
2. One sparse autoencoder (ReLU, L1, unit-norm decoder; 200 latents) trained on all those rows, shared by the
   components (:func:`interp.sae.train_sae`, full batch).
3. Each row discretised to an integer code: the index of its largest latent (``code="argmax"``, the original);
   ``code="topk"`` uses the set of its ``k`` largest latents instead.
4. For each component, the codes that occur on some positive prompt and on no negative one:
   ``|{codes on positives} - {codes on negatives}|`` (the original ``unique_to_positives_and_negatives``).
   Components are ranked by that count (ties: fewer codes unique to the negatives first, then layer/component
   order).

No ablation is run: one forward over the prompts and a small SAE fit. How the ranking compares with resample
ablation's ground truth (:func:`interp.patching.circuit_ground_truth`) and with per-component activation patching
is measured by ``bench/circuits.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from interp.hooks.config import is_ssm
from interp.hooks.tokens import as_tokens
from interp.sae import SAEConfig, SparseAutoencoder, train_sae

from .components import component_hook, component_labels

__all__ = ["SAECodeConfig", "ComponentRanking", "sae_code_circuit", "component_outputs", "discretise",
           "unique_code_counts"]


@dataclass(frozen=True)
class SAECodeConfig:
    """The SAE and its discretisation (defaults: the original's, ``num_unique=200``, ``learning_rate=1e-3``,
    500 full-batch epochs, argmax codes).

    Attributes:
        d_sae: latents of the shared SAE.
        l1_coefficient: L1 weight of :class:`interp.sae.SAEConfig` (relu). Its loss sums the squared error over
            d_model where the original averages it, so the original's ``lambda_ = 0.02`` is ``0.02 * d_model``
            here: the default (None).
        lr, steps: Adam learning rate, full-batch steps.
        code: ``"argmax"`` (the index of the largest latent) or ``"topk"`` (the set of the ``k`` largest).
        k: latents per code for ``"topk"``.
        seed: the SAE's initialisation seed (the ranking is a function of it and the prompts).
    """

    d_sae: int = 200
    l1_coefficient: float | None = None
    lr: float = 1e-3
    steps: int = 500
    code: Literal["argmax", "topk"] = "argmax"
    k: int = 2
    seed: int = 0


@dataclass(frozen=True)
class ComponentRanking:
    """Components ranked by a circuit-finding score.

    Attributes:
        scores: float [n_layers, n_components], codes that occur on the positive prompts only (higher: more
            likely in the circuit).
        unique_negative: float [n_layers, n_components], codes that occur on the negative prompts only.
        labels: [n_layers][n_components] names (``L{l}H{h}`` / ``L{l}G{g}``).
        order: every label, best first.
        codes_positive, codes_negative: int [n_pos, n_layers, n_components(, k)], each prompt's code per component.
        method: what produced it; seconds: wall time (component outputs, SAE fit, codes).
    """

    scores: Tensor
    unique_negative: Tensor
    labels: tuple[tuple[str, ...], ...]
    order: tuple[str, ...]
    codes_positive: Tensor
    codes_negative: Tensor
    method: str
    seconds: float

    def top(self, k: int) -> tuple[str, ...]:
        """The first ``k`` components of :attr:`order`."""
        return self.order[:k]


@torch.no_grad()
def component_outputs(model: Any, tokens: Any, *, position: int = -1, group_size: int | None = None) -> Tensor:
    """Each component's contribution to the residual stream at ``position``: float [b, n_layers, n_components,
    d_model] (:meth:`InterpActivationCache.stack_head_results`: an SSM's components through the out-projection,
    a transformer's heads through W_O)."""
    toks = as_tokens(model, tokens)
    L = toks.shape[1]
    if not -L <= position < L:
        raise IndexError(f"position {position} is outside prompts of {L} tokens")
    template = component_hook(model)
    names = [template.format(layer=layer) for layer in range(model.cfg.n_layers)]
    if is_ssm(model):
        _, cache = model.run_with_cache(toks, names_filter=names + ["hook_embed"])
        stack = cache.stack_head_results(layer=-1, pos_slice=position, group_size=group_size)
    else:
        if group_size is not None:
            raise ValueError("group_size splits an SSM's channels; a transformer's components are its heads")
        _, cache = model.run_with_cache(toks, names_filter=names)
        stack = cache.stack_head_results(layer=-1, pos_slice=position)
    n_comp = len(component_labels(model, layers=[0], group_size=group_size)[0])
    return stack.float().unflatten(0, (model.cfg.n_layers, n_comp)).permute(2, 0, 1, 3).contiguous()


def discretise(latents: Tensor, *, code: str = "argmax", k: int = 2) -> Tensor:
    """Latent activations [..., d_sae] -> codes: ``"argmax"`` int [...] (the largest latent's index, ties to the
    lowest, as ``np.argmax``); ``"topk"`` int [..., k] (the k largest latents' indices, sorted: a set)."""
    if code == "argmax":
        return latents.argmax(-1)
    if code == "topk":
        if not 1 <= k <= latents.shape[-1]:
            raise ValueError(f"k={k} must be in [1, d_sae={latents.shape[-1]}]")
        return latents.topk(k, dim=-1).indices.sort(-1).values
    raise ValueError(f"code must be 'argmax' or 'topk', got {code!r}")


def _code_sets(codes: Tensor, n_items: int) -> list[list[set]]:
    """codes [n, C] or [n, C, k] -> per component the set of its codes (an int, or a tuple for a top-k set)."""
    flat = codes.reshape(codes.shape[0], n_items, -1).tolist()
    return [set(tuple(row[i]) for row in flat) for i in range(n_items)]


def unique_code_counts(positive: Tensor, negative: Tensor, *, sets: bool = False) -> tuple[Tensor, Tensor]:
    """(codes occurring on positives and on no negative, codes occurring on negatives only), per component.

    ``positive`` [n_pos, *components], ``negative`` [n_neg, *components] (codes of :func:`discretise`); with
    ``sets=True`` (``topk`` codes) a trailing axis holds each code's k latent indices, one code per set ->
    two float tensors shaped like the components axes."""
    if positive.shape[1:] != negative.shape[1:]:
        raise ValueError(f"positive codes {tuple(positive.shape)} and negative codes {tuple(negative.shape)} must "
                         "agree after the prompt axis")
    comp_shape = positive.shape[1:-1] if sets else positive.shape[1:]
    n = int(torch.tensor(comp_shape).prod()) if len(comp_shape) else 1
    pos, neg = _code_sets(positive, n), _code_sets(negative, n)
    up = torch.tensor([len(p - q) for p, q in zip(pos, neg)], dtype=torch.float32).view(comp_shape)
    un = torch.tensor([len(q - p) for p, q in zip(pos, neg)], dtype=torch.float32).view(comp_shape)
    return up, un


def _fit(rows: Tensor, cfg: SAECodeConfig) -> SparseAutoencoder:
    """The shared SAE, full batch on ``rows`` [N, d_model] (interp.sae's trainer; nothing written)."""
    n, d = rows.shape
    l1 = 0.02 * d if cfg.l1_coefficient is None else cfg.l1_coefficient
    sae_cfg = SAEConfig(d_in=d, d_sae=cfg.d_sae, architecture="relu", l1_coefficient=l1,
                        lr=cfg.lr, batch_size=n, total_training_tokens=n * cfg.steps, checkpoint_every=0,
                        log_every=cfg.steps, seed=cfg.seed, b_dec_init="zeros", normalize_decoder=True,
                        dead_window_tokens=n * cfg.steps + 1)

    def batches():
        while True:
            yield rows

    threads = torch.get_num_threads()
    if rows.device.type == "cpu":  # a few hundred rows: thread hand-offs cost more than the arithmetic
        torch.set_num_threads(1)
    try:
        return train_sae(sae_cfg, batches, device=rows.device, progress=False).sae
    finally:
        torch.set_num_threads(threads)


def sae_code_circuit(model: Any, tokens: Any, *, negatives: Any, cfg: SAECodeConfig | None = None,
                     position: int = -1, group_size: int | None = None) -> ComponentRanking:
    """Rank components by the SAE codes unique to the positive prompts (module docstring).

    Args:
        tokens: the positive prompts [n_pos, L] (the model predicts the answer at ``position``).
        negatives: the negative prompts [n_neg, L'] (it cannot: e.g. the corrupted prompts of the task's pairs).
        cfg: :class:`SAECodeConfig` (SAE size, training, discretisation, seed).
        position: the position whose component outputs are encoded (default the last, where the answer is read).
        group_size: Mamba-1 channels per component (as :func:`interp.patching.component_sweep`).

    Returns a :class:`ComponentRanking`; with the same prompts and ``cfg.seed`` the same ranking (CPU)."""
    cfg = cfg or SAECodeConfig()
    t0 = time.perf_counter()
    pos_out = component_outputs(model, tokens, position=position, group_size=group_size)
    neg_out = component_outputs(model, negatives, position=position, group_size=group_size)
    n_pos, n_layers, n_comp, d = pos_out.shape
    with torch.enable_grad():
        sae = _fit(torch.cat([pos_out, neg_out]).reshape(-1, d).detach(), cfg)
    with torch.no_grad():
        codes_pos = discretise(sae.encode(pos_out.to(sae.dtype)), code=cfg.code, k=cfg.k)
        codes_neg = discretise(sae.encode(neg_out.to(sae.dtype)), code=cfg.code, k=cfg.k)
    up, un = unique_code_counts(codes_pos, codes_neg, sets=cfg.code == "topk")
    labels = component_labels(model, group_size=group_size)
    flat = [label for row in labels for label in row]
    order = sorted(range(len(flat)), key=lambda i: (-float(up.flatten()[i]), float(un.flatten()[i]), i))
    return ComponentRanking(scores=up, unique_negative=un, labels=labels, order=tuple(flat[i] for i in order),
                            codes_positive=codes_pos.cpu(), codes_negative=codes_neg.cpu(),
                            method=f"SAE codes ({cfg.code}, d_sae={cfg.d_sae}, seed={cfg.seed})",
                            seconds=time.perf_counter() - t0)
