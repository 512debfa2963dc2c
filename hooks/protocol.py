"""What every hookable model offers the analyses: :class:`HookedModel`.

Both model classes satisfy it, :class:`~interp.hooks.mamba.HookedSSM` (Mamba-1 / Mamba-2) and
:class:`~interp.hooks.transformer.HookedTransformerModel` (TransformerLens), so an analysis annotated
``model: HookedModel`` takes either. Only members that both classes really have are listed, with TransformerLens's
names and meanings; family-specific parts (``blocks``, ``cfg.family``, attention patterns) stay outside it.

``isinstance(model, HookedModel)`` checks that the members exist (``typing.runtime_checkable``), not their
signatures. This module imports neither torch nor TransformerLens at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["HookedModel", "HookedModelConfig", "describe"]


@runtime_checkable
class HookedModelConfig(Protocol):
    """The config fields both families share, with TransformerLens's names (``SSMConfig`` and
    ``HookedTransformerConfig`` both satisfy it)."""

    model_name: str  # the model's name
    original_architecture: str | None  # "mamba1" / "mamba2"; a transformer: its Hugging Face class, or None
    d_vocab: int  # number of token ids: the embedding's rows, the logits' last dimension
    n_layers: int  # residual blocks
    d_model: int  # residual stream width
    n_ctx: int  # longest sequence the model takes (an SSM: no limit, interp.hooks.config.UNBOUNDED_CTX)
    device: Any  # the parameters' device as a string ("cpu", "cuda:0"), kept in step on .to()


@runtime_checkable
class HookedModel(Protocol):
    """A hookable language model: the members the analyses (``interp.attention``, ``interp.lrp``,
    ``interp.lens``, ``interp.steering``, ...) use on both SSMs and transformers."""

    cfg: HookedModelConfig
    tokenizer: Any  # a Hugging Face tokenizer, a DigitTokenizer, or None
    hook_dict: dict[str, Any]  # hook name -> HookPoint

    @property
    def W_E(self) -> Tensor:  # [d_vocab, d_model]
        ...

    @property
    def W_U(self) -> Tensor:  # [d_model, d_vocab]
        ...

    @property
    def b_U(self) -> Tensor:  # [d_vocab] unembedding bias (zeros for an SSM)
        ...

    def tokens_to_residual_directions(self, tokens: Any) -> Tensor:  # [..., d_model], final norm weight folded in
        ...

    def to_single_token(self, string: str) -> int:
        ...

    # final norm and unembedding: modules mapping the residual stream [..., d_model] -> [..., d_model] -> logits
    ln_final: Callable[..., Tensor]
    unembed: Callable[..., Tensor]

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any:  # logits [b, L, d_vocab]
        ...

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> tuple[Any, Any]:  # (logits, ActivationCache)
        ...

    def run_with_hooks(self, *model_args: Any, fwd_hooks: list = ..., bwd_hooks: list = ...,
                       **kwargs: Any) -> Any:
        ...

    def hooks(self, *args: Any, **kwargs: Any) -> AbstractContextManager[Any]:
        ...

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Tensor:  # LongTensor [b, L]
        ...

    def to_str_tokens(self, input: Any, *args: Any, **kwargs: Any) -> list[str]:
        ...

    def to_string(self, tokens: Any) -> str | list[str]:
        ...

    def generate(self, input: Any, max_new_tokens: int = ..., **kwargs: Any) -> Any:
        ...


def describe(model: HookedModel) -> dict[str, Any]:
    """What a model is, in a few fields: name, architecture, layers, d_model, vocabulary size, hook points."""
    cfg = model.cfg
    return {"name": cfg.model_name, "architecture": cfg.original_architecture or "transformer", "layers": cfg.n_layers,
            "d_model": cfg.d_model, "vocab": cfg.d_vocab, "hook points": len(model.hook_dict)}
