"""One configuration for both SSM families, every knob named in one place.

Mamba-1 and Mamba-2 share one code path through the *heads view*: the SSM input is
``u[b, pos, H, P]`` with a state ``h[b, H, P, N]`` per head.

* Mamba-1: ``H = d_inner`` heads of width ``P = 1``; ``A`` is ``[H, N]`` (one decay per channel
  and state); ``B``/``C`` are shared by all heads (``G = 1``); ``dt`` comes from a low-rank
  ``x_proj -> dt_proj`` path.
* Mamba-2: ``H = n_heads`` heads of width ``P = head_dim``; ``A`` is a scalar per head (``[H]``);
  ``B``/``C`` come in ``G = n_groups`` groups; ``dt`` is a slice of ``in_proj``; the gate is a
  grouped, gated RMSNorm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Family = Literal["mamba1", "mamba2"]

#: the Hugging Face ``model_type`` values :meth:`SSMConfig.from_hf` reads; FalconMamba is a Mamba-1 mixer with
#: ``bcdt_rms`` on (its family detail lives in the config, not in the code paths)
SSM_MODEL_TYPES = ("mamba", "mamba2", "falcon_mamba")
#: the Hugging Face ``model_type`` values :class:`interp.hooks.rwkv.HookedRWKV` loads (RWKV-4, ``RWKVConfig``)
RWKV_MODEL_TYPES = ("rwkv",)

UNBOUNDED_CTX = 2**63 - 1  # SSMConfig.n_ctx: a recurrent model has no context limit (the largest int64)
MAMBA1_GROUP_SIZE = 16  # channels per component of a Mamba-1 mixer's out-projection (SSMConfig.out_groups)


@dataclass
class SSMConfig:
    """Architecture of a hookable Mamba-1 or Mamba-2 language model.

    Field names follow the papers; :meth:`from_hf` maps Hugging Face ``MambaConfig`` /
    ``Mamba2Config`` onto them.
    """

    family: Family = "mamba1"
    d_model: int = 768
    n_layers: int = 24
    vocab_size: int = 50280
    d_state: int = 16  # N
    d_conv: int = 4  # causal depthwise conv width K
    expand: int = 2
    d_inner: int | None = None  # defaults to expand * d_model
    # Mamba-1 only
    dt_rank: int | None = None  # defaults to ceil(d_model / 16)
    # Mamba-2 only
    n_heads: int | None = None  # defaults to d_inner // head_dim
    head_dim: int = 64
    n_groups: int = 1
    chunk_size: int = 256
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    # FalconMamba (Mamba-1 only): weightless RMSNorms over the low-rank Δ input (dt_rank wide, before dt_proj),
    # over B and over C (N wide), where the mixer forms Δ, B, C; HF FalconMambaMixer's dt_layernorm /
    # b_layernorm / c_layernorm, on for model_type "falcon_mamba"; eps is HF ``mixer_rms_eps``
    bcdt_rms: bool = False
    mixer_rms_eps: float = 1e-6
    # Jamba (with bcdt_rms): the same three RMS norms carry learned weights (HF JambaMambaMixer's dt_layernorm /
    # b_layernorm / c_layernorm, eps ``rms_norm_eps``); the mixer gets ``dt_layernorm`` / ``b_layernorm`` /
    # ``c_layernorm`` weights [dt_rank] / [N] / [N]
    bcdt_rms_weights: bool = False
    # Falcon-H1 (Mamba-2 only): multipliers of the in_proj output's five segments z, x, B, C, dt (HF FalconH1's
    # ``mup_vector`` from ``ssm_multipliers``), applied where the mixer splits in_proj's output (so hook_z / hook_x
    # and the B, C, dt that the conv / softplus read carry them); None: no multipliers
    in_proj_multipliers: tuple[float, ...] | None = None
    # Mamba-2 only: the gate's norm. "after": grouped RMSNorm of y · SiLU(z) (Mamba-2, Bamba, ...); "before":
    # grouped RMSNorm(y) · SiLU(z) (HF FalconH1RMSNormGated with mamba_norm_before_gate); "none": y · SiLU(z) and
    # no norm weight (Falcon-H1 with mamba_rms_norm False)
    gate_norm: Literal["after", "before", "none"] = "after"
    out_proj_bias: bool | None = None  # bias of out_proj alone (None: proj_bias; Falcon-H1's projectors_bias)
    # shared
    activation: Literal["silu", "identity"] = "silu"  # applied after the causal conv
    conv_bias: bool = True
    proj_bias: bool = False  # bias of in_proj / out_proj
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    default_prepend_bos: bool = False
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)  # provenance (source checkpoint, model card)
    # the device of the model's parameters, as TransformerLens's ``cfg.device`` (a string such as "cpu" or
    # "cuda:0"): HookedSSM moves its parameters there when built and rewrites it on every ``.to()`` / ``.cuda()``
    device: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.family not in ("mamba1", "mamba2"):
            raise ValueError(f"family must be 'mamba1' or 'mamba2', got {self.family!r}")
        if self.d_inner is None:
            self.d_inner = self.expand * self.d_model
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.family == "mamba2":
            if self.n_heads is None:
                self.n_heads = self.d_inner // self.head_dim
            if self.n_heads * self.head_dim != self.d_inner:
                raise ValueError(
                    f"Mamba-2 needs n_heads * head_dim == d_inner, got {self.n_heads} * "
                    f"{self.head_dim} != {self.d_inner}"
                )
            if self.n_heads % self.n_groups:
                raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_groups ({self.n_groups})")
        if self.bcdt_rms and self.family != "mamba1":
            raise ValueError("bcdt_rms (FalconMamba's RMS norms on B, C and the low-rank Δ) needs family "
                             f"'mamba1', got {self.family!r}")
        if self.bcdt_rms_weights and not self.bcdt_rms:
            raise ValueError("bcdt_rms_weights (Jamba's weighted RMS norms on B, C and the low-rank Δ) needs bcdt_rms")
        if self.gate_norm not in ("after", "before", "none"):
            raise ValueError(f"gate_norm must be 'after', 'before' or 'none', got {self.gate_norm!r}")
        if self.gate_norm != "after" and self.family != "mamba2":
            raise ValueError(f"gate_norm {self.gate_norm!r} needs family 'mamba2' (Mamba-1 gates without a norm)")
        if self.in_proj_multipliers is not None:
            if self.family != "mamba2" or len(self.in_proj_multipliers) != 5:
                raise ValueError("in_proj_multipliers (z, x, B, C, dt) needs family 'mamba2' and 5 values, got "
                                 f"{self.in_proj_multipliers!r} for {self.family!r}")
            self.in_proj_multipliers = tuple(float(v) for v in self.in_proj_multipliers)
        self.dt_limit = tuple(float(v) for v in self.dt_limit)  # type: ignore[assignment]
        if self.device is not None:
            self.device = str(self.device)  # a torch.device too, stored as TransformerLens stores it

    # --- TransformerLens names -----------------------------------------------------------------
    @property
    def d_vocab(self) -> int:
        """Number of token ids (TransformerLens's name; the field :attr:`vocab_size` holds it, the Hugging Face
        name, so saved configs and ``SSMConfig(vocab_size=...)`` keep working)."""
        return self.vocab_size

    @d_vocab.setter
    def d_vocab(self, value: int) -> None:
        self.vocab_size = value

    @property
    def n_ctx(self) -> int:
        """Longest sequence the model takes (TransformerLens's name): an SSM has no positional limit, so this is
        :data:`UNBOUNDED_CTX` (``2**63 - 1``), an int so that TransformerLens-style checks (``L > cfg.n_ctx``,
        ``tokens[:, -cfg.n_ctx:]``) work unchanged. Memory, not the architecture, bounds real inputs."""
        return UNBOUNDED_CTX

    @property
    def model_name(self) -> str:
        """The model's name (TransformerLens's name for :attr:`name`)."""
        return self.name

    @property
    def original_architecture(self) -> str:
        """The architecture (TransformerLens's name; here the SSM family, "mamba1" or "mamba2")."""
        return self.family

    @property
    def normalization_type(self) -> str:
        """TransformerLens's name for the norm before each block and before the unembedding: "RMS" (RMSNorm with a
        weight and no bias). ``ActivationCache.apply_ln_to_stack`` divides by the cached ``hook_scale`` = rms."""
        return "RMS"

    @property
    def n_key_value_heads(self) -> None:
        """TransformerLens's grouped-query attention field: an SSM has no keys or values (None)."""
        return None

    @property
    def hf_model_type(self) -> str:
        """The Hugging Face ``model_type`` this config saves as: "mamba", "mamba2" or "falcon_mamba"
        (Mamba-1 with ``bcdt_rms``)."""
        if self.family == "mamba2":
            return "mamba2"
        return "falcon_mamba" if self.bcdt_rms else "mamba"

    def out_groups(self, group_size: int | None = None) -> list[tuple[int, int]]:
        """The out-projection's input channels (``ssm.hook_gated``, d_inner of them) split into the mixer's
        components, as ``(start, stop)`` channel ranges: Mamba-2 one per head (``head_dim`` channels, the default),
        Mamba-1 groups of ``group_size`` consecutive channels (default :data:`MAMBA1_GROUP_SIZE`; the last group is
        shorter when d_inner is not a multiple). ``group_size`` overrides either family's width."""
        d_in = int(self.d_inner)  # type: ignore[arg-type]
        size = group_size or (self.P if self.family == "mamba2" else MAMBA1_GROUP_SIZE)
        if size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        return [(s, min(s + size, d_in)) for s in range(0, d_in, size)]

    # --- heads view -------------------------------------------------------------------------
    @property
    def H(self) -> int:
        """Number of SSM heads: d_inner for Mamba-1, n_heads for Mamba-2."""
        return self.d_inner if self.family == "mamba1" else self.n_heads  # type: ignore[return-value]

    @property
    def P(self) -> int:
        """Head width: 1 for Mamba-1, head_dim for Mamba-2."""
        return 1 if self.family == "mamba1" else self.head_dim

    @property
    def G(self) -> int:
        """Number of B/C groups: 1 for Mamba-1, n_groups for Mamba-2."""
        return 1 if self.family == "mamba1" else self.n_groups

    @property
    def conv_channels(self) -> int:
        """Channels of the causal conv: d_inner (Mamba-1) or d_inner + 2*G*N (Mamba-2, over xBC)."""
        if self.family == "mamba1":
            return self.d_inner  # type: ignore[return-value]
        return self.d_inner + 2 * self.n_groups * self.d_state  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dt_limit"] = list(self.dt_limit)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SSMConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "d_vocab" in d and "vocab_size" not in known:  # a TransformerLens-named dict
            known["vocab_size"] = d["d_vocab"]
        if "dt_limit" in known:
            known["dt_limit"] = tuple(known["dt_limit"])
        return cls(**known)

    @classmethod
    def from_hf(cls, hf_config: Any) -> "SSMConfig":
        """Map a Hugging Face ``MambaConfig``, ``Mamba2Config`` or ``FalconMambaConfig`` onto an :class:`SSMConfig`.

        FalconMamba reads the MambaConfig fields plus ``mixer_rms_eps``; its ``use_mambapy`` /
        ``use_associative_scan`` (training / compile fallbacks of the same scan) and the ``time_step_*`` /
        ``rescale_prenorm_residual`` initialisation fields do not change the forward and are not read. A quantized
        checkpoint (``quantization_config``) is refused: its weights are not float tensors."""
        mt = getattr(hf_config, "model_type", None)
        quant = getattr(hf_config, "quantization_config", None)
        if quant:
            method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", quant)
            raise ValueError(
                f"quantized {mt} checkpoint (quantization_config: {method}) is not supported: load the "
                "full-precision checkpoint (e.g. tiiuae/falcon-mamba-7b rather than its -4bit variant)"
            )
        act = getattr(hf_config, "hidden_act", "silu")
        act = {"silu": "silu", "swish": "silu", "linear": "identity", "identity": "identity"}.get(act)
        if act is None:
            raise ValueError(
                f"unsupported conv activation {hf_config.hidden_act!r}; supported: silu, identity"
            )
        common = dict(
            d_model=hf_config.hidden_size,
            n_layers=hf_config.num_hidden_layers,
            vocab_size=hf_config.vocab_size,
            d_state=hf_config.state_size,
            d_conv=hf_config.conv_kernel,
            expand=hf_config.expand,
            activation=act,
            conv_bias=hf_config.use_conv_bias,
            proj_bias=hf_config.use_bias,
            norm_eps=hf_config.layer_norm_epsilon,
            residual_in_fp32=hf_config.residual_in_fp32,
            tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
            pad_token_id=hf_config.pad_token_id,
            bos_token_id=hf_config.bos_token_id,
            eos_token_id=hf_config.eos_token_id
            if not isinstance(hf_config.eos_token_id, list)
            else hf_config.eos_token_id[0],
            name=getattr(hf_config, "_name_or_path", "") or mt,
        )
        if mt == "mamba":
            return cls(
                family="mamba1",
                d_inner=hf_config.intermediate_size,
                dt_rank=int(hf_config.time_step_rank),
                **common,
            )
        if mt == "falcon_mamba":
            return cls(
                family="mamba1",
                d_inner=hf_config.intermediate_size,  # FalconMambaConfig sets it to expand * hidden_size
                dt_rank=int(hf_config.time_step_rank),
                bcdt_rms=True,
                mixer_rms_eps=float(hf_config.mixer_rms_eps),
                **common,
            )
        if mt == "mamba2":
            return cls(
                family="mamba2",
                d_inner=int(hf_config.expand * hf_config.hidden_size),
                n_heads=hf_config.num_heads,
                head_dim=hf_config.head_dim,
                n_groups=hf_config.n_groups,
                chunk_size=hf_config.chunk_size,
                dt_limit=tuple(hf_config.time_step_limit),
                **common,
            )
        raise ValueError(f"not a Mamba config: model_type={mt!r} (expected one of {', '.join(SSM_MODEL_TYPES)})")


def is_ssm(model: object) -> bool:
    """True for a model whose config is an SSM family (``mamba1``/``mamba2``): our HookedSSM, or anything
    wrapping one that exposes its ``cfg``."""
    return getattr(getattr(model, "cfg", None), "family", None) in ("mamba1", "mamba2")
