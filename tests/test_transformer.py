"""The TransformerLens adapter (interp.hooks.HookedTransformerModel): Hugging Face parity, loading
errors, the checked hook API, KV-cache generation with hooks, save/load round trip, nnsight.

Offline: every model is a tiny random one saved into a temporary folder."""

from __future__ import annotations

import json

import pytest
import torch

import interp
from interp.hooks import CacheTooLargeError, CheckpointError, HookShapeError, UnknownHookError
from interp.hooks.transformer import HookedTransformerModel

VOCAB = 100
BOS = 0  # "<|endoftext|>": BOS, EOS and pad, as in GPT-2


def _randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """LayerNorm weights 1 and biases 0 would hide a wrong conversion; make them random."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("ln" in name or "layernorm" in name or "layer_norm" in name) and p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_hf(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64,
                         bos_token_id=BOS, eos_token_id=BOS)
        return _randomise_norms(GPT2LMHeadModel(cfg))
    cfg = GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=64, bos_token_id=BOS, eos_token_id=BOS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    return _randomise_norms(GPTNeoXForCausalLM(cfg))


def make_tokenizer():
    """A word-level tokenizer: "w1 w2" -> [1, 2]; id 0 is "<|endoftext|>" (BOS = EOS = pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": BOS, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, pad_token=eot)


@pytest.fixture(scope="module")
def hf_models():
    return {kind: make_hf(kind) for kind in ("gpt2", "gpt_neox")}


@pytest.fixture(scope="module")
def folders(hf_models, tmp_path_factory):
    out = {}
    for kind, hf in hf_models.items():
        folder = tmp_path_factory.mktemp(kind)
        hf.save_pretrained(folder)
        make_tokenizer().save_pretrained(folder)
        out[kind] = folder
    return out


@pytest.fixture(scope="module")
def gpt2(folders):
    return interp.load(str(folders["gpt2"]))


def tokens_for(L=12, b=2, seed=0):
    return torch.randint(1, VOCAB, (b, L), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# parity with Hugging Face
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox"])
def test_logits_match_hf_from_folder_and_in_memory(kind, hf_models, folders):
    hf = hf_models[kind]
    tokens = tokens_for(L=20)
    with torch.no_grad():
        ref = hf(tokens).logits
    model = interp.load(str(folders[kind]))
    assert isinstance(model, HookedTransformerModel)
    assert model.cfg.normalization_type == "LN"  # loaded raw: no LayerNorm folding
    assert (model(tokens) - ref).abs().max() <= 1e-4
    in_memory = interp.load(hf)
    assert isinstance(in_memory, HookedTransformerModel)
    assert (in_memory(tokens) - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox"])
def test_padded_batches_match_hf_on_real_positions(kind, hf_models):
    hf, model = hf_models[kind], interp.load(hf_models[kind])
    tokens = tokens_for(L=10)
    right = torch.ones_like(tokens)
    right[1, 6:] = 0
    with torch.no_grad():
        ref = hf(tokens, attention_mask=right).logits
    got = model(tokens, attention_mask=right)
    assert (got - ref)[right.bool()].abs().max() <= 1e-4

    left = torch.ones_like(tokens)
    left[1, :4] = 0
    with torch.no_grad():  # HF needs explicit position ids for left padding; TL derives them from the mask
        ref = hf(tokens, attention_mask=left, position_ids=(left.cumsum(-1) - 1).clamp(min=0)).logits
    got = model(tokens, attention_mask=left)
    assert (got - ref)[left.bool()].abs().max() <= 1e-4


def test_text_input_and_exact_padding_mask(gpt2):
    tokens, mask = gpt2.to_tokens(["w1 w2 w3", "w5"], prepend_bos=True, padding_side="left", return_mask=True)
    # the BOS shares its id with the pad token, yet the mask keeps it
    assert tokens.tolist() == [[BOS, 1, 2, 3], [BOS, BOS, BOS, 5]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert gpt2.to_string(torch.tensor([1, 2])) == "w1 w2"
    batch = gpt2(["w1 w2 w3", "w5"], prepend_bos=False)  # right-padded and masked for you
    alone = gpt2("w5", prepend_bos=False)
    assert torch.allclose(batch[1, :1], alone[0], atol=1e-5)


def test_token_ids_out_of_range_are_refused(gpt2):
    """A negative id would index W_E from its end (TransformerLens accepts it silently); both ends are refused,
    naming the argument."""
    with pytest.raises(ValueError, match="input holds a negative token id"):
        gpt2(torch.tensor([[1, -1, 2]]))
    with pytest.raises(ValueError, match=f"input holds token id {VOCAB}, out of range"):
        gpt2(torch.tensor([1, VOCAB]))
    from interp.attention import interaction_map

    with pytest.raises(ValueError, match="tokens holds a negative token id"):
        interaction_map(gpt2, torch.tensor([1, -1, 2]), layer=0)


# --------------------------------------------------------------------------------------------
# loading errors
# --------------------------------------------------------------------------------------------
def test_checkpoint_errors(hf_models, tmp_path):
    folder = tmp_path / "pickled"
    hf_models["gpt2"].save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match="safetensors"):
        interp.load(str(folder))

    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="gpt2.*gpt_neox"):
        interp.load(str(other))

    with pytest.raises(ValueError, match="gpt2"):
        interp.load("gtp2")  # a typo of a TransformerLens name: suggestions, no download


def test_transformer_lens_name_offline_has_clear_error(monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("openai-community/gpt2", "config.json"), str):
        pytest.skip("gpt2 is in the local Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE.*save_pretrained"):
        interp.load("gpt2")


# --------------------------------------------------------------------------------------------
# hook API
# --------------------------------------------------------------------------------------------
def test_run_with_cache_pattern_and_names(gpt2):
    tokens = tokens_for(L=9)
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern"]
    logits, cache = gpt2.run_with_cache(tokens, names_filter=names)
    assert set(cache.keys()) == set(names)
    assert torch.allclose(logits, gpt2(tokens), atol=1e-6)
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]  # [b, pos, head, d_head]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / gpt2.cfg.d_head**0.5
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"], pattern, atol=1e-5)
    # same values as TransformerLens's own run_with_cache
    from transformer_lens.HookedRootModule import HookedRootModule

    _, tl_cache = HookedRootModule.run_with_cache(gpt2, tokens, names_filter=names)
    assert torch.equal(tl_cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"])
    # pos_slice cuts the query axis of the pattern (axis 2) and the pos axis (1) elsewhere
    _, last = gpt2.run_with_cache(tokens, names_filter=names, pos_slice=-1)
    assert last["blocks.0.attn.hook_pattern"].shape == (2, gpt2.cfg.n_heads, 1, 9)
    assert last["blocks.0.attn.hook_q"].shape == (2, 1, gpt2.cfg.n_heads, gpt2.cfg.d_head)


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox"])
def test_hook_shapes_predict_every_cached_activation(kind, hf_models):
    model = interp.load(hf_models[kind])
    tokens = tokens_for(L=7, b=3)
    _, cache = model.run_with_cache(tokens)  # every hook the config enables
    shapes = model.hook_shapes(3, 7)
    assert set(shapes) == set(model.hook_dict)
    assert len(cache.keys()) > 10
    for name in cache.keys():
        assert tuple(cache[name].shape) == shapes[name], name
    assert "blocks.0.attn.hook_result" not in cache.keys()  # off unless cfg.use_attn_result


TINY_CONFIGS = {  # besides the GPT-2 / GPT-NeoX checkpoints: the layouts TransformerLens's hooks change with
    "gqa-rotary-gated-rms": dict(n_key_value_heads=2, positional_embedding_type="rotary", rotary_dim=8,
                                 gated_mlp=True, act_fn="silu", normalization_type="RMS"),
    "attn-only-shortformer": dict(attn_only=True, positional_embedding_type="shortformer"),
    "parallel-lnpre": dict(parallel_attn_mlp=True, normalization_type="LNPre"),
}


@pytest.mark.parametrize("layout", list(TINY_CONFIGS))
def test_meta_forward_shapes_equal_a_real_forward_for_every_hook(layout):
    """hook_shapes comes from a forward on the meta device; a real forward caches exactly those shapes, with the
    config's switches off and with every switch on (then every hook that can fire does, split per head)."""
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    cfg = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=16, d_vocab=VOCAB, act_fn="gelu")
    model = HookedTransformerModel(HookedTransformerConfig(**{**cfg, **TINY_CONFIGS[layout]}))
    tokens = tokens_for(L=7, b=3)
    for switched_on in (False, True):
        if switched_on:
            model.set_use_attn_result(True)
            model.set_use_split_qkv_input(True)
            if not model.cfg.attn_only:
                model.set_use_hook_mlp_in(True)
            if model.cfg.n_key_value_heads is None:
                model.set_use_attn_in(True)
        _, cache = model.run_with_cache(tokens)  # every hook the config fires, none that cannot
        shapes = model.hook_shapes(3, 7)
        assert set(cache.keys()) <= set(shapes) <= set(model.hook_dict)
        for name in cache.keys():
            assert tuple(cache[name].shape) == shapes[name], (switched_on, name)
    assert set(cache.keys()) == set(shapes)  # every switch on: each hook with a shape fires


def test_unknown_hook_and_budget_errors(gpt2):
    tokens = tokens_for(L=8)
    with pytest.raises(UnknownHookError, match="blocks.0.hook_resid_post"):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_psot", lambda x, hook: x)])
    with pytest.raises(UnknownHookError, match="blocks.1.attn.hook_pattern"):
        gpt2.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_patern"])
    with pytest.raises(CacheTooLargeError, match="budget"):
        gpt2.run_with_cache(tokens, max_cache_bytes=1000)
    with pytest.raises(HookShapeError, match="blocks.0.hook_resid_post"):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x[:, :1])])


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox"])
def test_greedy_generation_equals_full_forward_argmax(kind, hf_models):
    model = interp.load(hf_models[kind])
    prompt = tokens_for(L=5, b=2, seed=3)
    out = model.generate(prompt, max_new_tokens=32, stop_at_eos=False)
    assert out.shape == (2, 37) and torch.equal(out[:, :5], prompt)
    predicted = model(out).argmax(-1)  # one forward over the whole generated sequence
    assert torch.equal(predicted[:, 4:-1], out[:, 5:])


def test_hooks_fire_every_step_with_absolute_positions(gpt2):
    prompt = tokens_for(L=5, b=2, seed=4)
    seen = []

    def record(x, hook):
        seen.append((x.shape[1], hook.ctx["positions"].tolist()))

    gpt2.generate(prompt, max_new_tokens=32, stop_at_eos=False, fwd_hooks=[("blocks.0.hook_resid_post", record)])
    assert len(seen) == 32  # prefill + 31 decoding steps (the 32nd token needs no forward)
    assert seen[0] == (5, [0, 1, 2, 3, 4])
    assert seen[1:] == [(1, [5 + i]) for i in range(31)]

    seen.clear()  # hooks attached with model.hooks() fire during generation too
    with gpt2.hooks(fwd_hooks=[("blocks.0.hook_resid_post", record)]):
        gpt2.generate(prompt, max_new_tokens=3, stop_at_eos=False)
    assert [s[1] for s in seen] == [[0, 1, 2, 3, 4], [5], [6]]


def test_steering_hook_changes_generation(gpt2):
    prompt = tokens_for(L=5, b=2, seed=5)
    plain = gpt2.generate(prompt, max_new_tokens=12, stop_at_eos=False)
    direction = torch.randn(gpt2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    steer = ("blocks.0.hook_resid_post", lambda x, hook: x + 20 * direction)
    steered = gpt2.generate(prompt, max_new_tokens=12, stop_at_eos=False, fwd_hooks=[steer])
    assert not torch.equal(plain, steered)
    assert torch.equal(steered, gpt2.generate(prompt, max_new_tokens=12, stop_at_eos=False, fwd_hooks=[steer]))


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox"])
def test_left_padded_generation_matches_each_prompt_alone(kind, folders):
    gpt2 = interp.load(str(folders[kind]))
    a, b = tokens_for(L=6, b=1, seed=6), tokens_for(L=3, b=1, seed=7)
    batch = torch.cat([a, torch.cat([torch.full((1, 3), BOS), b], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = gpt2.generate(batch, max_new_tokens=8, stop_at_eos=False, attention_mask=mask)
    assert torch.equal(out[0], gpt2.generate(a, max_new_tokens=8, stop_at_eos=False)[0])
    assert torch.equal(out[1, 3:], gpt2.generate(b, max_new_tokens=8, stop_at_eos=False)[0])
    texts = gpt2.generate(["w1 w2 w3", "w5"], max_new_tokens=4, stop_at_eos=False)
    assert texts[1].split()[-5] == "w5"
    assert texts[0] == gpt2.generate("w1 w2 w3", max_new_tokens=4, stop_at_eos=False)
    right = mask.flip(-1)
    with pytest.raises(ValueError, match="left padding"):
        gpt2.generate(batch, max_new_tokens=2, attention_mask=right)


# --------------------------------------------------------------------------------------------
# models built here: save / load
# --------------------------------------------------------------------------------------------
def test_config_built_model_round_trip(tmp_path):
    from transformer_lens import HookedTransformerConfig

    from interp.data import DigitTokenizer

    cfg = HookedTransformerConfig(
        n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=128, d_vocab=11, act_fn="gelu",
        normalization_type="LN", positional_embedding_type="standard", device="cpu", seed=0,
    )
    model = HookedTransformerModel(cfg, DigitTokenizer())
    tokens = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(tokens, return_type="loss")
    loss.backward()  # trainable as is
    assert model.blocks[0].attn.W_Q.grad is not None
    model.zero_grad()

    model.save_pretrained(tmp_path / "tokfsm")
    saved = json.loads((tmp_path / "tokfsm" / "config.json").read_text())
    assert saved["model_type"] == "hooked_transformer"
    loaded = interp.load(str(tmp_path / "tokfsm"))
    assert isinstance(loaded, HookedTransformerModel) and isinstance(loaded.tokenizer, DigitTokenizer)
    assert (loaded.cfg.n_layers, loaded.cfg.d_model, loaded.cfg.d_vocab) == (4, 128, 11)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert torch.equal(loaded.to_tokens("0812", prepend_bos=True), torch.tensor([[10, 0, 8, 1, 2]]))
    text = loaded.generate("0812", max_new_tokens=4, stop_at_eos=False)
    assert isinstance(text, str) and text.startswith("<bos>0812") and len(text) == len("<bos>0812") + 4


# --------------------------------------------------------------------------------------------
# nnsight
# --------------------------------------------------------------------------------------------
def test_nnsight_reads_and_sets_hook_outputs(gpt2):
    nnsight = pytest.importorskip("nnsight")
    tokens = tokens_for(L=9)
    _, cache = gpt2.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    wrapped = nnsight.NNsight(gpt2)
    with wrapped.trace(tokens):
        resid = wrapped.blocks[0].hook_resid_post.output.save()
    assert torch.allclose(resid, cache["blocks.0.hook_resid_post"])

    with wrapped.trace(tokens):
        wrapped.blocks[0].hook_resid_post.output = torch.zeros_like(wrapped.blocks[0].hook_resid_post.output)
        logits = wrapped.output.save()
    expected = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: torch.zeros_like(x))])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(logits, gpt2(tokens), atol=1e-3)
