"""Training recipes of the embedded models: every knob of a run in one frozen dataclass.

A :class:`Recipe` holds the architecture (``model``: the keyword arguments of
:class:`interp.hooks.SSMConfig` or TransformerLens ``HookedTransformerConfig``), the task and its data
settings, the optimiser and schedule, the seeds, the evaluation settings and the checkpoint interval,
in the style of SAE-Lens configs. ``python -m interp.zoo.train NAME`` trains ``RECIPES[NAME]``;
``--set key=value`` overrides a field (or an architecture key) for one run::

    from interp.zoo.recipes import get_recipe
    tiny = get_recipe("tokfsm-mamba").replace(steps=40, d_model=16, batch_size=8)

Data streams are deterministic functions of ``(data_seed, step)`` (see :func:`batch_at`), so a run
resumed from a checkpoint sees exactly the batches it would have seen without interruption.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["Recipe", "RECIPES", "get_recipe", "batch_at", "tokenizer_for", "MODEL_NAMES"]

Arch = Literal["mamba1", "mamba2", "transformer", "hybrid"]
Task = Literal["tokfsm", "copy"]

# fields that may change between a run and its resumption (they do not change the trajectory)
RESUME_FREE_FIELDS = ("checkpoint_every", "eval_every", "description", "target", "storage_dtype", "eval_seed",
                      "eval_n_samples", "eval_gen_len", "eval_temperature", "eval_copy_n_range", "eval_batch_size")


@dataclass(frozen=True)
class Recipe:
    """One training run of an embedded model, every knob named.

    Attributes:
        name: registry name (folder name under ``interp/zoo/weights``).
        arch: ``"mamba1"``, ``"mamba2"`` (:class:`interp.hooks.HookedSSM`), ``"transformer"``
            (:class:`interp.hooks.transformer.HookedTransformerModel`) or ``"hybrid"``
            (:class:`interp.hooks.HookedHybrid`, Bamba layout: Mamba-2 and attention layers, each with a gated MLP;
            or, with ``delta`` in ``model``, OLMo-Hybrid layout: Gated DeltaNet and attention layers).
        task: ``"tokfsm"`` (next-token loss on every position) or ``"copy"`` (loss only where the
            next token is a copied one: the batch's ``loss_mask``).
        model: architecture keyword arguments (SSMConfig or HookedTransformerConfig fields; for a hybrid,
            HybridConfig fields with ``layer_types`` and the Mamba-2 mixer's SSMConfig fields under ``ssm``, or the
            Gated DeltaNet mixer's DeltaNetConfig fields under ``delta``); vocab
            size and special token ids are filled in from the task.
        seq_len: TokFSM sequence length (BOS included).
        copy_n_range: copy lengths drawn during training (inclusive).
        copy_n_symbols: content vocabulary of the copying task.
        corrupt_prob: TokFSM training augmentation (0 = the plain data set). Each state after the first is
            replaced, with this probability, by a uniformly random state from which the chain continues; the
            loss is masked on the replaced state's two digits, so the model never learns to produce an invalid
            transition, only to carry on (digit phase included) after one, as it must after its own sampling
            errors. Evaluation is unchanged (the paper's protocol).
        batch_size, steps, lr, warmup_steps, min_lr_ratio, weight_decay, betas, grad_clip: AdamW with a
            linear warm-up to ``lr`` then a cosine decay to ``lr * min_lr_ratio`` at ``steps``.
        seed: seed of the weight initialisation.
        data_seed: seed of the training stream; batch ``k`` is drawn from ``default_rng([data_seed, k])``.
        eval_seed: seed of the held-out evaluation (sampling seed for TokFSM generations, data seed of
            the held-out copies; evaluation draws are keyed apart from training ones).
        eval_n_samples: TokFSM: sequences sampled from BOS alone; copy: held-out sequences.
        eval_gen_len: TokFSM: total length of each sample, BOS included.
        eval_temperature: TokFSM sampling temperature.
        eval_copy_n_range: copy lengths of the held-out evaluation.
        eval_batch_size: copy evaluation batch size.
        eval_every: log the evaluation metric every N steps while training (0 = only at the end).
        checkpoint_every: write a resumable checkpoint every N steps (and at the end).
        storage_dtype: dtype of the shipped weight file ("float32" or "float16"; loaders cast back to
            the config's float32).
        target: the acceptance threshold of the evaluation metric.
    """

    name: str
    arch: Arch
    task: Task
    model: dict[str, Any] = field(default_factory=dict)
    # data
    seq_len: int = 128
    copy_n_range: tuple[int, int] = (16, 32)
    copy_n_symbols: int = 16
    corrupt_prob: float = 0.0
    # optimisation
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    # seeds
    seed: int = 0
    data_seed: int = 1234
    # evaluation
    eval_seed: int = 0
    eval_n_samples: int = 100
    eval_gen_len: int = 128
    eval_temperature: float = 1.0
    eval_copy_n_range: tuple[int, int] = (16, 32)
    eval_batch_size: int = 128
    eval_every: int = 0
    # checkpoints and output
    checkpoint_every: int = 100
    storage_dtype: Literal["float32", "float16"] = "float32"
    target: float = 0.95
    description: str = ""

    def __post_init__(self) -> None:
        if self.arch not in ("mamba1", "mamba2", "transformer", "hybrid"):
            raise ValueError(f"arch must be mamba1, mamba2, transformer or hybrid, got {self.arch!r}")
        if self.task not in ("tokfsm", "copy"):
            raise ValueError(f"task must be tokfsm or copy, got {self.task!r}")
        for name in ("batch_size", "steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("warmup_steps and eval_every must be >= 0")
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError(f"storage_dtype must be float32 or float16, got {self.storage_dtype!r}")
        # JSON round trips give lists: keep tuples so equal recipes compare equal
        for name in ("copy_n_range", "betas", "eval_copy_n_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "model", dict(self.model))

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self.task == "tokfsm":
            from interp.data import TOKFSM_VOCAB_SIZE

            return TOKFSM_VOCAB_SIZE
        return self.copy_n_symbols + 3  # symbols, SEP, BOS, PAD

    @property
    def pad_to(self) -> int:
        """Training copy batches are padded to one width (the longest possible sequence): one shape every step."""
        return 2 * self.copy_n_range[1] + 2

    @property
    def eval_pad_to(self) -> int:
        return 2 * self.eval_copy_n_range[1] + 2

    @property
    def context_length(self) -> int:
        """Longest sequence the model sees (the transformer's n_ctx)."""
        if self.task == "tokfsm":
            return max(self.seq_len, self.eval_gen_len)
        return max(self.pad_to, self.eval_pad_to)

    def special_ids(self) -> dict[str, int]:
        tok = tokenizer_for(self)
        return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}

    def ssm_config(self) -> Any:
        """The :class:`interp.hooks.SSMConfig` of an SSM recipe."""
        from interp.hooks import SSMConfig

        if self.arch in ("transformer", "hybrid"):
            raise ValueError(f"{self.name} is a {self.arch} recipe")
        kw = dict(self.model)
        kw.update(family=self.arch, vocab_size=self.vocab_size, name=self.name, default_prepend_bos=True,
                  **self.special_ids())
        return SSMConfig(**kw)

    def hybrid_config(self) -> Any:
        """The :class:`interp.hooks.HybridConfig` of a hybrid recipe (Bamba layout: every layer an SSM or attention
        mixer followed by a gated SiLU MLP; d_head = d_model // n_heads, rotary embedding on half of each head)."""
        from interp.hooks import HybridConfig, SSMConfig

        if self.arch != "hybrid":
            raise ValueError(f"{self.name} is not a hybrid recipe")
        kw = dict(self.model)
        ssm_kw, layer_types = dict(kw.pop("ssm", {})), list(kw.pop("layer_types"))
        n, d = len(layer_types), int(kw["d_model"])
        ids = self.special_ids()
        if "delta" in kw:  # OLMo-Hybrid layout: Gated DeltaNet layers (DeltaNetConfig fields under ``delta``)
            return self._olmo_hybrid_config(kw, layer_types, ids)
        ssm = SSMConfig(family="mamba2", d_model=d, n_layers=n, vocab_size=self.vocab_size, residual_in_fp32=False,
                        **ssm_kw)
        d_head = d // int(kw["n_heads"])
        kw.setdefault("n_key_value_heads", kw["n_heads"])
        return HybridConfig(ssm=ssm, layer_types=layer_types, n_layers=n, vocab_size=self.vocab_size, d_head=d_head,
                            rotary_dim=d_head // 2, n_ctx=self.context_length, name=self.name,
                            default_prepend_bos=True, hf_model_type="bamba", **ids, **kw)

    def _olmo_hybrid_config(self, kw: dict[str, Any], layer_types: list[str], ids: dict[str, int]) -> Any:
        """OLMo-Hybrid layout (``HybridConfig._from_olmo_hybrid``'s): "gated_deltanet" layers (pre-norm) and post-norm
        "attention" layers (q/k projection norms, a rotary embedding on the whole head), each with a gated SiLU MLP;
        d_head = d_model // n_heads."""
        from interp.hooks import HybridConfig
        from interp.hooks.deltanet import DeltaNetConfig

        d = int(kw["d_model"])
        delta = DeltaNetConfig(d_model=d, **kw.pop("delta"))
        d_head = d // int(kw["n_heads"])
        kw.setdefault("n_key_value_heads", kw["n_heads"])
        kw.setdefault("norm_eps", 1e-6)
        return HybridConfig(ssm=None, layer_types=layer_types, n_layers=len(layer_types), vocab_size=self.vocab_size,
                            d_head=d_head, rotary_dim=d_head, n_ctx=self.context_length, name=self.name, delta=delta,
                            qk_norm="projection", post_norm_layers=[i for i, t in enumerate(layer_types)
                                                                    if t == "attention"],
                            default_prepend_bos=True, hf_model_type="olmo_hybrid", **ids, **kw)

    def transformer_config(self) -> Any:
        """The TransformerLens ``HookedTransformerConfig`` of a transformer recipe."""
        from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

        if self.arch != "transformer":
            raise ValueError(f"{self.name} is an SSM recipe")
        kw = dict(self.model)
        kw.setdefault("n_ctx", self.context_length)
        kw.update(d_vocab=self.vocab_size, d_vocab_out=self.vocab_size, model_name=self.name,
                  default_prepend_bos=True, device="cpu", seed=None)
        return HookedTransformerConfig(**kw)

    # -- overrides and serialisation ------------------------------------------------------------------------
    def replace(self, **overrides: Any) -> Recipe:
        """A copy with fields replaced; keys that are not Recipe fields go into ``model``."""
        fields = {f.name for f in dataclasses.fields(self)}
        top = {k: v for k, v in overrides.items() if k in fields}
        arch = {k: v for k, v in overrides.items() if k not in fields}
        if arch:
            top["model"] = {**top.get("model", self.model), **arch}
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def trajectory_dict(self) -> dict[str, Any]:
        """The fields that determine the training trajectory (compared when resuming)."""
        d = self.to_dict()
        for k in RESUME_FREE_FIELDS:
            d.pop(k, None)
        return json.loads(json.dumps(d))


# ----------------------------------------------------------------------------------------------------------------
# the embedded models

# TokFSM: 4 layers, as the codebook-features paper's transformer; 2 layers stay below 0.95 transition accuracy
# (Mamba-2 2L d128 1500 steps: 0.77; 4L d64 without corruption: 0.91, with: 0.98, see docs/benchmarks.md)
_MAMBA1 = dict(d_model=64, n_layers=4, d_state=8, expand=2, d_conv=4)
_MAMBA2 = dict(d_model=64, n_layers=4, d_state=16, expand=2, d_conv=4, head_dim=32, n_groups=1, chunk_size=64)
# the codebook-features paper's TokFSM model: 4 layers, d_model 128 (rotary positions: learned absolute ones
# reached 0.59 after 1500 steps)
_TRANSFORMER = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, act_fn="gelu",
                    normalization_type="LN", positional_embedding_type="rotary", rotary_dim=32)
# copying 16..32 symbols: 2 layers; the state must hold up to 32 symbols
# Mamba-1 copies slowly: d_model 64 reached 0.936 after 3000 steps; d_model 128 reaches 0.999 after 6000
# (d_state 32 at d_model 64: 0.993; 3 layers: 0.996 at step 5000; runs on an H100, docs/benchmarks.md)
_COPY_MAMBA1 = dict(d_model=128, n_layers=2, d_state=16, expand=2, d_conv=4)
_COPY_MAMBA2 = dict(d_model=64, n_layers=2, d_state=64, expand=2, d_conv=4, head_dim=32, n_groups=1, chunk_size=64)

# a hybrid in Bamba's layout: Mamba-2, attention, Mamba-2 (each with a gated MLP), for comparing the SSM layers'
# hidden attention with the attention layer's softmax pattern on one model (notebook 06)
_COPY_HYBRID = dict(d_model=64, layer_types=["ssm", "attention", "ssm"], n_heads=4, d_mlp=128,
                    ssm=dict(d_state=32, expand=2, d_conv=4, head_dim=32, n_groups=1, chunk_size=64))

# OLMo-Hybrid's layout: one attention layer first (transformers' OlmoHybridConfig needs one), then two Gated DeltaNet
# layers. A first-layer attention reads only token embeddings (its values carry no position), so it cannot copy: the
# copy has to go through the delta rule, whose map the copying benchmark measures
_COPY_DELTANET = dict(d_model=64, layer_types=["attention", "gated_deltanet", "gated_deltanet"], n_heads=4, d_mlp=128,
                      delta=dict(n_k_heads=2, n_v_heads=2, d_k=32, d_v=32, d_conv=4, beta_scale=2.0))

_TOKFSM = dict(task="tokfsm", corrupt_prob=0.05, batch_size=32, warmup_steps=50, eval_every=500)
# copy lengths 1..32 in training act as a curriculum: trained on 16..32 alone, Mamba-1 stays at chance (0.11
# after 1000 steps); evaluation is on held-out lengths 16..32
_COPY = dict(task="copy", copy_n_range=(1, 32), batch_size=32, warmup_steps=50, eval_n_samples=512,
             eval_every=500, target=0.98)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(name="tokfsm-mamba", arch="mamba1", model=_MAMBA1, steps=1800, lr=5e-3, **_TOKFSM,
               description="Mamba-1 (4 layers, d_model 64) trained on TokFSM (codebook-features paper data set)"),
        Recipe(name="tokfsm-mamba2", arch="mamba2", model=_MAMBA2, steps=1500, lr=5e-3, **_TOKFSM,
               description="Mamba-2 (4 layers, d_model 64) trained on TokFSM (codebook-features paper data set)"),
        Recipe(name="tokfsm-transformer", arch="transformer", model=_TRANSFORMER, steps=2000, lr=3e-3,
               storage_dtype="float16", **{**_TOKFSM, "warmup_steps": 30},
               description="4-layer transformer (d_model 128) trained on TokFSM, as in the codebook-features paper"),
        Recipe(name="copy-mamba", arch="mamba1", model=_COPY_MAMBA1, steps=6000, lr=3e-3, **_COPY,
               description="Mamba-1 trained to copy a_1..a_n SEP -> a_1..a_n (LaTIM copying task)"),
        Recipe(name="copy-mamba2", arch="mamba2", model=_COPY_MAMBA2, steps=2500, lr=3e-3, **_COPY,
               description="Mamba-2 trained to copy a_1..a_n SEP -> a_1..a_n (LaTIM copying task)"),
        Recipe(name="copy-hybrid", arch="hybrid", model=_COPY_HYBRID, steps=1500, lr=3e-3, **_COPY,
               description="hybrid (Mamba-2, attention, Mamba-2; Bamba layout) trained to copy a_1..a_n SEP -> "
                           "a_1..a_n"),
        Recipe(name="copy-deltanet", arch="hybrid", model=_COPY_DELTANET, steps=1500, lr=3e-3, **_COPY,
               description="Gated DeltaNet hybrid (attention, Gated DeltaNet, Gated DeltaNet; OLMo-Hybrid layout) "
                           "trained to copy a_1..a_n SEP -> a_1..a_n"),
    )
}
MODEL_NAMES = tuple(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe of embedded model ``name``; an unknown name raises
    :class:`~interp.hooks.loading.UnknownModelError` (a ``KeyError``) suggesting the close names."""
    try:
        return RECIPES[name]
    except KeyError:
        from interp.hooks.loading import unknown_name_error

        raise unknown_name_error(name, MODEL_NAMES) from None


# ----------------------------------------------------------------------------------------------------------------
# data


def tokenizer_for(recipe: Recipe) -> Any:
    """The tokenizer shipped with the recipe's model."""
    from interp.data import DigitTokenizer, copy_tokenizer

    return DigitTokenizer() if recipe.task == "tokfsm" else copy_tokenizer(recipe.copy_n_symbols)


_TRAIN_STREAM, _EVAL_STREAM = 0, 1


def batch_at(recipe: Recipe, step: int, stream: int = _TRAIN_STREAM) -> dict[str, Any]:
    """The training batch of ``step``: a pure function of ``(data_seed, step)``.

    Returns ``{"tokens": LongTensor [batch, pos], "loss_mask": BoolTensor [batch, pos] | None}``
    (``loss_mask[b, p]``: the prediction at ``p`` is trained; None = every position).
    """
    import torch

    from interp.data import sample_copy_batch

    rng = np.random.default_rng([recipe.data_seed, stream, step])
    if recipe.task == "tokfsm":
        fsm = _fsm()
        n_states = max(1, -(-(recipe.seq_len - 1) // 2))
        if recipe.corrupt_prob <= 0:
            tokens = fsm.encode(fsm.sample_states(recipe.batch_size, n_states, rng))[:, : recipe.seq_len]
            return {"tokens": torch.from_numpy(np.ascontiguousarray(tokens)), "loss_mask": None}
        states, corrupted = _corrupted_states(fsm, recipe.batch_size, n_states, recipe.corrupt_prob, rng)
        tokens = fsm.encode(states)[:, : recipe.seq_len]
        # state i occupies tokens 1+2i, 2+2i, predicted at positions 2i, 2i+1: mask those for replaced states
        mask = ~np.repeat(corrupted, 2, axis=1)  # [b, 2 * n_states]: mask[:, p] for the prediction at p
        loss_mask = np.ones(tokens.shape, dtype=bool)
        loss_mask[:, : min(mask.shape[1], recipe.seq_len)] = mask[:, : recipe.seq_len]
        return {"tokens": torch.from_numpy(np.ascontiguousarray(tokens)),
                "loss_mask": torch.from_numpy(loss_mask)}
    b = sample_copy_batch(recipe.batch_size, rng, n_range=recipe.copy_n_range, n_symbols=recipe.copy_n_symbols,
                          pad_to=recipe.pad_to)
    return {"tokens": b.tokens, "loss_mask": b.loss_mask}


def _corrupted_states(fsm: Any, n_seq: int, n_states: int, q: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """State paths where each state after the first is, with probability ``q``, a uniform random state
    (the chain continues from it). Returns (states [n_seq, n_states], replaced [n_seq, n_states] bool)."""
    states = np.empty((n_seq, n_states), dtype=np.int64)
    states[:, 0] = rng.integers(0, fsm.n_states, size=n_seq)
    choice = rng.integers(0, fsm.n_edges, size=(n_seq, n_states - 1))
    replaced = np.zeros((n_seq, n_states), dtype=bool)
    replaced[:, 1:] = rng.random((n_seq, n_states - 1)) < q
    random_states = rng.integers(0, fsm.n_states, size=(n_seq, n_states - 1))
    for t in range(n_states - 1):
        nxt = fsm.edges[states[:, t], choice[:, t]]
        states[:, t + 1] = np.where(replaced[:, t + 1], random_states[:, t], nxt)
    return states, replaced


_FSM = None


def _fsm() -> Any:
    global _FSM
    if _FSM is None:
        from interp.data import TokFSM

        _FSM = TokFSM()
    return _FSM
