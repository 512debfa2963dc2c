"""One code of a codebook model, read for display (the app's codebook tab, notebooks).

    view = code_view(cb_model, tokens, hook="blocks.0.ssm.hook_out", code=3, tokfsm=True)
    view.report.usage, view.positions, view.example_str_tokens, view.states

:func:`interp.codebook.code_report` on the corpus a codebook model's task gives (:data:`TOKFSM_SEQS` TokFSM
sequences for a TokFSM model, else the prompt itself), with the token strings to show and, on TokFSM, the FSM
states where the code fires (:func:`interp.tasks.tokfsm.tokfsm_code_states`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from interp.codebook import CodeReport, code_report
from interp.data import tokfsm_dataset
from interp.hooks.tokens import as_tokens, str_tokens
from interp.tasks.tokfsm import tokfsm_code_states

TOKFSM_SEQS = 64  # sequences of the TokFSM corpus (seed 0)


@dataclass
class CodeView:
    """``report``: the :class:`~interp.codebook.CodeReport` of the code, its usage and examples read on ``corpus``
    [n, L] (``corpus_name`` says which); ``prompt_str_tokens`` [L] the prompt's tokens and ``example_str_tokens``
    (one list per ``report.examples`` entry, its context window) as strings; ``positions``: the prompt positions
    where the code is selected in any slot; ``states``: on TokFSM the rows {state, count, precision, recall} of the
    FSM states on the ``n_units`` units-digit tokens where the code fires (None off TokFSM, ``n_units`` 0)."""

    report: CodeReport
    corpus: Tensor
    corpus_name: str
    prompt_str_tokens: list[str]
    example_str_tokens: list[list[str]]
    positions: list[int]
    states: list[dict[str, Any]] | None
    n_units: int

    def usage_summary(self) -> dict[str, str]:
        """The code's codebook usage on the corpus, formatted: codes used, dead fraction, entropy, the code's
        frequency."""
        r = self.report
        u = r.usage[r.hook]
        return {"codes used": f"{u['used']:.0f} / {u['n_codes']}", "dead fraction": f"{u['dead_fraction']:.3f}",
                "usage entropy (nats)": f"{u['entropy']:.3f}",
                f"code {r.code} frequency": f"{float(r.freq[r.code]):.4f}"}

    def usage_table(self) -> list[dict[str, Any]]:
        """One row per codebook of the model: its hook ("site") and usage statistics (4 decimals)."""
        return [{"site": h, **{k: round(x, 4) if isinstance(x, float) else x for k, x in row.items()}}
                for h, row in self.report.usage.items()]

    def similar_table(self) -> list[dict[str, Any]]:
        """The codes most similar to this one: code, cosine, frequency (4 decimals)."""
        return [{"code": c, "cosine": round(s, 4), "frequency": round(float(self.report.freq[c]), 4)}
                for c, s in self.report.similar]

    def state_note(self) -> str:
        """The TokFSM state most associated with the code, in words ("" off TokFSM)."""
        code = self.report.code
        if self.states is None:
            return ""
        if not self.states:
            return f"Code {code} never fires on a units-digit token of {self.corpus_name}."
        best = self.states[0]
        return (f"Most associated state: {best['state']:02d} ({best['count']} of the {self.n_units} units-digit "
                f"tokens where code {code} fires; recall {best['recall']:.2f} of that state's units digits).")


def task_corpus(tokens: Tensor, tokfsm: bool = False) -> tuple[Tensor, str]:
    """(token sequences [n, L], their name) to read a feature on: :data:`TOKFSM_SEQS` TokFSM sequences (seed 0)
    when ``tokfsm``, else the prompt ``tokens`` [1, L] itself."""
    if tokfsm:
        return tokfsm_dataset(TOKFSM_SEQS, seed=0), f"{TOKFSM_SEQS} TokFSM sequences"
    return tokens, "the prompt"


def code_view(model: Any, tokens: Any, *, hook: str, code: int, group: int = 0, tokfsm: bool = False) -> CodeView:
    """``code`` (of head ``group``) of the codebook at ``hook`` of a codebook model, on one prompt ``tokens``
    ([L] or [1, L]) and a corpus: :data:`TOKFSM_SEQS` TokFSM sequences when ``tokfsm`` (a TokFSM codebook model),
    else the prompt. ValueError (from :func:`~interp.codebook.code_report`) for a hook, code or group the model
    does not have, or a batch of prompts."""
    tokens = as_tokens(model, tokens, one_sequence=True)
    corpus, corpus_name = task_corpus(tokens, tokfsm)
    r = code_report(model, tokens, corpus=corpus, hook=hook, code=code, group=group)
    states, n_units = tokfsm_code_states(corpus, r.fires) if tokfsm else (None, 0)
    selected = (r.prompt_ids == int(code)).any(0)  # [L]
    return CodeView(r, corpus, corpus_name,
                    str_tokens(model, tokens), [str_tokens(model, ex["context"]) for ex in r.examples],
                    [int(i) for i in selected.nonzero().flatten()], states, n_units)
