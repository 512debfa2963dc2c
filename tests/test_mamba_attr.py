"""Mamba-Attr and the unified map's ablation variants, each against a transcription of the original code.

* ``mamba_attr``: ``generate_mamba_attr`` and ``compute_rollout_attention`` of github AmeenAli/HiddenMambaAttn,
  ``vim/xai_utils.py`` (commit 064fe08), transcribed below line for line. The original runs a Vision Mamba
  whose mixers leave ``xai_b`` (the per-channel hidden-attention row of the CLS token, [1, D, L]) and whose
  blocks save the gradient of their residual (``Block.forward``: ``residual.register_hook(self.save_gradients)``,
  vim/models_mamba.py). :class:`ViMAdapter` gives one of our models that interface: ``xai_b`` is the row
  ``position`` of the full per-channel map of :func:`interp.attention.hidden.hidden_attention` (Mamba-2: each
  head's map repeated over its P channels; transformers: the softmax pattern per head), and the residual's
  gradient comes from a ``register_hook`` on ``blocks.{i}.hook_resid_pre`` (the residual a ViM block returns is
  its mixer's input residual), a different path from the library's ``retain_grad`` and row-wise α.
* unified variants: the ``ablate_attn_mat`` branch of ``MambaInnerFn.forward`` and ``conv2Mat`` of github
  Itamarzimm/UnifiedImplicitAttnRepr, ``MambaNLP/mamba_ssm/ops/selective_scan_interface.py``, transcribed below
  (Mamba-1, as the original); Mamba-2 against the closed form with explicit matrices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import interp
import interp.zoo
from interp.attention import grad_weighted_rollout, mamba_attr
from interp.attention.hidden import hidden_attention
from interp.attention.unified import VARIANTS, conv_toeplitz, gate_factor, mixer_params, unified_attention
from interp.hooks import is_ssm

from conftest import make_hf_ssm

KINDS = ["mamba1", "mamba2-g1", "mamba2-g2"]


# --------------------------------------------------------------------------------------------
# transcription: AmeenAli/HiddenMambaAttn, vim/xai_utils.py (changes marked "# ours:")
# --------------------------------------------------------------------------------------------
def compute_rollout_attention(all_layer_matrices, start_layer=0):
    # adding residual consideration- code adapted from https://github.com/samiraabnar/attention_flow
    num_tokens = all_layer_matrices[0].shape[1]
    batch_size = all_layer_matrices[0].shape[0]
    eye = torch.eye(num_tokens).expand(batch_size, num_tokens, num_tokens).to(all_layer_matrices[0].device)

    all_layer_matrices = [all_layer_matrices[i] + eye for i in range(len(all_layer_matrices))]
    matrices_aug = [all_layer_matrices[i] / all_layer_matrices[i].sum(dim=-1, keepdim=True)
                    for i in range(len(all_layer_matrices))]
    joint_attention = matrices_aug[start_layer]
    for i in range(start_layer + 1, len(matrices_aug)):
        joint_attention = matrices_aug[i].bmm(joint_attention)
    return joint_attention


def generate_mamba_attr(model, image, start_layer=15, cls_pos=98):  # ours: cls_pos an argument (was 98 inside)
    # ours: image.requires_grad_() dropped (token ids are integers; it only made the input a leaf)
    logits = model(image)
    index = np.argmax(logits.cpu().data.numpy(), axis=-1)
    one_hot = np.zeros((1, logits.size()[-1]), dtype=np.float32)
    one_hot[0, index] = 1
    one_hot = torch.from_numpy(one_hot).requires_grad_(True)
    one_hot = torch.sum(one_hot.to(logits.device) * logits)  # ours: .to(device) for .cuda()
    model.zero_grad()
    one_hot.backward(retain_graph=True)
    all_layer_attentions = []
    for layeridx in range(len(model.layers)):
        attn_heads = model.layers[layeridx].mixer.xai_b.clamp(min=0)
        s = model.layers[layeridx].get_gradients().squeeze().detach()
        s = s.clamp(min=0).max(dim=1)[0].unsqueeze(0)
        s = (s - s.min()) / (s.max() - s.min())
        attn_heads = (attn_heads - attn_heads.min()) / (attn_heads.max() - attn_heads.min())
        avg_heads = (attn_heads.sum(dim=1) / attn_heads.shape[1]).detach()
        fused = avg_heads * s
        all_layer_attentions.append(fused)
    rollout = compute_rollout_attention(all_layer_attentions, start_layer)
    p = rollout[0, cls_pos, :].unsqueeze(0)
    p = torch.cat([p[:, :cls_pos], p[:, (cls_pos + 1):]], dim=-1)
    return p.clamp(min=0).squeeze().unsqueeze(0), logits


class _Mixer:
    xai_b: torch.Tensor


class _Block:
    """A ViM ``Block``'s XAI interface: ``save_gradients`` / ``get_gradients`` and ``mixer.xai_b``."""

    def __init__(self):
        self.mixer = _Mixer()
        self.gradients = None

    def save_gradients(self, attn_gradients):
        self.gradients = attn_gradients

    def get_gradients(self):
        return self.gradients


class ViMAdapter:
    """One of our models behind the interface ``generate_mamba_attr`` reads (batch 1, as the original)."""

    def __init__(self, model, position: int):
        self.model, self.position = model, position
        self.layers = [_Block() for _ in range(model.cfg.n_layers)]

    def zero_grad(self):
        self.model.zero_grad()

    def __call__(self, tokens):
        model, pos = self.model, self.position
        ssm = is_ssm(model)

        def save_grad(i):
            def hook(resid, hook):
                resid.register_hook(self.layers[i].save_gradients)  # vim/models_mamba.py, Block.forward
                return resid
            return hook

        sites = ("ssm.hook_dt", "ssm.hook_B", "ssm.hook_C") if ssm else ("attn.hook_pattern",)
        seen = {}

        def store(x, hook):
            seen[hook.name] = x.detach()
            return x

        hooks = [(f"blocks.{i}.hook_resid_pre", save_grad(i)) for i in range(len(self.layers))]
        hooks += [(f"blocks.{i}.{s}", store) for i in range(len(self.layers)) for s in sites]
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        for i, block in enumerate(self.layers):
            if ssm:
                mixer = model.blocks[i].ssm
                alpha = hidden_attention(seen[f"blocks.{i}.ssm.hook_dt"], mixer.A.detach(),
                                         seen[f"blocks.{i}.ssm.hook_B"], seen[f"blocks.{i}.ssm.hook_C"])
                alpha = alpha.repeat_interleave(model.cfg.d_inner // alpha.shape[1], dim=1)  # head -> channels
            else:
                alpha = seen[f"blocks.{i}.attn.hook_pattern"]
            block.mixer.xai_b = alpha[:, :, pos, :]  # [1, D, L]: the CLS row of every channel
        return logits[:, pos]  # [1, vocab]: the classifier's logits


def reference(model, tokens, position, start_layer):
    """The transcription's relevance [1, L-1] (the explained position left out, as the original drops CLS)."""
    pos = position % tokens.shape[1]
    return generate_mamba_attr(ViMAdapter(model, pos), tokens, start_layer=start_layer, cls_pos=pos)[0]


def drop(row, pos):
    return torch.cat([row[:, :pos], row[:, pos + 1:]], dim=-1)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return interp.load(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=61,
                                                  n_positions=64)).eval())


@pytest.fixture(scope="module", params=KINDS + ["gpt2"])
def any_model(request):
    return tiny_gpt2() if request.param == "gpt2" else interp.load(make_hf_ssm(request.param))


# --------------------------------------------------------------------------------------------
# Mamba-Attr
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("position,start_layer", [(-1, 0), (7, 0), (-1, 1), (4, 1)])
def test_mamba_attr_equals_the_original_code(any_model, position, start_layer):
    model = any_model
    tokens = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(5))
    pos = position % 12
    ours = mamba_attr(model, tokens, position=position, start_layer=start_layer)
    assert ours.shape == (1, 12)
    ref = reference(model, tokens, position, start_layer)
    assert ref.shape == (1, 11) and torch.isfinite(ref).all()
    assert torch.allclose(drop(ours, pos), ref, atol=1e-6, rtol=0), (drop(ours, pos) - ref).abs().max()
    assert torch.equal(ours[0, pos + 1:], torch.zeros(11 - pos))  # causal: later tokens get nothing
    assert abs(float(ours.sum()) - 1) < 1e-5  # rollout rows of row-normalised factors sum to 1


def test_mamba_attr_target_and_batch():
    """A given target changes the gradient term; a batch gives each row's result (rows are independent)."""
    model = interp.load(make_hf_ssm("mamba1"))
    tokens = torch.randint(0, 61, (3, 10), generator=torch.Generator().manual_seed(2))
    both = mamba_attr(model, tokens, position=-2, target=17)
    one = torch.cat([mamba_attr(model, t[None], position=-2, target=17) for t in tokens])
    assert torch.allclose(both, one, atol=1e-6)
    assert not torch.allclose(both, mamba_attr(model, tokens, position=-2, target=3), atol=1e-4)
    with pytest.raises(IndexError, match="position"):
        mamba_attr(model, tokens, position=10)
    with pytest.raises(ValueError, match="start_layer"):
        mamba_attr(model, tokens, start_layer=2)
    with pytest.raises(TypeError):
        mamba_attr(model, tokens, None)  # keyword-only


def test_mamba_attr_on_the_embedded_tokfsm_model():
    if interp.zoo.embedded_path("tokfsm-mamba") is None:
        pytest.skip("embedded model tokfsm-mamba is not installed")
    model = interp.load("tokfsm-mamba")
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 24), generator=torch.Generator().manual_seed(0))
    for start_layer in (0, model.cfg.n_layers // 2):
        ours = mamba_attr(model, tokens, position=-1, start_layer=start_layer)
        ref = reference(model, tokens, -1, start_layer)
        assert torch.allclose(drop(ours, 23), ref, atol=1e-6, rtol=0)


def test_grad_weighted_rollout_keeps_the_former_quantity():
    """The former ``mamba_attr``: rollout of (∂logit/∂(mean α) ⊙ mean α)⁺, here against its closed form on a
    one-layer model (a single rownorm(I + A_0) factor)."""
    model = interp.load(make_hf_ssm("mamba1"))
    tokens = torch.randint(0, 61, (1, 9), generator=torch.Generator().manual_seed(1))
    rho = grad_weighted_rollout(model, tokens, position=-1)
    assert rho.shape == (1, 9, 9) and torch.allclose(rho.sum(-1), torch.ones(1, 9), atol=1e-5)
    # ∂logit/∂α[h,i,j] for y_i = Σ_j α[h,i,j] u_j + D u_i: Σ_p g_i[h,p] u_j[h,p], at every layer
    grabbed = {}

    def keep(x, hook):
        x.retain_grad()
        grabbed[hook.name] = x
        return x

    n = model.cfg.n_layers
    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{i}.ssm.hook_{h}", keep) for i in range(n)
                                                     for h in ("y", "u", "dt", "B", "C")])
    logits[0, -1, logits[0, -1].argmax()].backward()
    maps = []
    for i in range(n):
        g = {h: grabbed[f"blocks.{i}.ssm.hook_{h}"] for h in ("y", "u", "dt", "B", "C")}
        alpha = hidden_attention(g["dt"].detach(), model.blocks[i].ssm.A.detach(), g["B"].detach(),
                                 g["C"].detach()).mean(1)
        grad = torch.tril(torch.einsum("bihp,bjhp->bij", g["y"].grad, g["u"].detach()) / g["u"].shape[2])
        A = (grad * alpha).clamp(min=0) + torch.eye(9)
        maps.append(A / A.sum(-1, keepdim=True))
    expect = maps[1] @ maps[0]
    assert torch.allclose(rho, expect, atol=1e-6)


# --------------------------------------------------------------------------------------------
# transcription: Itamarzimm/UnifiedImplicitAttnRepr, MambaNLP/mamba_ssm/ops/selective_scan_interface.py
# --------------------------------------------------------------------------------------------
def conv2Mat(conv1d_weight, L):
    H, D = conv1d_weight.shape
    conv1d_weight = torch.flip(conv1d_weight, [-1])
    # Initialize the matrix with zeros
    M = torch.zeros(H, L, L).to(conv1d_weight.device)

    # Fill the matrix with the kernel weights
    for h in range(H):
        for i in range(L):
            # Set the diagonal and the next (D-1) positions, respecting the input length L
            M[h, i, i:i + D] = conv1d_weight[h, :max(0, D - (i + D - L))]
    return M


def ablate_attn_mat(attn_mat, conv1d_weight, z, conv1d_out_no_act, x):
    """The ``ablate_attn_mat`` branch of ``MambaInnerFn.forward`` (attn_mat [b, d, L, L] is the S6 attention the
    original builds with ``compute_attn_matrix_fn``; ours comes from :func:`hidden_attention`; z, conv1d_out_no_act
    and x are [b, d, L] as there, conv1d_weight [d, w] after its ``rearrange(.., "d 1 w -> d w")``)."""
    ablate_dict = {}
    ablate_dict["S6Attention"] = attn_mat
    M = conv2Mat(conv1d_weight, x.shape[-1]).to(x.device).transpose(-1, -2)
    ablate_dict["convMat"] = M
    gate = torch.diag_embed(F.silu(z)).to(torch.float32)
    ablate_dict["gate"] = gate
    Z = torch.diag_embed(torch.sigmoid(conv1d_out_no_act)).to(torch.float32)
    ablate_dict["act"] = Z
    attn_mat_fin = gate @ attn_mat @ Z @ M.to(attn_mat.device)
    ablate_dict["finalMat"] = attn_mat_fin.squeeze(-2)
    ablate_dict["withoutConv"] = (gate @ attn_mat @ Z).squeeze(-2)
    ablate_dict["withoutGate"] = (attn_mat @ Z @ M.to(attn_mat.device)).squeeze(-2)
    ablate_dict["withoutAct"] = (gate @ attn_mat @ M.to(attn_mat.device)).squeeze(-2)
    return ablate_dict


ORIGINAL_KEY = {"full": "finalMat", "without_conv": "withoutConv", "without_gate": "withoutGate",
                "without_act": "withoutAct"}


@pytest.fixture(scope="module", params=KINDS)
def ssm_run(request):
    model = interp.load(make_hf_ssm(request.param))
    tokens = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(4))
    _, cache = model.run_with_cache(tokens)
    return model, cache


def test_unified_variants_equal_the_original_code():
    model = interp.load(make_hf_ssm("mamba1"))
    tokens = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(4))
    _, cache = model.run_with_cache(tokens)
    d = model.cfg.d_inner
    for layer in range(model.cfg.n_layers):
        p = mixer_params(model, layer)
        pre = f"blocks.{layer}.ssm."
        alpha = hidden_attention(cache[pre + "hook_dt"], p.A, cache[pre + "hook_B"], cache[pre + "hook_C"])
        t = lambda name: cache[pre + name][..., :d].transpose(1, 2).float()  # noqa: E731  [b, L, d] -> [b, d, L]
        orig = ablate_attn_mat(alpha, p.conv_weight, t("hook_z"), t("hook_conv"), t("hook_x"))
        for variant in VARIANTS:
            ours = unified_attention(cache, model, layer, variant=variant).map
            ref = orig[ORIGINAL_KEY[variant]]
            assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5), (variant, (ours - ref).abs().max())
        # the full variant is the exact decomposition: Σ_j α̂ x̃_j (+ bias + skip) = hook_gated
        full = unified_attention(cache, model, layer)
        assert torch.allclose(full.reconstruct(), cache[pre + "hook_gated"], atol=1e-5, rtol=1e-4)


def test_unified_variants_closed_form(ssm_run):
    """Every family (Mamba-2 has no original code: the gate factor there is the gated RMSNorm's w ⊙ SiLU(z) /
    rms, dropped whole by "without_gate"): diag(g) · α · diag(σ) · M with the ablated factor set to identity."""
    model, cache = ssm_run
    d, L = model.cfg.d_inner, 11
    for layer in range(model.cfg.n_layers):
        p = mixer_params(model, layer)
        pre = f"blocks.{layer}.ssm."
        alpha = hidden_attention(cache[pre + "hook_dt"], p.A, cache[pre + "hook_B"], cache[pre + "hook_C"])
        alpha = alpha.repeat_interleave(d // alpha.shape[1], dim=1)  # [b, d, L, L], channel c reads head c // P
        g = gate_factor(p, cache[pre + "hook_y"], cache[pre + "hook_z"]).transpose(1, 2)  # [b, d, L]
        sig = torch.sigmoid(cache[pre + "hook_conv"][..., :d].float()).transpose(1, 2)
        M = conv_toeplitz(p.conv_weight, L)  # [d, L, L]
        factors = {"gate": torch.diag_embed(g), "act": torch.diag_embed(sig), "conv": M.expand(2, d, L, L)}
        drop_of = {"full": None, "without_conv": "conv", "without_gate": "gate", "without_act": "act"}
        for variant, dropped in drop_of.items():
            eye = torch.eye(L).expand(2, d, L, L)
            f = {k: (eye if k == dropped else v) for k, v in factors.items()}
            expect = f["gate"] @ alpha @ f["act"] @ f["conv"]
            ours = unified_attention(cache, model, layer, variant=variant, chunk=5)
            assert torch.allclose(ours.map, expect, atol=1e-6, rtol=1e-5), (variant, layer)
            red = unified_attention(cache, model, layer, variant=variant, aggregate="mean_abs").map
            assert torch.allclose(red, expect.abs().mean(1), atol=1e-6, rtol=1e-5)
            if variant != "full":
                with pytest.raises(ValueError, match="reconstructs nothing"):
                    ours.reconstruct()
                assert not torch.allclose(ours.map, unified_attention(cache, model, layer).map, atol=1e-4)


def test_unified_variant_through_interaction_map(ssm_run):
    model, cache = ssm_run
    tokens = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(4))
    m = interp.attention.interaction_map(model, tokens, layer=1, method="unified", variant="without_gate")
    assert torch.allclose(m, unified_attention(cache, model, 1, variant="without_gate", aggregate="mean_abs").map,
                          atol=1e-6)
    with pytest.raises(ValueError, match="variant"):
        unified_attention(cache, model, 0, variant="without_d")
