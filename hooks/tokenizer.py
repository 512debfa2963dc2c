"""A character-level tokenizer for the toy models (TokFSM digits, copying symbols), shaped like a Hugging Face one.

    tok = DigitTokenizer()                       # "0".."9" -> 0..9, "<bos>" -> 10 (also EOS and pad)
    tok("<bos>0812", return_tensors="pt").input_ids          # LongTensor [1, 5]
    tok.decode([10, 0, 8])                                   # "<bos>08"
    tok.save_pretrained(folder); DigitTokenizer.from_pretrained(folder)   # folder/digit_tokenizer.json

It belongs with the models (checkpoints save and load it next to their weights, :mod:`interp.hooks.loading`);
the data sets that use it (:mod:`interp.data`) re-export it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.io import RECORD_KEY, REPAIR, CorruptFileError, read_json, write_json

__all__ = ["DigitTokenizer", "BatchEncoding", "TOKENIZER_FILE"]

_DEFAULT_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"
TOKENIZER_FILE = "digit_tokenizer.json"


class BatchEncoding(dict):
    """Dict of ``input_ids`` / ``attention_mask`` with attribute access and ``.to(device)``, as in HF."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def to(self, device: str | torch.device) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


class DigitTokenizer:
    """Character-level tokenizer for the toy models (TokFSM digits, copying symbols), shaped like a HF tokenizer.

    Content symbols are single characters with ids ``0..n_symbols-1``; special tokens follow with ids
    ``n_symbols, n_symbols+1, ...``. Defaults give the TokFSM vocabulary: "0".."9" -> 0..9, "<bos>" -> 10, which
    also serves as EOS and pad.

    Args:
        symbols: number of content symbols (taken from "0-9a-z") or an explicit sequence of 1-char strings.
        special_tokens: special-token strings, in id order after the symbols.
        bos_token, eos_token, pad_token: which special strings play these roles (eos/pad default to bos).
        add_bos_token: prepend BOS in ``encode``/``__call__`` when ``add_special_tokens`` is True and the text
            does not already start with it (off by default: the text is taken literally).
        padding_side: "right" or "left", used when ``padding=True``.
    """

    def __init__(
        self,
        symbols: int | Sequence[str] = 10,
        special_tokens: Sequence[str] = ("<bos>",),
        bos_token: str = "<bos>",
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool = False,
        padding_side: str = "right",
    ) -> None:
        if isinstance(symbols, int):
            if not 1 <= symbols <= len(_DEFAULT_SYMBOLS):
                raise ValueError(f"give an explicit symbol list for more than {len(_DEFAULT_SYMBOLS)} symbols")
            symbols = _DEFAULT_SYMBOLS[:symbols]
        self.symbols: list[str] = list(symbols)
        self.special_tokens: list[str] = list(special_tokens)
        if any(len(s) != 1 or s.isspace() for s in self.symbols):
            raise ValueError("content symbols must be single non-space characters")
        vocab = self.symbols + self.special_tokens
        if len(set(vocab)) != len(vocab):
            raise ValueError("symbols and special tokens must be distinct")
        if any(len(s) < 2 or not s.strip() or " " in s for s in self.special_tokens):
            raise ValueError("special tokens must be strings of 2+ characters without spaces")
        self._vocab = {tok: i for i, tok in enumerate(vocab)}
        eos_token = bos_token if eos_token is None else eos_token
        pad_token = bos_token if pad_token is None else pad_token
        for role, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if tok not in self.special_tokens:
                raise ValueError(f"{role}_token {tok!r} is not one of the special tokens {self.special_tokens}")
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.add_bos_token = add_bos_token
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.padding_side = padding_side
        # longest special strings first so that a prefix never shadows a longer token
        self._specials_by_len = sorted(self.special_tokens, key=len, reverse=True)

    # -- vocabulary ------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_token_id(self) -> int:
        return self._vocab[self.bos_token]

    @property
    def eos_token_id(self) -> int:
        return self._vocab[self.eos_token]

    @property
    def pad_token_id(self) -> int:
        return self._vocab[self.pad_token]

    @property
    def all_special_ids(self) -> list[int]:
        return [self._vocab[t] for t in self.special_tokens]

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def _allowed(self) -> str:
        syms = self.symbols
        shown = f"'{syms[0]}'..'{syms[-1]}'" if "".join(syms) in _DEFAULT_SYMBOLS else repr("".join(syms))
        return f"symbols {shown}, spaces, and the special tokens {', '.join(map(repr, self.special_tokens))}"

    # -- text <-> ids ----------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> ids. Spaces are ignored; special-token strings (e.g. "<bos>") may appear anywhere.

        Raises:
            ValueError: naming the first character that is neither a symbol, a space nor part of a special token.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch.isspace():
                i += 1
                continue
            special = next((s for s in self._specials_by_len if text.startswith(s, i)), None)
            if special is not None:
                ids.append(self._vocab[special])
                i += len(special)
            elif ch in self._vocab:
                ids.append(self._vocab[ch])
                i += 1
            else:
                raise ValueError(f"invalid character {ch!r} at position {i} in {text!r}; allowed: {self._allowed()}")
        if add_special_tokens and self.add_bos_token and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        """Id -> token string, or a sequence of ids -> list of strings (BOS is "<bos>")."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if arr.ndim == 0:
            return self._id_to_token(int(arr))
        if arr.ndim != 1:
            raise ValueError(f"convert_ids_to_tokens expects one sequence, got shape {arr.shape}")
        return [self._id_to_token(int(i)) for i in arr]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._vocab[tokens]
        return [self._vocab[t] for t in tokens]

    def _id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary 0..{self.vocab_size - 1}")
        return (self.symbols + self.special_tokens)[i]

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Ids [pos] (list, array, tensor, or one int) -> text, e.g. [10, 0, 8] -> "<bos>08"."""
        toks = self.convert_ids_to_tokens(ids)
        toks = [toks] if isinstance(toks, str) else toks
        if skip_special_tokens:
            toks = [t for t in toks if t not in self.special_tokens]
        return "".join(toks)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def __call__(
        self,
        text: str | Sequence[str],
        return_tensors: str | None = None,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        **_: Any,
    ) -> BatchEncoding:
        """Tokenize one text or a list of texts, as a HF tokenizer does.

        Returns ``{"input_ids", "attention_mask"}``: lists (``return_tensors=None``), LongTensors [batch, pos]
        (``"pt"``) or int64 arrays (``"np"``); one text gives [1, pos] tensors / a flat list.
        ``padding=True`` / ``"longest"`` pads to the longest text, ``"max_length"`` to ``max_length``;
        ``truncation=True`` cuts to ``max_length``.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        ids = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if truncation and max_length is not None:
            ids = [x[:max_length] for x in ids]
        masks = [[1] * len(x) for x in ids]
        if padding:
            target = max((len(x) for x in ids), default=0)
            if padding == "max_length" and max_length is not None:
                target = max(target, max_length)
            for x, m in zip(ids, masks):
                pad = target - len(x)
                if self.padding_side == "right":
                    x.extend([self.pad_token_id] * pad)
                    m.extend([0] * pad)
                else:
                    x[:0] = [self.pad_token_id] * pad
                    m[:0] = [0] * pad
        if return_tensors is None:
            return BatchEncoding(
                {"input_ids": ids[0] if single else ids, "attention_mask": masks[0] if single else masks}
            )
        if len({len(x) for x in ids}) > 1:
            raise ValueError("texts have different lengths; pass padding=True to build a tensor")
        if return_tensors == "pt":
            conv = lambda a: torch.tensor(a, dtype=torch.long).reshape(len(a), -1)  # noqa: E731
        elif return_tensors == "np":
            conv = lambda a: np.asarray(a, dtype=np.int64).reshape(len(a), -1)  # noqa: E731
        else:
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        return BatchEncoding({"input_ids": conv(ids), "attention_mask": conv(masks)})

    # -- persistence -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer_class": type(self).__name__,
            "symbols": self.symbols,
            "special_tokens": self.special_tokens,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos_token": self.add_bos_token,
            "padding_side": self.padding_side,
        }

    def save_pretrained(self, folder: str | os.PathLike[str]) -> tuple[str]:
        """Write ``folder/digit_tokenizer.json``; returns the written path (as HF does, in a tuple)."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        out = path / TOKENIZER_FILE
        write_json(out, self.to_dict(), checksums=())  # atomic, with its own sha256 (checked by from_pretrained)
        return (str(out),)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> DigitTokenizer:
        """Load a tokenizer written by ``save_pretrained`` (errors name the file: missing, empty, damaged)."""
        path = Path(folder) / TOKENIZER_FILE
        cfg = read_json(path, what="tokenizer file")
        if not isinstance(cfg, dict):
            raise CorruptFileError(f"{path}: the tokenizer file holds no JSON object. {REPAIR}.", path)
        cfg.pop("tokenizer_class", None)
        cfg.pop(RECORD_KEY, None)
        return cls(**cfg)

    def __repr__(self) -> str:
        return (
            f"DigitTokenizer(vocab_size={self.vocab_size}, symbols={''.join(self.symbols)!r}, "
            f"special_tokens={self.special_tokens}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"pad={self.pad_token!r})"
        )
