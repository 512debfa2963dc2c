"""The prompt a model starts with in the app and the demos, chosen by the task on its model card."""

from __future__ import annotations

from typing import Any

from interp.data.copying import copy_prompt
from interp.hooks.tokenizer import DigitTokenizer
from interp.tasks.tokfsm import tokfsm_prompt_text
from interp.zoo import model_task

ENGLISH = "The cat sat on the mat because it was tired."


def default_prompt(spec: str, model: Any = None) -> str:
    """A first prompt for model ``spec`` (a name, folder or hub id), as text: a TokFSM prompt of 16 states for a
    TokFSM model, a 12-symbol copying prompt for a copying model (both by the model card's task); with no card,
    ``"<bos>"`` and the first 20 characters of a digit tokenizer's symbols written twice in order
    (``model.tokenizer`` a :class:`~interp.hooks.tokenizer.DigitTokenizer`), else an English sentence."""
    task = model_task(spec)
    if task == "tokfsm":
        return tokfsm_prompt_text(16)
    if task == "copy":
        return copy_prompt(12)
    tokenizer = getattr(model, "tokenizer", None)
    if isinstance(tokenizer, DigitTokenizer):
        return tokenizer.bos_token + ("".join(tokenizer.symbols) * 2)[:20]
    return ENGLISH
