"""Issue #5 acceptance on the embedded TokFSM models, and the label-precision evaluation it uses.

* ``interp.sae.evaluate``: best-single-feature precision against a brute force over every threshold, signs for
  neurons, ignored labels, input errors.
* The sparse TopK training path (``interp.sae.losses``): same loss, latents, reconstruction and gradients as the
  dense path, AuxK included.
* Acceptance (slow, one test per installed model): a TopK SAE trained here on a middle ``hook_resid_post`` reaches
  explained variance >= 0.90 at L0 <= 16 on held-out tokens, and the best single latent of each FSM state predicts
  "current state = s" with mean precision >= 0.90 at recall >= 0.5 (definition in :mod:`interp.sae.evaluate`);
  the best single neuron of the residual stream is measured the same way and printed beside it.

Measured (torch 2.13, 1 thread; run with ``-s`` to print them), ``blocks.2.hook_resid_post``, TopK 4096 latents,
k = 4, 2000 steps of 256 tokens (about 70 s of training on a busy 2-core machine):

    tokfsm-mamba    EV 0.940  L0 4  precision: best latent 0.931, best neuron 0.144
    tokfsm-mamba2   EV 0.931  L0 4  precision: best latent 0.910, best neuron 0.162

Other seeds of the same recipe gave 0.93 on tokfsm-mamba and 0.90-0.92 on tokfsm-mamba2 (thin margin there). A lower
learning rate helps precision (3e-3: about 0.89; 1e-3: 0.91), more latents or steps barely do, larger k hurts
(k = 8: 0.86), and the middle-but-one layer (block 1) is far worse (about 0.65-0.70).
"""

from __future__ import annotations

import time

import pytest
import torch

import interp
from interp import zoo
from interp.data import TOKFSM_BOS, tokfsm_dataset, tokfsm_labels
from interp.sae import SAEConfig, SparseAutoencoder, train_sae
from interp.sae.evaluate import (
    best_feature_precision,
    best_neuron_precision,
    labelled_activations,
    sae_vs_neurons,
    state_latent_precision,
)
from interp.sae.losses import auxk_loss, reconstruction_loss, sae_loss

# ----------------------------------------------------------------------------------------------------------------
# best-single-feature precision


def _brute_force(features: torch.Tensor, labels: torch.Tensor, n_classes: int, min_recall: float):
    """(precision, recall) of the best (feature, threshold) per class, trying every observed value."""
    keep = labels >= 0
    f, y = features[keep], labels[keep]
    out = []
    for c in range(n_classes):
        pos = int((y == c).sum())
        best = (-1.0, 0.0)
        for j in range(f.shape[1]):
            for t in f[:, j].unique():
                pred = f[:, j] >= t
                tp = int((pred & (y == c)).sum())
                if tp / pos >= min_recall - 1e-12:
                    best = max(best, (tp / int(pred.sum()), tp / pos))
        out.append(best)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_best_feature_precision_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, n_feat, n_cls = 90, 4, 3
    # sparse non-negative features with many ties (SAE-like) or dense Gaussians (neuron-like)
    if seed % 2:
        feats = torch.randint(0, 4, (n, n_feat), generator=g).float() * (torch.rand(n, n_feat, generator=g) > 0.5)
    else:
        feats = torch.randn(n, n_feat, generator=g)
    labels = torch.randint(-1, n_cls, (n,), generator=g)
    min_recall = (0.5, 0.3, 1.0)[seed % 3]
    rep = best_feature_precision(feats, labels, n_cls, min_recall)
    for c, (p, r) in enumerate(_brute_force(feats, labels, n_cls, min_recall)):
        assert float(rep.precision[c]) == pytest.approx(p, abs=1e-12)
        assert float(rep.recall[c]) == pytest.approx(r, abs=1e-12)
        # the reported feature and threshold reproduce the reported numbers
        y = labels[labels >= 0]
        pred = feats[labels >= 0, int(rep.feature[c])] >= float(rep.threshold[c])
        tp = int((pred & (y == c)).sum())
        assert tp / int(pred.sum()) == pytest.approx(p, abs=1e-9)
        assert int(rep.support[c]) == int((y == c).sum())
    assert rep.n_tokens == int((labels >= 0).sum())


def test_precision_perfect_feature_and_absent_class():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, -1])
    feats = torch.tensor([[5.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [9.0, 9.0]])
    rep = best_feature_precision(feats, labels, n_classes=4)
    assert rep.precision[:2].tolist() == [1.0, 1.0]  # the -1 row (9.0) is ignored
    assert rep.feature[:2].tolist() == [0, 1]
    assert rep.recall[0] == 1.0  # ties in precision prefer the higher recall (threshold 4, not 5)
    assert rep.threshold[0] == 4.0
    assert rep.feature[3] == -1 and torch.isnan(rep.precision[3])  # class 3 has no token
    assert rep.mean_precision == pytest.approx((1 + 1 + float(rep.precision[2])) / 3)
    assert rep.summary()["n_classes"] == 3
    assert len(rep.table()) == 4


def test_neuron_precision_reads_both_signs():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=g)
    x = 0.3 * torch.randn(400, 3, generator=g)
    x[labels == 1, 1] -= 2.0  # class 1 sits at the negative end of neuron 1
    x[labels == 2, 2] += 2.0  # class 2 at the positive end of neuron 2
    rep = best_neuron_precision(x, labels, n_classes=3)
    assert int(rep.feature[1]) == 1 and int(rep.sign[1]) == -1 and float(rep.precision[1]) == 1.0
    assert int(rep.feature[2]) == 2 and int(rep.sign[2]) == 1 and float(rep.precision[2]) == 1.0
    # the signed threshold reproduces the precision
    pred = rep.sign[1] * x[:, 1] >= rep.threshold[1]
    assert bool((labels[pred] == 1).all())


def test_precision_input_errors():
    with pytest.raises(ValueError, match="align row for row"):
        best_feature_precision(torch.zeros(5, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[n_tokens, n_features\]"):
        best_feature_precision(torch.zeros(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integers"):
        best_feature_precision(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="out of range"):
        best_feature_precision(torch.zeros(5, 2), torch.full((5,), 7), n_classes=3)
    with pytest.raises(ValueError, match="min_recall"):
        best_feature_precision(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), min_recall=0.0)


def test_state_latent_precision_on_a_planted_sae():
    """An SAE whose decoder rows are the class directions recovers the classes exactly."""
    g = torch.Generator().manual_seed(0)
    d, n_cls = 16, 6
    dirs = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:n_cls]  # orthonormal [n_cls, d]
    labels = torch.randint(0, n_cls, (300,), generator=g)
    x = 3 * dirs[labels] + 0.05 * torch.randn(300, d, generator=g)
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=n_cls, architecture="topk", k=1, b_dec_init="zeros"))
    with torch.no_grad():
        sae.W_dec.copy_(dirs)
        sae.W_enc.copy_(dirs.T)
    rep = state_latent_precision(sae.eval(), x, labels, n_classes=n_cls)
    assert rep.mean_precision == 1.0 and rep.feature.tolist() == list(range(n_cls))
    out = sae_vs_neurons(sae, x, labels, n_classes=n_cls)
    assert out.l0 == 1.0 and out.explained_variance > 0.99
    assert out.sae_mean_precision == 1.0
    assert out.neuron.mean_precision == out.neuron_mean_precision <= 1.0


# ----------------------------------------------------------------------------------------------------------------
# the sparse TopK training path equals the dense one


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_topk_sparse_training_path_matches_dense(apply_b_dec):
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=24, d_sae=96, architecture="topk", k=5, apply_b_dec_to_input=apply_b_dec, dtype="float64")
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    x = torch.randn(50, 24, dtype=torch.float64)
    dead = torch.rand(96) < 0.5  # the AuxK loss is on
    out = sae_loss(sae, x, dead)  # the sparse path
    out.loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    latents, pre = sae.encode_with_pre(x)  # the dense path
    x_hat = sae.decode(latents)
    loss = reconstruction_loss(x, x_hat) + cfg.aux_coefficient * auxk_loss(x, x_hat, pre, dead, sae.W_dec,
                                                                             cfg.effective_aux_k)
    loss.backward()
    assert out.losses["auxk_loss"] > 0
    torch.testing.assert_close(out.loss, loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.latents, latents.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.x_hat, x_hat, rtol=1e-12, atol=1e-12)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_topk_sparse_training_path_half_precision(dtype):
    """Sparse CSR products exist for float32/64 only: half-precision SAEs accumulate the encoder gradient in float32
    and get gradients in their own dtype, close to the dense path's."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, dtype=dtype))
    x = torch.randn(32, 16)
    sae_loss(sae, x).loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    latents, _ = sae.encode_with_pre(x.to(sae.dtype))
    reconstruction_loss(x.to(sae.dtype), sae.decode(latents)).backward()
    for name, p in sae.named_parameters():
        assert sparse_grads[name].dtype == p.dtype
        torch.testing.assert_close(sparse_grads[name].float(), p.grad.float(), rtol=0.05, atol=0.05, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# acceptance on the embedded models

# One recipe per model: the hook, the SAE, the run. Chosen on held-out data of other seeds; 1 CPU thread (these
# matrices are small: a second thread only adds synchronisation, and it slows down badly when the other core is busy).
RECIPES = {
    "tokfsm-mamba": dict(layer=2, d_sae=4096, k=4, lr=1e-3, batch_size=256, steps=2000),
    "tokfsm-mamba2": dict(layer=2, d_sae=4096, k=4, lr=1e-3, batch_size=256, steps=2000),
}
N_TRAIN_SEQ, N_EVAL_SEQ = 1536, 128  # 195k training tokens (fresh sequences), 16k held-out tokens


def _shuffled(x: torch.Tensor, batch_size: int, seed: int = 0):
    """A re-creatable stream of shuffled batches [batch_size, d] over the rows of x, epoch after epoch."""

    def stream():
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0] - batch_size + 1, batch_size):
                yield x[perm[i:i + batch_size]]

    return stream


def train_state_sae(model, name: str, hook: str, recipe: dict) -> tuple[SparseAutoencoder, float]:
    """Train the recipe's TopK SAE on fresh TokFSM tokens (in memory); returns (SAE, seconds)."""
    tokens = tokfsm_dataset(N_TRAIN_SEQ, seed=101)
    non_bos = torch.where(tokens == TOKFSM_BOS, -1, 0)
    acts = labelled_activations(model, tokens, hook=hook, labels=non_bos).acts
    bs, steps = recipe["batch_size"], recipe["steps"]
    cfg = SAEConfig(d_in=acts.shape[1], d_sae=recipe["d_sae"], architecture="topk", k=recipe["k"], lr=recipe["lr"],
                    lr_warmup_steps=20, lr_decay="cosine", min_lr_ratio=0.1, batch_size=bs,
                    total_training_tokens=bs * steps, dead_window_tokens=bs * 50, checkpoint_every=0, log_every=500,
                    hook_name=hook, model_name=name, seed=0)
    t0 = time.perf_counter()
    result = train_sae(cfg, _shuffled(acts, bs), device="cpu", progress=False)
    return result.sae, time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_tokfsm_sae_acceptance(name, one_thread):
    if zoo.embedded_path(name) is None:
        pytest.skip(f"embedded model {name!r} is not installed (python -m interp.zoo.train {name} --install)")
    model = interp.load(name)
    recipe = RECIPES[name]
    hook = f"blocks.{recipe['layer']}.hook_resid_post"
    sae, seconds = train_state_sae(model, name, hook, recipe)

    held_out = tokfsm_dataset(N_EVAL_SEQ, seed=202)
    la = labelled_activations(model, held_out, hook=hook, labels=tokfsm_labels(held_out)["state"])
    out = sae_vs_neurons(sae, la.acts, la.labels, n_classes=100, min_recall=0.5)
    sae_rep, neuron_rep = out.sae, out.neuron
    print(f"\n{name} {hook}: TopK d_sae={recipe['d_sae']} k={recipe['k']}, {recipe['steps']} steps x "
          f"{recipe['batch_size']} tokens in {seconds:.0f}s | held-out EV {out.explained_variance:.4f}, "
          f"L0 {out.l0:.2f} | mean precision at recall >= 0.5: SAE {sae_rep.mean_precision:.4f} "
          f"(min {sae_rep.summary()['min_precision']:.3f}), best neuron {neuron_rep.mean_precision:.4f}")
    assert out.l0 <= 16
    assert out.explained_variance >= 0.90
    assert (sae_rep.recall[sae_rep.support > 0] >= 0.5).all()
    assert sae_rep.summary()["n_classes"] == 100
    assert sae_rep.mean_precision >= 0.90, sae_rep.summary()
    assert sae_rep.mean_precision > neuron_rep.mean_precision
