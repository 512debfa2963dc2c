"""Autoregressive generation for any model of the toolkit, with hooks active at every step.

A model supplies two primitives:

* ``_prefill(tokens [b, L], attention_mask [b, L] | None) -> (logits [b, vocab], state)`` runs the
  prompt (one forward, hooks fire once on the whole prompt) and returns the next-token logits;
* ``_decode_step(token [b], state) -> (logits [b, vocab], state)`` feeds one new token. For SSMs
  the state is the recurrent state (constant work per token); for transformers a key/value cache.

Hooks attached with ``model.hooks(...)``, ``run_with_hooks`` semantics or ``fwd_hooks=`` fire on
every step with a position axis of length 1; ``hook.ctx["positions"]`` holds the absolute position.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm


def sample_next(
    logits: Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None, generator: torch.Generator | None = None,
) -> Tensor:
    """logits [b, vocab] -> token ids [b]. Greedy unless ``do_sample``."""
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _check_generation_args(max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any) -> None:
    """ValueError / TypeError naming the argument for a value generation would silently misread."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 0 (0 returns the prompt)")
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)) or \
            not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}: must be a finite number >= 0 (0: greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: must be an int >= 1 (or None: no cut)")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r}: must be in (0, 1] (or None: no cut)")


@torch.no_grad()
def generate(
    model: Any,
    input: str | list[str] | Tensor,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    eos_token_id: int | None = None,
    attention_mask: Tensor | None = None,
    fwd_hooks: list | None = None,
    return_type: str = "input",
    seed: int | None = None,
    verbose: bool = False,
    prepend_bos: bool | None = None,
) -> Tensor | str | list[str]:
    """Generate ``max_new_tokens`` tokens after ``input``.

    Args:
        input: a string, a list of strings (left-padded together), or token ids [b, L] / [L].
        do_sample: sample instead of greedy decoding (greedy is the default, so results reproduce).
        fwd_hooks: ``[(name, fn), ...]`` attached for the whole generation, prefill included.
        return_type: "input" (same kind as ``input``), "tokens" or "str".
        attention_mask: for a left-padded token batch [b, L] (1 = real token).

    Returns: prompt plus continuation, as tokens [b, L + new] or string(s).
    """
    _check_generation_args(max_new_tokens, temperature, top_k, top_p)
    was_str = isinstance(input, str)
    if isinstance(input, (str, list)):
        tokens, attention_mask = model.to_tokens(input, prepend_bos=prepend_bos, padding_side="left", return_mask=True)
    else:
        tokens = input[None] if input.dim() == 1 else input
    if tokens.shape[-1] == 0:
        raise ValueError(f"input has no positions (shape {tuple(tokens.shape)}): generation needs a prompt of at "
                         "least one token")
    tokens = tokens.to(model.device if hasattr(model, "device") else tokens.device)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    gen = None if seed is None else torch.Generator(device=tokens.device).manual_seed(seed)

    hooks = fwd_hooks or []
    if hooks:
        from .hook_points import check_hook_names

        check_hook_names([n for n, _ in hooks], model.hook_dict)
    with model.hooks(fwd_hooks=hooks):
        logits, state = model._prefill(tokens, attention_mask)
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        new = []
        for i in tqdm(range(max_new_tokens), disable=not verbose, desc="generate"):
            nxt = sample_next(logits, do_sample, temperature, top_k, top_p, gen)
            if stop_at_eos and eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            new.append(nxt)
            if i + 1 == max_new_tokens or (stop_at_eos and bool(finished.all())):
                break
            logits, state = model._decode_step(nxt, state)
    out = torch.cat([tokens, torch.stack(new, 1)], dim=1) if new else tokens
    if return_type == "tokens" or (return_type == "input" and not isinstance(input, (str, list))):
        return out
    texts = [model.to_string(row) for row in out]
    return texts[0] if was_str else texts
