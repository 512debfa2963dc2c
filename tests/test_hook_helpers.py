"""The small shared helpers of the models layer: the layer of a hook name, the absolute positions a hook sees,
and token coercion (interp.hooks.hook_points, interp.hooks.tokens)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interp.hooks import HookedSSM, SSMConfig
from interp.hooks.hook_points import absolute_positions, layer_of
from interp.hooks.positions import position_mask
from interp.hooks.tokens import as_tokens, check_token_ids


def tiny_ssm(vocab: int = 31) -> HookedSSM:
    torch.manual_seed(0)
    return HookedSSM(SSMConfig(family="mamba1", d_model=16, n_layers=2, vocab_size=vocab, d_state=4, d_conv=4,
                               expand=2)).eval()


# --------------------------------------------------------------------------------------------
# layer of a hook name
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, layer", [
    ("blocks.3.ssm.hook_dt", 3), ("blocks.0.hook_resid_pre", 0), ("blocks.12.attn.hook_pattern", 12),
    ("blocks.0.ssm.hook_out.codebook.hook_codes", 0), ("hook_embed", -1), ("hook_pos_embed", -1),
    ("hook_tokens", -1), ("ln_final.hook_normalized", None), ("blocks.x.hook_resid_pre", None), ("blocks", None),
])
def test_layer_of(name, layer):
    assert layer_of(name) == layer


def test_stop_at_layer_skips_exactly_the_hooks_past_it():
    model = tiny_ssm()
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), stop_at_layer=1)
    assert set(cache.keys()) == {n for n in model.hook_dict if layer_of(n) is not None and layer_of(n) < 1}


# --------------------------------------------------------------------------------------------
# absolute positions
# --------------------------------------------------------------------------------------------
def test_absolute_positions_read_the_hook_context():
    hook = SimpleNamespace(ctx={"positions": torch.tensor([7, 8, 9])})
    assert absolute_positions(hook, 3).tolist() == [7, 8, 9]
    assert absolute_positions(hook, 2).tolist() == [0, 1]  # not this forward's length: 0..L-1
    assert absolute_positions(SimpleNamespace(ctx={}), 2).tolist() == [0, 1]
    assert absolute_positions(None, 3).tolist() == [0, 1, 2]
    assert absolute_positions(torch.tensor([4, 5]), 2).tolist() == [4, 5]  # the positions tensor itself
    assert absolute_positions(object(), 1).tolist() == [0]  # no ctx at all


def test_position_mask_counts_negative_positions_from_the_end():
    pos = torch.arange(5)
    assert position_mask(pos, [1, -1]).tolist() == [False, True, False, False, True]
    assert position_mask(pos, torch.tensor([-2])).tolist() == [False, False, False, True, False]
    assert position_mask(torch.tensor([12]), [-1]).tolist() == [True]  # a decoding step: -1 is the new token
    assert position_mask(torch.tensor([12]), [11]).tolist() == [False]
    assert not position_mask(pos, []).any()


def test_hooks_see_absolute_positions_while_generating():
    model = tiny_ssm()
    seen = []

    def grab(x, hook):
        seen.append(absolute_positions(hook, x.shape[1]).tolist())

    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, fwd_hooks=[("blocks.0.hook_resid_post", grab)],
                   do_sample=False, verbose=False)
    assert seen == [[0, 1, 2], [3], [4]]  # the prompt, then one position per decoding step


# --------------------------------------------------------------------------------------------
# token coercion
# --------------------------------------------------------------------------------------------
def test_as_tokens_reads_every_form():
    model = tiny_ssm()
    ref = torch.tensor([[1, 2, 3]])
    for form in ([1, 2, 3], (1, 2, 3), [[1, 2, 3]], np.array([1, 2, 3], dtype=np.uint16), torch.tensor([1, 2, 3]),
                 torch.tensor([[1, 2, 3]], dtype=torch.int32)):
        t = as_tokens(model, form)
        assert t.dtype == torch.long and t.device == model.device and torch.equal(t, ref)
    assert as_tokens(model, [[1, 2], [3, 4]]).shape == (2, 2)
    text = SimpleNamespace(cfg=SimpleNamespace(d_vocab=11), to_tokens=lambda s: torch.tensor([[10, 0, 8]]))
    assert as_tokens(text, "<bos>08").tolist() == [[10, 0, 8]]


@pytest.mark.parametrize("bad, message", [
    ([], "prompt is empty"), (torch.zeros(1, 0, dtype=torch.long), "prompt is empty"),
    ([1, -1], "prompt holds a negative token id"), ([1, 31], "prompt holds token id 31, out of range"),
    ([1.0, 2.0], "prompt must hold integer token ids"), (torch.zeros(1, 2, 2, dtype=torch.long), r"\[L\] or \[batch, L\]"),
    ([[1, 2], [3]], "prompt: cannot read token ids"), (["a", 1], "mixes texts and token ids"),
])
def test_as_tokens_errors_name_the_argument(bad, message):
    with pytest.raises(ValueError, match=message):
        as_tokens(tiny_ssm(), bad, name="prompt")


def test_one_sequence_and_the_forward_refuse_bad_ids():
    model = tiny_ssm()
    with pytest.raises(ValueError, match="one sequence at a time"):
        as_tokens(model, [[1, 2], [3, 4]], one_sequence=True)
    with pytest.raises(ValueError, match="input holds a negative token id"):
        model(torch.tensor([[1, -2]]))
    with pytest.raises(ValueError, match="input holds token id 40"):
        model(torch.tensor([1, 40]))
    check_token_ids(torch.zeros(0, dtype=torch.long), 5)  # nothing to check
    check_token_ids(torch.tensor([-1], device="meta"), 5)  # no values to check


def test_same_vocabulary_and_find_folders(tmp_path):
    from interp.demo import tiny_model
    from interp.hooks.tokens import same_vocabulary
    from interp.loading import find_folders

    a, b = tiny_model(), tiny_model()
    assert same_vocabulary(a, a) and same_vocabulary(a, b)
    b.cfg.vocab_size = a.cfg.vocab_size + 1
    assert not same_vocabulary(a, b)
    for sub in ("x", "x/y/z", "deep/1/2/3/4/5/6"):
        (tmp_path / "root" / sub).mkdir(parents=True)
        (tmp_path / "root" / sub / "config.json").write_text("{}")
    assert find_folders([tmp_path / "root"], ("config.json",)) == [(tmp_path / "root" / s).resolve() for s in ("x", "x/y/z")]
    assert find_folders([tmp_path / "root"], ("config.json",), limit=1) == [(tmp_path / "root" / "x").resolve()]


def test_prompt_and_model_spec_checks_raise_value_errors(tmp_path):
    """The input checks the app relies on live in the library and raise ValueError with the message shown."""
    from interp.hooks.tokens import check_prompt, prompt_tokens
    from interp.loading import inside_roots, resolve_model_spec

    with pytest.raises(ValueError, match="empty"):
        check_prompt("  ", 10)
    with pytest.raises(ValueError, match="control character U\\+0007"):
        check_prompt("a\x07", 10)
    assert "invisible formatting" in check_prompt("a\u200bb", 10)[0]
    with pytest.raises(ValueError, match="no tokenizer"):
        prompt_tokens(SimpleNamespace(tokenizer=None), "abc", 4)
    long = SimpleNamespace(tokenizer=object(), to_tokens=lambda text: torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="over the cap of 4 tokens"):
        prompt_tokens(long, "abc", 4)
    assert inside_roots(tmp_path / "a", [tmp_path]) == (tmp_path / "a").resolve()
    with pytest.raises(ValueError, match="outside the folders"):
        inside_roots(tmp_path / ".." / "x", [tmp_path])
    with pytest.raises(ValueError, match="does not exist"):  # inside the roots: say it is missing
        resolve_model_spec(str(tmp_path / "no-such-model"), [tmp_path])
    with pytest.raises(ValueError, match="is outside the folders this app may read"):  # outside: never whether
        resolve_model_spec("./no-such-model", [tmp_path])                             # it exists (issue 16)


def test_positions_indices_are_absolute_and_bounds_checked():
    from interp.hooks.positions import Positions
    assert Positions.parse([3, -1]).indices(10) == [3, 9]
    assert Positions.parse("last").indices(4) == [3]
    assert Positions.parse(slice(2, None)).indices(4) == [2, 3]
    assert Positions.parse(None).indices(3) == [0, 1, 2]
    with pytest.raises(IndexError, match=r"positions=\[12\]: \[12\] outside a sequence of 10 tokens"):
        Positions.parse([12]).indices(10)
    with pytest.raises(IndexError, match="rows="):
        Positions.parse(slice(20, None)).indices(10, name="rows")
    with pytest.raises(TypeError, match="positions must be ints"):
        Positions.parse([1.5])
