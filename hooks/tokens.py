"""Token ids as the models take them: one coercion for every caller, with errors that name the argument.

    as_tokens(model, "<bos>0812")                 # text -> model.to_tokens -> LongTensor [1, L] on model.device
    as_tokens(model, [10, 0, 8])                  # ids [L] -> [1, L]; [[...], [...]] / numpy / tensor [b, L] likewise
    check_token_ids(tokens, vocab_size, "input")  # the range check alone (the models' forward runs it)

Pure torch (no TransformerLens): the analyses call it before touching a model.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import torch
from torch import Tensor

from .positions import IndexOutOfRange

__all__ = ["as_tokens", "check_token_ids", "vocab_size", "model_device", "same_vocabulary", "check_prompt",
           "prompt_tokens", "str_tokens"]


def vocab_size(model: Any) -> int | None:
    """The number of token ids the model embeds (``cfg.d_vocab``, TransformerLens's name, which both model
    families have), or None when the model does not say."""
    v = getattr(getattr(model, "cfg", None), "d_vocab", None)
    return v if isinstance(v, int) and v > 0 else None


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (``model.device`` where it has one)."""
    dev = getattr(model, "device", None)
    if isinstance(dev, (torch.device, str)):
        return torch.device(dev)
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def check_token_ids(tokens: Tensor, vocab: int | None, name: str = "tokens") -> None:
    """Raise :class:`~interp.hooks.positions.IndexOutOfRange` (an IndexError and a ValueError, naming ``name``)
    unless every id of ``tokens`` [...] is in 0 .. vocab - 1 (a negative id is never read from the end).

    A negative id would silently index the embedding from its end (transformers) and an id >= vocab fails deep
    inside the model (or asynchronously on a GPU). Empty tensors and tensors without values (device "meta")
    pass; ``vocab`` None checks the sign only. One reduction and one host sync.
    """
    if tokens.numel() == 0 or tokens.device.type == "meta":
        return
    lo, hi = (int(v) for v in torch.aminmax(tokens.detach().long()))
    if lo < 0:
        raise IndexOutOfRange(f"{name} holds a negative token id ({lo}); token ids are 0 .. vocab_size - 1"
                              + (f" = {vocab - 1}" if vocab is not None else ""))
    if vocab is not None and hi >= vocab:
        raise IndexOutOfRange(f"{name} holds token id {hi}, out of range for this model's vocabulary of {vocab} "
                         f"(ids 0 .. {vocab - 1})")


def _is_text(x: Any) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, str) for t in x))


def as_tokens(model: Any, tokens: Any, name: str = "tokens", one_sequence: bool = False) -> Tensor:
    """Text or token ids -> LongTensor [b, L] on the model's device, checked against its vocabulary.

    tokens: a text or a list of texts (tokenised by ``model.to_tokens``: BOS and padding as the model does it);
        or token ids [L] or [b, L] (a list, nested list, numpy array or tensor of integers; [L] becomes [1, L]).
    name: the argument's name in error messages.
    one_sequence: require b = 1 (methods that explain one sequence at a time).

    Raises ValueError, naming ``name``, for: empty input (no text, no sequence or no position), ids that are
    not integers, more than two axes, a negative id, an id >= the vocabulary size, and b != 1 with
    ``one_sequence``.
    """
    if isinstance(tokens, (list, tuple)) and len(tokens) == 0:
        raise ValueError(f"{name} is empty: pass a text or token ids [L] / [batch, L]")
    if _is_text(tokens):
        t = model.to_tokens(tokens if isinstance(tokens, str) else list(tokens))
    elif isinstance(tokens, Tensor):
        t = tokens
    else:
        if isinstance(tokens, (list, tuple)) and any(isinstance(x, str) for x in tokens):
            raise ValueError(f"{name} mixes texts and token ids: pass one or the other")
        try:
            t = torch.as_tensor(tokens)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: cannot read token ids from {type(tokens).__name__} ({e})") from e
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer token ids, got dtype {t.dtype}")
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"{name} must be token ids [L] or [batch, L], got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): pass at least one token")
    if one_sequence and t.shape[0] != 1:
        raise ValueError(f"{name}: one sequence at a time, [L] or [1, L]; got shape {tuple(t.shape)}")
    check_token_ids(t, vocab_size(model), name)
    return t.to(device=model_device(model), dtype=torch.long)


def same_vocabulary(a: Any, b: Any, check: int = 4096) -> bool:
    """Whether two models read the same token ids as the same strings: same vocabulary size, tokenizer class and
    the first ``check`` token strings."""
    if a is b:
        return True
    na, nb = vocab_size(a), vocab_size(b)
    if na is None or na != nb or type(getattr(a, "tokenizer", None)) is not type(getattr(b, "tokenizer", None)):
        return False
    ids = torch.arange(min(na, check))
    try:
        return [str(t) for t in a.to_str_tokens(ids)] == [str(t) for t in b.to_str_tokens(ids)]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot decode some ids reads another vocabulary
        return False


def check_prompt(text: str, max_chars: int) -> list[str]:
    """Check a prompt before tokenising. Returns warnings; ValueError for an empty prompt, one over ``max_chars``
    characters, or one holding control characters / lone surrogates / unassigned code points."""
    if text is None or not text.strip():
        raise ValueError("The prompt is empty: type some text (or sample a TokFSM prompt).")
    if len(text) > max_chars:
        raise ValueError(f"The prompt has {len(text):,} characters, over the cap of {max_chars:,}; "
                         "shorten it (or start the app with a larger --max-tokens).")
    warnings = []
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat == "Cc" and ch not in "\n\t\r":
            raise ValueError(f"The prompt holds a control character U+{ord(ch):04X} at position {i}; remove it.")
        if cat in ("Cs", "Cn"):
            raise ValueError(f"The prompt holds an invalid or unassigned code point U+{ord(ch):04X} at position {i}.")
        if cat == "Cf":
            warnings.append(f"The prompt holds an invisible formatting character U+{ord(ch):04X} "
                            f"({unicodedata.name(ch, 'unnamed')}) at position {i}.")
    if unicodedata.normalize("NFC", text) != text:
        warnings.append("The prompt is not in Unicode NFC form: visually equal prompts may tokenise differently.")
    return warnings[:5]


def prompt_tokens(model: Any, text: str, max_tokens: int) -> Tensor:
    """A typed prompt -> LongTensor [1, L] on the CPU (:func:`check_prompt` first, with ``32 * max_tokens``
    characters). A digit-tokenizer prompt starting with "<bos>" is taken literally (no second BOS). ValueError if
    the model has no tokenizer, the tokenizer rejects the text or the prompt is over ``max_tokens`` tokens."""
    from .tokenizer import DigitTokenizer

    check_prompt(text, max_chars=max_tokens * 32)
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("This model has no tokenizer, so it cannot read a text prompt.")
    literal = isinstance(model.tokenizer, DigitTokenizer) and text.lstrip().startswith("<bos>")
    try:
        tokens = model.to_tokens(text, prepend_bos=False) if literal else model.to_tokens(text)
    except Exception as e:  # noqa: BLE001 - the tokenizer's message says what is wrong
        raise ValueError(f"This model's tokenizer cannot encode the prompt: {str(e)[:300]}") from e
    tokens = tokens[:1].cpu()
    if tokens.shape[1] > max_tokens:
        raise ValueError(f"The prompt is {tokens.shape[1]:,} tokens long, over the cap of {max_tokens:,} tokens; "
                         "shorten it (or start the app with a larger --max-tokens).")
    return tokens


def str_tokens(model: Any, tokens: Any) -> list[str]:
    """The tokens of one sequence ([L] or [1, L]: a tensor or a list of ids) as strings; ids as strings when the
    tokenizer cannot decode them."""
    ids = as_tokens(model, tokens, one_sequence=True)[0]
    try:
        return [str(t) for t in model.to_str_tokens(ids)]
    except Exception:  # noqa: BLE001
        return [str(int(t)) for t in ids]
