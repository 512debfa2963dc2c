"""The codebook bottleneck as pure functions (no modules, no state): score, select, quantize, backward.

A codebook ``C`` [G, n_codes, d] (G independent codebooks, one per group: G = 1 for a residual or mixer
output, G = n_heads for per-head attention outputs) replaces an activation x [..., G, d] by the mean of its
k best codes (codebook features, Tamkin et al. 2023):

    score[..., g, c] = x̃[..., g, :] · C[g, c] / ‖C[g, c]‖       (x̃ = LayerNorm(x) or x; "cosine" ranking)
                     = x̃[..., g, :] · C[g, c]                    ("dot" ranking)
    ids[..., g, :]   = top-k of score[..., g, :]                  [..., G, k]
    q[..., g, :]     = (1/k) Σ_j C[g, ids[..., g, j]]             [..., G, d]

The ranking ``x̃ · c / ‖c‖`` is the cosine similarity times ‖x̃‖, which does not depend on c: the same order.

Backward (:func:`straight_through`): y = q + (x - sg(x)) is q in the forward pass; ∂y/∂x = I (the
straight-through estimator: the layers before the bottleneck see the gradient of the layers after it) and
∂y/∂C[g, c] = (number of slots holding c) / k (the codes learn from the task loss). The codebook
reconstruction loss :func:`reconstruction_loss` = Σ‖sg(x) - q‖² / Σ‖x‖² (+ β Σ‖x - sg(q)‖² / Σ‖x‖², the VQ-VAE
commitment term) pulls the selected codes toward the activations they replace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["code_scores", "select_codes", "gather_codes", "quantize", "straight_through", "reconstruction_loss",
           "kmeans", "SIMILARITIES"]

SIMILARITIES = ("cosine", "dot")


def code_scores(x: Tensor, codes: Tensor, similarity: str = "cosine", layernorm: bool = True,
                eps: float = 1e-8) -> Tensor:
    """Ranking scores of every code: x [..., G, d], codes [G, n, d] -> [..., G, n]."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    xs = F.layer_norm(x, x.shape[-1:]) if layernorm else x
    c = codes / codes.norm(dim=-1, keepdim=True).clamp_min(eps) if similarity == "cosine" else codes
    return torch.einsum("...gd,gnd->...gn", xs, c.to(xs.dtype))


def select_codes(scores: Tensor, k: int) -> Tensor:
    """ids of the k best codes, best first: scores [..., G, n] -> int64 [..., G, k]."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in 1..{scores.shape[-1]} (the number of codes), got {k}")
    return scores.topk(k, dim=-1).indices


def gather_codes(codes: Tensor, ids: Tensor) -> Tensor:
    """The code vectors of ``ids``: codes [G, n, d], ids [..., G, k] -> [..., G, k, d]."""
    G = codes.shape[0]
    g = torch.arange(G, device=ids.device).view(G, 1).expand_as(ids)
    return codes[g, ids]


def quantize(codes: Tensor, ids: Tensor) -> Tensor:
    """Mean of the selected codes: codes [G, n, d], ids [..., G, k] -> q [..., G, d]."""
    return gather_codes(codes, ids).mean(-2)


def straight_through(x: Tensor, q: Tensor) -> Tensor:
    """q in the forward pass (exactly: x - sg(x) is 0), identity gradient to x, q's own gradient to the codes."""
    return q + (x - x.detach())


def reconstruction_loss(x: Tensor, q: Tensor, commitment: float = 0.0, eps: float = 1e-8) -> Tensor:
    """Normalised codebook loss Σ‖sg(x) - q‖² / Σ‖sg(x)‖² (gradient to the codes; 0 = perfect, 1 = as bad as
    outputting zeros) plus ``commitment`` times Σ‖x - sg(q)‖² / Σ‖sg(x)‖² (gradient to x: keeps the layers
    below close to their codes when they are trained through the straight-through estimator). Scale-free, so
    one weight fits residual streams and mixer outputs alike. x, q [..., G, d] -> scalar."""
    norm = x.detach().pow(2).sum().clamp_min(eps)
    loss = (x.detach() - q).pow(2).sum() / norm
    if commitment:
        loss = loss + commitment * (x - q.detach()).pow(2).sum() / norm
    return loss


def _kmeans_pp(x: Tensor, n_codes: int, g: torch.Generator) -> Tensor:
    """k-means++ seeds: x [n, d] -> [n_codes, d]."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d2 = (x - x[chosen[0]]).pow(2).sum(-1)
    for _ in range(1, n_codes):
        p = d2.double()
        i = int(torch.multinomial(p / p.sum(), 1, generator=g)) if float(p.sum()) > 0 else \
            int(torch.randint(n, (1,), generator=g))
        chosen.append(i)
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(-1))
    return x[chosen].clone()


@torch.no_grad()
def kmeans(x: Tensor, n_codes: int, iters: int = 20, similarity: str = "cosine", layernorm: bool = True,
           seed: int = 0) -> Tensor:
    """Lloyd's algorithm with the codebook's own assignment rule: x [n, G, d] -> codes [G, n_codes, d].

    Start: k-means++ seeding (each next code a row drawn with probability ∝ its squared distance to the
    nearest code so far); assign each row to its best-scoring code (:func:`code_scores`),
    move each code to the mean of its rows (so the code reconstructs them), re-seed empty codes with the rows
    the current codes reconstruct worst. Needs n >= n_codes rows.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [n, G, d], got shape {tuple(x.shape)}")
    n, G, d = x.shape
    if n < n_codes:
        raise ValueError(f"k-means needs at least n_codes={n_codes} rows, got {n}: cache more activations")
    x = x.float()
    g = torch.Generator(device="cpu").manual_seed(seed)
    codes = torch.stack([_kmeans_pp(x[:, j], n_codes, g) for j in range(G)])  # [G, n_codes, d]
    for _ in range(iters):
        ids = select_codes(code_scores(x, codes, similarity, layernorm), 1)[..., 0]  # [n, G]
        for j in range(G):
            counts = torch.bincount(ids[:, j], minlength=n_codes)
            sums = torch.zeros(n_codes, d).index_add_(0, ids[:, j], x[:, j])
            used = counts > 0
            codes[j, used] = sums[used] / counts[used, None]
            n_empty = int((~used).sum())
            if n_empty:
                err = (x[:, j] - codes[j, ids[:, j]]).pow(2).sum(-1)
                codes[j, ~used] = x[err.topk(n_empty).indices, j]
    return codes
