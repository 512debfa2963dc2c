"""The configuration of a hybrid model (:class:`interp.hooks.hybrid.HookedHybrid`): its layer layout as data
(``layer_types``), its SSM layers' mixer config (an :class:`~interp.hooks.config.SSMConfig`), the attention / MLP /
mixture-of-experts knobs, the generic multipliers, and one reader per Hugging Face family (``HybridConfig.from_hf``:
Bamba, Nemotron-H, Jamba, Granite-4.0-H, Zamba2, Falcon-H1, OLMo-Hybrid), each citing the config fields it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .config import SSMConfig

if TYPE_CHECKING:
    from .deltanet import DeltaNetConfig
    from .kda import KDAConfig
    from .mla import MLAConfig
    from .mlstm import MLSTMConfig
    from .rglru import RGLRUConfig

# --------------------------------------------------------------------------------------------
# hybrids: Mamba mixers interleaved with attention layers
# --------------------------------------------------------------------------------------------
#: the Hugging Face ``model_type`` values :meth:`HybridConfig.from_hf` reads (``interp.hooks.hybrid.HookedHybrid``)
HYBRID_MODEL_TYPES = ("bamba", "nemotron_h", "jamba", "granitemoehybrid", "zamba2", "falcon_h1", "olmo_hybrid",
                      "qwen3_next", "recurrent_gemma", "kimi_linear", "xlstm")

#: the kinds of layer a hybrid has (``HybridConfig.layer_types``): an SSM mixer, softmax attention, or (as its own
#: layer, ``mlp_sublayer=False``) an MLP; "shared_attention" (``mlp_sublayer=False``, Zamba2's "hybrid" layers): an
#: SSM mixer whose input first gets the output of a transformer block shared with other layers
#: (hooks/shared_block.py; ``n_shared_blocks``, ``shared_adapter_rank``)
#: "parallel" (Falcon-H1's layers, ``mlp_sublayer=True``): an SSM mixer and softmax attention reading the same normed
#: input, their outputs (each with its multipliers) summed into the residual
#: "gated_deltanet" (OLMo-Hybrid's "linear_attention" layers): a Gated DeltaNet mixer (hooks/deltanet.py, configured
#: by ``HybridConfig.delta``), its recurrent state in the decoding state's SSM slots
#: "rglru" (RecurrentGemma's recurrent layers): an RG-LRU block (hooks/rglru.py, configured by ``HybridConfig.rglru``)
#: "kda" (Kimi-Linear's "linear_attention" layers): a Kimi Delta Attention mixer (hooks/kda.py, ``HybridConfig.kda``)
#: "mlstm" (xLSTM's blocks): an mLSTM mixer (hooks/mlstm.py, ``HybridConfig.mlstm``)
LAYER_KINDS = ("ssm", "attention", "mlp", "shared_attention", "parallel", "gated_deltanet", "rglru", "kda", "mlstm")
#: the layer kinds with an SSM mixer (an entry in a decoding state's conv / ssm lists), and those with attention
#: keys and values (an entry in its keys / values lists)
SSM_LAYER_KINDS = ("ssm", "shared_attention", "parallel", "gated_deltanet", "rglru", "kda", "mlstm")
KV_LAYER_KINDS = ("attention", "shared_attention", "parallel")
#: the layer kinds whose :class:`~interp.hooks.hybrid.HybridBlock` holds a recurrent mixer ``ssm`` (built by
#: ``hooks.hybrid.RECURRENT_MIXERS``); a family adding a recurrent layer kind adds it here, to ``LAYER_KINDS`` and
#: to ``SSM_LAYER_KINDS``
RECURRENT_MIXER_KINDS = ("ssm", "parallel", "gated_deltanet", "rglru", "kda", "mlstm")

#: Nemotron-H's ``layers_block_type`` entries (``hybrid_override_pattern`` letters M, *, -) -> our layer kinds;
#: "moe" (letter E) is refused by :meth:`HybridConfig.from_hf`
_NEMOTRON_H_KINDS = {"linear_attention": "ssm", "full_attention": "attention", "mlp": "mlp"}

#: names a :class:`HybridConfig` answers from its SSM layers' mixer config (``cfg.ssm``), so that the analyses
#: that read ``model.cfg.H`` / ``d_state`` / ``family`` ... of an SSM layer work unchanged on a hybrid
_SSM_VIEW = frozenset({"family", "H", "P", "G", "d_inner", "d_state", "d_conv", "expand", "head_dim", "n_groups",
                       "chunk_size", "dt_limit", "activation", "conv_bias", "proj_bias", "conv_channels",
                       "out_groups", "bcdt_rms", "bcdt_rms_weights", "mixer_rms_eps", "dt_rank"})


@dataclass
class HybridConfig:
    """A hybrid language model. The block layout is data: ``layer_types[i]`` is layer i's mixer, an SSM mixer
    ("ssm", configured by ``ssm``, an :class:`SSMConfig`), softmax attention ("attention": grouped KV heads, a
    rotary embedding on the first ``rotary_dim`` dims of each head, none when 0) or an MLP ("mlp"); every layer is
    resid + mixer(RMSNorm(resid)), and with ``mlp_sublayer`` each SSM / attention layer is followed by
    resid + MLP(RMSNorm(resid)) inside the same block. The MLP is ``down(act(gate) · up)`` with ``gated_mlp``,
    else ``down(act(up))``; ``act_fn`` its activation.

    Bamba (``BambaConfig``): ``attn_layer_indices`` -> layer_types, ``num_attention_heads`` /
    ``num_key_value_heads`` -> n_heads / n_key_value_heads, ``rope_parameters`` (``rope_theta``,
    ``partial_rotary_factor`` 0.5) -> rope_theta / rotary_dim, ``intermediate_size`` -> d_mlp, ``attention_bias`` /
    ``mlp_bias``, the ``mamba_*`` fields -> ``ssm``; an MLP sublayer (gated, SiLU) in every layer.
    Nemotron-H (``NemotronHConfig``): ``layers_block_type`` (``hybrid_override_pattern``) -> layer_types, single-mixer
    layers (``mlp_sublayer=False``), no rotary embedding, ``mlp_hidden_act`` "relu2" -> a plain MLP; see
    :meth:`from_hf`. The SSM fields (``cfg.H``, ``cfg.d_state``, ``cfg.family``, ...) read ``ssm``'s."""

    ssm: SSMConfig | None  # None for a hybrid without Mamba layers (OLMo-Hybrid)
    layer_types: list[str]
    d_model: int = 768
    n_layers: int = 24
    vocab_size: int = 50280
    n_heads: int = 8  # attention heads (TransformerLens's name)
    n_key_value_heads: int = 8
    d_head: int = 64
    rotary_dim: int = 32  # leading dims of each head that RoPE rotates (Bamba: d_head // 2)
    rope_theta: float = 10000.0
    attn_bias: bool = False
    d_mlp: int = 2048
    mlp_bias: bool = False
    act_fn: Literal["silu", "relu2", "gelu", "gelu_tanh"] = "silu"  # relu2: relu(x)² (Nemotron-H's mlp_hidden_act);
    # gelu: exact; gelu_tanh: the tanh approximation (HF gelu_pytorch_tanh, RecurrentGemma)
    gated_mlp: bool = True  # down(act(gate) · up) (Bamba); False: down(act(up)) (Nemotron-H)
    mlp_sublayer: bool = True  # each SSM / attention layer also has an MLP (Bamba); False: one mixer per layer
    # sparse mixture of experts (Jamba): the MLP sublayer of these layers is ``n_experts`` gated MLPs (d_mlp wide,
    # act_fn) of which a router picks ``n_experts_per_tok`` per token (hooks/hybrid.py ``MoE``)
    moe_layers: list[int] = field(default_factory=list)
    n_experts: int = 0
    n_experts_per_tok: int = 2
    # the router's weights: False -> the top-k of softmax(logits), unnormalised (Jamba); True -> softmax over the
    # top-k logits, i.e. those k probabilities renormalised to sum 1 (Granite-4.0-H)
    moe_normalize_topk: bool = False
    # True: a MoE layer keeps its dense MLP (``blocks.{i}.mlp``) too, and the sublayer's output is experts + MLP
    # (Granite-4.0-H's ``shared_mlp`` beside ``block_sparse_moe``); False: the experts replace the MLP (Jamba)
    moe_shared_mlp: bool = False
    moe_d_mlp: int | None = None  # each expert's hidden width (None: d_mlp; Granite: intermediate_size)
    # the dense MLP beside the experts (moe_shared_mlp), Qwen3-Next's shared expert: its hidden width (None: d_mlp),
    # and whether its output is scaled by sigmoid(shared_expert_gate(x)), one scalar per position (mlp.hook_gate)
    moe_shared_d_mlp: int | None = None
    moe_shared_gate: bool = False
    # the router: "softmax" (above) or "sigmoid" (Kimi-Linear, DeepSeek-V3's router): scores σ(logits); the experts
    # are the top-k of σ + e_score_correction_bias among the moe_topk_group best of moe_n_group expert groups (a
    # group scored by its two best), weighted by their σ (renormalised to sum 1 with moe_normalize_topk) times
    # moe_routed_scaling
    moe_router: str = "softmax"
    moe_n_group: int = 1
    moe_topk_group: int = 1
    moe_routed_scaling: float = 1.0
    # Kimi Delta Attention layers ("kda", Kimi-Linear): their mixer's config (hooks/kda.py KDAConfig); with ``mla``
    # (hooks/mla.py MLAConfig) every attention layer is multi-head latent attention instead of :class:`Attention`
    kda: "KDAConfig | None" = None
    mla: "MLAConfig | None" = None
    # scalar multipliers, no-ops at their defaults (Granite-4.0-H's; any family may set them):
    embedding_multiplier: float = 1.0  # the embedding is multiplied by it (hook_embed sees the product)
    residual_multiplier: float = 1.0  # each sublayer's output is multiplied by it before the residual add
    attention_scale: float | None = None  # q·k is multiplied by it (None: d_head ** -0.5)
    logits_scale: float = 1.0  # the logits are multiplied by it (Granite: 1 / logits_scaling)
    # µP multipliers (Falcon-H1's; no-ops at 1): the mixer inputs (attention's, the SSM's: hook_in sees the product)
    # and outputs (before hook_attn_out / hook_mixer_out), the keys (k_proj's output, before hook_k), the gated
    # MLP's gate (gate_proj's output, before hook_pre) and its output (before hook_mlp_out)
    attention_in_multiplier: float = 1.0
    attention_out_multiplier: float = 1.0
    key_multiplier: float = 1.0
    ssm_in_multiplier: float = 1.0
    ssm_out_multiplier: float = 1.0
    mlp_gate_multiplier: float = 1.0
    mlp_down_multiplier: float = 1.0
    # shared transformer blocks ("shared_attention" layers, Zamba2; hooks/shared_block.py): the k-th such layer runs
    # block k % n_shared_blocks (attention over concat(resid, embed), 2·d_model wide, then the gated MLP);
    # per-use LoRA adapters of rank shared_adapter_rank on q/k/v (shared_attn_adapter) and gate/up
    # (shared_mlp_adapter)
    n_shared_blocks: int = 1
    shared_adapter_rank: int = 0
    shared_attn_adapter: bool = False
    shared_mlp_adapter: bool = False
    # Gated DeltaNet layers ("gated_deltanet", OLMo-Hybrid): their mixer's config (hooks/deltanet.py DeltaNetConfig)
    delta: "DeltaNetConfig | None" = None
    # RG-LRU layers ("rglru", RecurrentGemma): their mixer's config (hooks/rglru.py RGLRUConfig)
    rglru: "RGLRUConfig | None" = None
    # mLSTM layers ("mlstm", xLSTM): their mixer's config (hooks/mlstm.py MLSTMConfig)
    mlstm: "MLSTMConfig | None" = None
    # local (sliding-window) attention: query p attends to keys p − attention_window < k ≤ p (HF sliding_window:
    # kv_idx > q_idx − window); the decoding cache keeps the last attention_window − 1 keys. None: full causal
    attention_window: int | None = None
    # o_proj's bias when it differs from attn_bias (RecurrentGemma: o_proj always has one); None: attn_bias
    attn_out_bias: bool | None = None
    # RMSNorm of the attention's q_proj / k_proj outputs before the heads split and the rotary embedding: "none", or
    # "projection" (one RMS over the whole projection, weights [n_heads·d_head] / [n_kv_heads·d_head]: OLMo-2's and
    # OLMo-Hybrid's q_norm / k_norm); hook_q / hook_k read the normed values
    qk_norm: str = "none"
    # "head" (Qwen3-Next): one RMS per head over d_head, weights [d_head] shared by the heads, gain norm_offset + w
    # gated attention (Qwen3-Next): o_proj reads z · sigmoid(gate_proj(x)), one gate per head and dim (attn.hook_gate)
    attention_output_gate: bool = False
    # post-norm layers (OLMo-2's layout, OLMo-Hybrid's attention layers): no norm before the sublayers; ln1 normalises
    # the mixer's output and ln2 the MLP's, before each is added (resid_mid = resid_pre + ln1(mixer(resid_pre)),
    # resid_post = resid_mid + ln2(mlp(resid_mid))); ln1 / ln2.hook_scale then read the sublayer outputs
    post_norm_layers: list[int] = field(default_factory=list)
    norm_eps: float = 1e-5
    # the residual norms' gain is norm_offset + weight (1.0: the zero-centred RMSNorm of RecurrentGemma and Qwen3-Next,
    # whose checkpoints store weight = gain − 1; 0.0: the weight itself)
    norm_offset: float = 0.0
    # logits = logits_soft_cap · tanh(logits / logits_soft_cap) after ``logits_scale`` (RecurrentGemma's
    # logits_soft_cap, xLSTM's output_logit_soft_cap); None: no cap
    logits_soft_cap: float | None = None
    n_ctx: int = 262144  # HF max_position_embeddings
    tie_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    default_prepend_bos: bool = False
    name: str = "custom"
    hf_model_type: str = "bamba"
    extra: dict[str, Any] = field(default_factory=dict)
    device: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        kinds = LAYER_KINDS if not self.mlp_sublayer else ("attention",) + RECURRENT_MIXER_KINDS
        bad = [t for t in self.layer_types if t not in kinds]
        if bad or len(self.layer_types) != self.n_layers:
            raise ValueError(f"layer_types must list {' or '.join(map(repr, kinds))} for each of the {self.n_layers} "
                             f"layers{' (mlp layers need mlp_sublayer=False)' if 'mlp' in bad else ''}, got "
                             f"{self.layer_types}")
        if self.moe_layers:
            if not self.mlp_sublayer or not all(0 <= i < self.n_layers for i in self.moe_layers):
                raise ValueError(f"moe_layers {self.moe_layers} must be layer indices and need mlp_sublayer")
            if not 1 <= self.n_experts_per_tok <= self.n_experts:
                raise ValueError(f"need 1 <= n_experts_per_tok ({self.n_experts_per_tok}) <= n_experts "
                                 f"({self.n_experts})")
        if self.moe_shared_mlp and not self.mlp_sublayer:
            raise ValueError("moe_shared_mlp (a dense MLP beside the experts) needs mlp_sublayer")
        if (self.moe_shared_gate or self.moe_shared_d_mlp is not None) and not self.moe_shared_mlp:
            raise ValueError("moe_shared_gate / moe_shared_d_mlp (the shared expert's gate / width) need "
                             "moe_shared_mlp")
        if self.act_fn not in ("silu", "relu2", "gelu", "gelu_tanh"):
            raise ValueError(f"act_fn must be 'silu', 'relu2', 'gelu' or 'gelu_tanh', got {self.act_fn!r}")
        if (self.shared_attn_adapter or self.shared_mlp_adapter) and self.shared_adapter_rank < 1:
            raise ValueError(f"shared adapters need shared_adapter_rank >= 1, got {self.shared_adapter_rank}")
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_key_value_heads "
                             f"({self.n_key_value_heads})")
        if self.rotary_dim % 2 or not 0 <= self.rotary_dim <= self.d_head:
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and at most d_head ({self.d_head})")
        if "gated_deltanet" in self.layer_types and self.delta is None:
            raise ValueError("gated_deltanet layers need delta (a DeltaNetConfig)")
        if "rglru" in self.layer_types and self.rglru is None:
            raise ValueError("rglru layers need rglru (an RGLRUConfig)")
        if self.attention_window is not None and self.attention_window < 1:
            raise ValueError(f"attention_window must be >= 1 or None, got {self.attention_window}")
        if "mlstm" in self.layer_types and self.mlstm is None:
            raise ValueError("mlstm layers need mlstm (an MLSTMConfig)")
        if "kda" in self.layer_types and self.kda is None:
            raise ValueError("kda layers need kda (a KDAConfig)")
        if self.moe_router not in ("softmax", "sigmoid") or self.n_experts % max(self.moe_n_group, 1) \
                or not 1 <= self.moe_topk_group <= self.moe_n_group:
            raise ValueError(f"moe_router must be 'softmax' or 'sigmoid' (got {self.moe_router!r}), moe_n_group "
                             f"({self.moe_n_group}) must divide n_experts ({self.n_experts}) and 1 <= "
                             f"moe_topk_group ({self.moe_topk_group}) <= moe_n_group")
        if self.qk_norm not in ("none", "projection", "head"):
            raise ValueError(f"qk_norm must be 'none', 'projection' or 'head', got {self.qk_norm!r}")
        if not all(0 <= i < self.n_layers for i in self.post_norm_layers) or (self.post_norm_layers
                                                                               and not self.mlp_sublayer):
            raise ValueError(f"post_norm_layers {self.post_norm_layers} must be layer indices and need mlp_sublayer")
        if self.device is not None:
            self.device = str(self.device)

    def __getattr__(self, name: str) -> Any:  # only for names not found on the instance or class
        ssm = self.__dict__.get("ssm")
        if name in _SSM_VIEW and ssm is not None:
            return getattr(ssm, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def original_architecture(self) -> str:
        return self.hf_model_type

    @property
    def normalization_type(self) -> str:
        return "RMS"

    @property
    def residual_in_fp32(self) -> bool:
        return False  # Bamba adds the residual in the model dtype

    @property
    def ssm_layers(self) -> list[int]:
        """The layers with an SSM mixer: "ssm" and "shared_attention" (Zamba2's, whose mixer input also gets a
        shared transformer block's output), and "parallel" (Falcon-H1's, beside attention)."""
        return [i for i, t in enumerate(self.layer_types) if t in SSM_LAYER_KINDS]

    @property
    def shared_attention_layers(self) -> list[int]:
        """The layers that run a shared transformer block before their SSM mixer (Zamba2's "hybrid" layers)."""
        return [i for i, t in enumerate(self.layer_types) if t == "shared_attention"]

    @property
    def attention_layers(self) -> list[int]:
        """The layers with a softmax-attention mixer of their own: "attention" and "parallel" (Falcon-H1's)."""
        return [i for i, t in enumerate(self.layer_types) if t in ("attention", "parallel")]

    @property
    def mlp_layers(self) -> list[int]:
        """The layers that are an MLP only (Nemotron-H's "-" layers; none with ``mlp_sublayer``)."""
        return [i for i, t in enumerate(self.layer_types) if t == "mlp"]

    @classmethod
    def from_hf(cls, hf_config: Any) -> "HybridConfig":
        """Map a Hugging Face ``BambaConfig``, ``NemotronHConfig`` or ``JambaConfig`` onto a :class:`HybridConfig`.

        Bamba, not read (they do not change the forward): ``z_loss_coefficient`` (a training loss term),
        ``num_logits_to_keep`` (generation), ``attention_dropout``, ``initializer_range``. A rope type other than
        "default" is refused. Nemotron-H: see :meth:`_from_nemotron_h`; Jamba: :meth:`_from_jamba`; Granite-4.0-H
        (``GraniteMoeHybridConfig``): :meth:`_from_granitemoehybrid`; Falcon-H1 (``FalconH1Config``):
        :meth:`_from_falcon_h1`."""
        mt = getattr(hf_config, "model_type", None)
        if mt not in HYBRID_MODEL_TYPES:
            raise ValueError(f"not a hybrid config: model_type={mt!r} (expected one of {', '.join(HYBRID_MODEL_TYPES)})")
        if getattr(hf_config, "quantization_config", None):
            raise ValueError(f"quantized {mt} checkpoint (quantization_config) is not supported: load the "
                             "full-precision checkpoint")
        reader = getattr(cls, f"_from_{mt}", None)  # one reader per family; Bamba's layout is read below
        if reader is not None:
            return reader(hf_config)
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{mt}: rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
        act = getattr(hf_config, "hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (silu only)")
        d = int(hf_config.hidden_size)
        d_head = int(getattr(hf_config, "head_dim", None) or d // hf_config.num_attention_heads)
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        ssm = SSMConfig(
            family="mamba2", d_model=d, n_layers=int(hf_config.num_hidden_layers), vocab_size=int(hf_config.vocab_size),
            d_state=int(hf_config.mamba_d_state), d_conv=int(hf_config.mamba_d_conv),
            expand=int(hf_config.mamba_expand), d_inner=int(hf_config.mamba_expand * d),
            n_heads=int(hf_config.mamba_n_heads), head_dim=int(hf_config.mamba_d_head),
            n_groups=int(hf_config.mamba_n_groups), chunk_size=int(hf_config.mamba_chunk_size),
            dt_limit=tuple(hf_config.time_step_limit or (0.0, float("inf"))), activation="silu",
            conv_bias=bool(hf_config.mamba_conv_bias), proj_bias=bool(hf_config.mamba_proj_bias),
            norm_eps=float(hf_config.rms_norm_eps), residual_in_fp32=False, tie_embeddings=tie,
        )
        return cls(
            ssm=ssm,
            layer_types=["attention" if t == "full_attention" else "ssm" for t in hf_config.layers_block_type],
            d_model=d, n_layers=int(hf_config.num_hidden_layers), vocab_size=int(hf_config.vocab_size),
            n_heads=int(hf_config.num_attention_heads), n_key_value_heads=int(hf_config.num_key_value_heads),
            d_head=d_head, rotary_dim=int(d_head * float(rope.get("partial_rotary_factor", 1.0))),
            rope_theta=float(rope.get("rope_theta", 10000.0)), attn_bias=bool(hf_config.attention_bias),
            d_mlp=int(hf_config.intermediate_size), mlp_bias=bool(hf_config.mlp_bias),
            norm_eps=float(hf_config.rms_norm_eps), n_ctx=int(hf_config.max_position_embeddings),
            tie_embeddings=tie, pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id,
            eos_token_id=eos, name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_zamba2(cls, hf_config: Any) -> "HybridConfig":
        """``Zamba2Config`` (HF ``modeling_zamba2``): every layer is RMSNorm + Mamba-2 mixer with a residual
        (``Zamba2MambaDecoderLayer``); at the "hybrid" layers (``hybrid_layer_ids``) a shared transformer block runs
        first on concat(resid, embeddings) and its output, projected by the layer's own ``linear``, is added to the
        mixer's input (``Zamba2HybridLayer``; hooks/shared_block.py). Read: ``layers_block_type``
        ("linear_attention" / "mamba" -> "ssm", "hybrid" -> "shared_attention") -> layer_types; ``num_mem_blocks``
        -> n_shared_blocks (used in turn). Mamba-2 mixer: ``n_mamba_heads`` x ``mamba_headdim`` (= ``mamba_expand``
        · ``hidden_size``), ``mamba_d_state``, ``mamba_ngroups`` (B/C groups and the gated RMSNorm's groups, whose
        eps HF fixes at 1e-5), ``mamba_d_conv``, ``chunk_size``, ``time_step_min`` (dt_limit = (time_step_min, inf),
        HF's ``time_step_limit``), ``add_bias_linear`` (in_proj / out_proj, and the MLP's projections); the conv
        always has a bias and SiLU (HF builds it so whatever ``use_conv_bias`` says). Shared block: attention over
        ``attention_hidden_size`` = 2 · hidden_size inputs with ``num_attention_heads`` heads of ``head_dim``
        (``attention_head_dim`` = 2 · hidden_size / num_attention_heads), ``num_key_value_heads``, scale
        (head_dim / 2) ** -0.5 (attention_scale), no biases; a rotary embedding on the whole head with
        ``use_mem_rope`` (``rope_parameters``: "default" rope_theta), none without; gated MLP (``intermediate_size``,
        ``hidden_act`` gelu or silu) on hidden_size inputs; per-use LoRA adapters of rank ``adapter_rank`` on the
        gate/up projection (always, as HF 5.25 builds them) and on q/k/v with ``use_shared_attention_adapter``.
        ``rms_norm_eps`` for every other RMSNorm; ``max_position_embeddings`` (16384 with ``use_long_context``,
        which changes nothing else in HF's forward) -> n_ctx; ``tie_word_embeddings``. Not read (no effect on HF's
        forward): ``use_mamba_kernels``, ``use_mem_eff_path`` (fused training path), ``time_step_max`` /
        ``time_step_floor`` (initialisation), ``use_conv_bias``, ``kv_channels`` / ``num_query_groups``,
        ``num_logits_to_keep``, ``attention_dropout``, ``initializer_range``. A ``use_shared_mlp_adapter`` field
        (absent in 5.25) set to False is refused: HF's MLP always has the adapters."""
        mt = "zamba2"
        kinds = {"linear_attention": "ssm", "mamba": "ssm", "hybrid": "shared_attention"}
        types = list(hf_config.layers_block_type)
        unknown = sorted({t for t in types if t not in kinds})
        if unknown:
            raise ValueError(f"{mt}: layers_block_type entries {unknown} are not supported ({', '.join(kinds)})")
        act = str(hf_config.hidden_act)
        if act not in ("gelu", "silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (gelu or silu)")
        if getattr(hf_config, "use_shared_mlp_adapter", True) is False:
            raise ValueError(f"{mt}: use_shared_mlp_adapter False is not supported (HF's Zamba2MLP always has "
                             "its gate_up adapters)")
        d, n_heads = int(hf_config.hidden_size), int(hf_config.num_attention_heads)
        n_kv = int(hf_config.num_key_value_heads or n_heads)
        attn_adapter = bool(hf_config.use_shared_attention_adapter)
        if (2 * d) % n_heads:
            raise ValueError(f"{mt}: num_attention_heads ({n_heads}) must divide attention_hidden_size ({2 * d})")
        if attn_adapter and n_kv != n_heads:
            raise ValueError(f"{mt}: use_shared_attention_adapter with num_key_value_heads ({n_kv}) != "
                             f"num_attention_heads ({n_heads}) is not supported (HF's k/v adapters are "
                             "attention_hidden_size wide)")
        d_head = 2 * d // n_heads
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        use_rope = bool(hf_config.use_mem_rope)
        if use_rope and rope.get("rope_type", "default") != "default":
            raise ValueError(f"{mt}: rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
        n_blocks = int(hf_config.num_mem_blocks)
        if n_blocks < 1:
            raise ValueError(f"{mt}: num_mem_blocks must be >= 1, got {n_blocks}")
        n_layers = len(types)
        eps = float(hf_config.rms_norm_eps)
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        tie = bool(getattr(hf_config, "tie_word_embeddings", True))
        bias = bool(hf_config.add_bias_linear)
        d_inner = int(hf_config.mamba_expand * d)
        n_mamba = int(hf_config.n_mamba_heads)
        ssm = SSMConfig(
            family="mamba2", d_model=d, n_layers=n_layers, vocab_size=int(hf_config.vocab_size),
            d_state=int(hf_config.mamba_d_state), d_conv=int(hf_config.mamba_d_conv),
            expand=int(hf_config.mamba_expand), d_inner=d_inner, n_heads=n_mamba, head_dim=d_inner // n_mamba,
            n_groups=int(hf_config.mamba_ngroups), chunk_size=int(hf_config.chunk_size),
            dt_limit=(float(hf_config.time_step_min), float("inf")), activation="silu", conv_bias=True,
            proj_bias=bias, norm_eps=1e-5, residual_in_fp32=False, tie_embeddings=tie,
        )
        return cls(
            ssm=ssm, layer_types=[kinds[t] for t in types], d_model=d, n_layers=n_layers,
            vocab_size=int(hf_config.vocab_size), n_heads=n_heads, n_key_value_heads=n_kv, d_head=d_head,
            rotary_dim=d_head if use_rope else 0, rope_theta=float(rope.get("rope_theta", 10000.0)),
            attn_bias=False, attention_scale=(d_head / 2) ** -0.5, d_mlp=int(hf_config.intermediate_size),
            mlp_bias=bias, act_fn="gelu" if act == "gelu" else "silu", gated_mlp=True, mlp_sublayer=False,
            n_shared_blocks=n_blocks, shared_adapter_rank=int(hf_config.adapter_rank),
            shared_attn_adapter=attn_adapter, shared_mlp_adapter=True, norm_eps=eps,
            n_ctx=int(hf_config.max_position_embeddings), tie_embeddings=tie, pad_token_id=hf_config.pad_token_id,
            bos_token_id=hf_config.bos_token_id, eos_token_id=eos,
            name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_jamba(cls, hf_config: Any) -> "HybridConfig":
        """``JambaConfig`` (HF ``modeling_jamba``): every layer is RMSNorm + mixer, then RMSNorm + MLP or MoE
        (``JambaAttentionDecoderLayer`` / ``JambaMambaDecoderLayer``). Read: ``layers_block_type`` (from
        ``attn_layer_period`` / ``attn_layer_offset``: "attention" / "mamba") -> layer_types; ``layers_num_experts``
        (from ``expert_layer_period`` / ``expert_layer_offset``: ``num_experts`` or 1) -> moe_layers (> 1 expert),
        ``num_experts`` / ``num_experts_per_tok`` -> n_experts / n_experts_per_tok. Mamba-1 mixer: ``mamba_d_state``,
        ``mamba_d_conv``, ``mamba_expand`` (d_inner = expand * hidden_size), ``mamba_dt_rank``, ``mamba_conv_bias``,
        ``mamba_proj_bias``; its Δ/B/C RMS norms carry weights (``bcdt_rms_weights``) with eps ``rms_norm_eps``.
        Attention: ``num_attention_heads``, ``num_key_value_heads``, d_head = hidden_size // num_attention_heads; no
        positional embedding and no biases. MLP / experts: gated, ``intermediate_size``; ``hidden_act`` is both the
        conv activation and the MLP's (silu). Not read (no effect on HF's forward): ``use_mamba_kernels``,
        ``use_mambapy``, ``use_associative_scan`` (other paths of the same scan), ``output_router_logits`` /
        ``router_aux_loss_coef`` (a training loss), ``attention_dropout``, ``initializer_range``."""
        mt = "jamba"
        act = str(hf_config.hidden_act)
        if act not in ("silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (silu only)")
        types = list(hf_config.layers_block_type)
        unknown = sorted({t for t in types if t not in ("attention", "mamba")})
        if unknown:
            raise ValueError(f"{mt}: layers_block_type entries {unknown} are not supported (attention, mamba)")
        d, n_layers = int(hf_config.hidden_size), len(types)
        eps = float(hf_config.rms_norm_eps)
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        ssm = SSMConfig(
            family="mamba1", d_model=d, n_layers=n_layers, vocab_size=int(hf_config.vocab_size),
            d_state=int(hf_config.mamba_d_state), d_conv=int(hf_config.mamba_d_conv),
            expand=int(hf_config.mamba_expand), d_inner=int(hf_config.mamba_expand * d),
            dt_rank=int(hf_config.mamba_dt_rank), bcdt_rms=True, bcdt_rms_weights=True, mixer_rms_eps=eps,
            activation="silu", conv_bias=bool(hf_config.mamba_conv_bias), proj_bias=bool(hf_config.mamba_proj_bias),
            norm_eps=eps, residual_in_fp32=False, tie_embeddings=tie,
        )
        n_heads = int(hf_config.num_attention_heads)
        return cls(
            ssm=ssm, layer_types=["attention" if t == "attention" else "ssm" for t in types], d_model=d,
            n_layers=n_layers, vocab_size=int(hf_config.vocab_size), n_heads=n_heads,
            n_key_value_heads=int(hf_config.num_key_value_heads or n_heads), d_head=d // n_heads, rotary_dim=0,
            attn_bias=False, d_mlp=int(hf_config.intermediate_size), mlp_bias=False, act_fn="silu", gated_mlp=True,
            mlp_sublayer=True, moe_layers=[i for i, n in enumerate(hf_config.layers_num_experts) if n > 1],
            n_experts=int(hf_config.num_experts), n_experts_per_tok=int(hf_config.num_experts_per_tok),
            norm_eps=eps, n_ctx=int(hf_config.max_position_embeddings), tie_embeddings=tie,
            pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id, eos_token_id=eos,
            name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_granitemoehybrid(cls, hf_config: Any) -> "HybridConfig":
        """``GraniteMoeHybridConfig`` (Granite-4.0-H; HF ``modeling_granitemoehybrid``): every layer is
        resid + m·mixer(RMSNorm(resid)), then resid + m·(MoE + shared MLP)(RMSNorm(resid)) (m = residual multiplier;
        ``GraniteMoeHybridDecoderLayer``). Read: ``layer_types`` / ``layers_block_type`` ("linear_attention" /
        "full_attention", or the checkpoints' legacy "mamba" / "attention") -> layer_types; the Mamba-2 mixer (Bamba's):
        ``mamba_n_heads``, ``mamba_d_head``, ``mamba_n_groups``, ``mamba_d_state``, ``mamba_d_conv``,
        ``mamba_expand`` (d_inner = expand * hidden_size), ``mamba_chunk_size``, ``mamba_conv_bias``,
        ``mamba_proj_bias``, ``time_step_limit``; attention: ``num_attention_heads``, ``num_key_value_heads``,
        ``head_dim`` (if set, else hidden_size // num_attention_heads), ``attention_bias``;
        ``position_embedding_type`` "rope" -> a rotary embedding on the whole head (``rope_parameters``'
        ``rope_theta``; HF's default rope ignores ``partial_rotary_factor``), None / "nope" -> none; the shared MLP
        (``shared_mlp``: input_linear -> gate, up halves -> act(gate)·up -> output_linear, no biases):
        ``shared_intermediate_size`` -> d_mlp; the experts (``block_sparse_moe``, on every layer when
        ``num_local_experts`` > 0, added to the shared MLP): ``num_local_experts``, ``num_experts_per_tok``,
        ``intermediate_size`` -> moe_d_mlp, weights = softmax of the top-k router logits (``moe_normalize_topk``);
        ``hidden_act`` is the conv's and the MLPs' activation (silu only); ``rms_norm_eps`` every RMSNorm's eps (the
        gated one's too); the multipliers ``embedding_multiplier``, ``residual_multiplier``,
        ``attention_multiplier`` (-> attention_scale: it replaces d_head ** -0.5), ``logits_scaling``
        (-> logits_scale = 1 / logits_scaling); ``tie_word_embeddings``, ``max_position_embeddings``, token ids.
        Refused, naming the field: ``hidden_act`` other than silu, ``position_embedding_type`` other than rope /
        None / "nope", a ``rope_parameters`` ``rope_type`` other than "default" (with rope), other layer types.
        Not read (no effect on HF's forward): ``output_router_logits`` / ``router_aux_loss_coef`` (a training
        loss), ``attention_dropout``, ``initializer_range``, ``use_cache``."""
        mt = "granitemoehybrid"
        act = str(hf_config.hidden_act)
        if act not in ("silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (silu only)")
        pos = getattr(hf_config, "position_embedding_type", None)
        if pos not in (None, "nope", "rope"):
            raise ValueError(f"{mt}: position_embedding_type {pos!r} is not supported ('rope', None or 'nope')")
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        if pos == "rope" and rope.get("rope_type", "default") != "default":
            raise ValueError(f"{mt}: rope_parameters rope_type {rope.get('rope_type')!r} is not supported "
                             "(only 'default')")
        kinds = {"linear_attention": "ssm", "mamba": "ssm", "full_attention": "attention", "attention": "attention"}
        types = list(getattr(hf_config, "layers_block_type", None) or hf_config.layer_types)
        unknown = sorted({t for t in types if t not in kinds})
        if unknown:
            raise ValueError(f"{mt}: layer_types entries {unknown} are not supported (linear_attention / mamba, "
                             "full_attention / attention)")
        d, n_layers = int(hf_config.hidden_size), len(types)
        eps = float(hf_config.rms_norm_eps)
        n_heads = int(hf_config.num_attention_heads)
        d_head = int(getattr(hf_config, "head_dim", None) or d // n_heads)
        n_experts = int(hf_config.num_local_experts or 0)
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        ssm = SSMConfig(
            family="mamba2", d_model=d, n_layers=n_layers, vocab_size=int(hf_config.vocab_size),
            d_state=int(hf_config.mamba_d_state), d_conv=int(hf_config.mamba_d_conv),
            expand=int(hf_config.mamba_expand), d_inner=int(hf_config.mamba_expand * d),
            n_heads=int(hf_config.mamba_n_heads), head_dim=int(hf_config.mamba_d_head),
            n_groups=int(hf_config.mamba_n_groups), chunk_size=int(hf_config.mamba_chunk_size),
            dt_limit=tuple(hf_config.time_step_limit or (0.0, float("inf"))), activation="silu",
            conv_bias=bool(hf_config.mamba_conv_bias), proj_bias=bool(hf_config.mamba_proj_bias),
            norm_eps=eps, residual_in_fp32=False, tie_embeddings=tie,
        )
        return cls(
            ssm=ssm, layer_types=[kinds[t] for t in types], d_model=d, n_layers=n_layers,
            vocab_size=int(hf_config.vocab_size), n_heads=n_heads,
            n_key_value_heads=int(hf_config.num_key_value_heads or n_heads), d_head=d_head,
            rotary_dim=d_head if pos == "rope" else 0, rope_theta=float(rope.get("rope_theta", 10000.0)),
            attn_bias=bool(hf_config.attention_bias), d_mlp=int(hf_config.shared_intermediate_size), mlp_bias=False,
            act_fn="silu", gated_mlp=True, mlp_sublayer=True,
            moe_layers=list(range(n_layers)) if n_experts > 0 else [], n_experts=n_experts,
            n_experts_per_tok=int(hf_config.num_experts_per_tok or 1), moe_normalize_topk=True,
            moe_shared_mlp=True, moe_d_mlp=int(hf_config.intermediate_size),
            embedding_multiplier=float(hf_config.embedding_multiplier),
            residual_multiplier=float(hf_config.residual_multiplier),
            attention_scale=float(hf_config.attention_multiplier),
            logits_scale=1.0 / float(hf_config.logits_scaling),
            norm_eps=eps, n_ctx=int(hf_config.max_position_embeddings), tie_embeddings=tie,
            pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id, eos_token_id=eos,
            name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_nemotron_h(cls, hf_config: Any) -> "HybridConfig":
        """``NemotronHConfig`` (HF ``modeling_nemotron_h``): each layer is ONE mixer after an RMSNorm, with a
        residual (``NemotronHBlock``). Read: ``layers_block_type`` ("linear_attention" / "full_attention" / "mlp",
        the ``hybrid_override_pattern`` letters M / * / -) -> layer_types; "moe" (E) is refused. Mamba-2 mixer:
        ``mamba_num_heads`` x ``mamba_head_dim`` (= d_inner; ``expand`` does not set it), ``ssm_state_size``,
        ``n_groups`` (B/C groups and the gated RMSNorm's groups), ``conv_kernel``, ``chunk_size``,
        ``time_step_limit``, ``mamba_hidden_act`` (conv activation), ``use_conv_bias``, ``use_bias`` (in_proj /
        out_proj). Attention: ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``; no rotary embedding
        and no biases (HF's q/k/v/o_proj are built with bias=False whatever ``attention_bias`` says). MLP:
        ``intermediate_size``, ``mlp_hidden_act`` ("relu2": relu(x)², or "silu"), ``mlp_bias``; up_proj ->
        act -> down_proj (no gate). ``layer_norm_epsilon`` is every RMSNorm's eps, the gated one's too.
        Embeddings are never tied (``NemotronHForCausalLM`` has no tied weights; ``lm_head`` is always loaded).
        Not read (no effect on HF's forward): ``sliding_window`` (HF builds a full causal mask),
        ``residual_in_fp32``, ``mamba_ssm_cache_dtype`` (decoding-cache dtype), ``num_nextn_predict_layers`` /
        ``mtp_layers_block_type`` (multi-token-prediction heads, not in the forward; their ``mtp.*`` weights are
        skipped), the ``moe_*`` / routing fields when no layer is "moe", ``time_step_min/max/floor``,
        ``rescale_prenorm_residual``, ``initializer_range``, dropouts."""
        mt = "nemotron_h"
        types = list(hf_config.layers_block_type)
        moe = [i for i, t in enumerate(types) if t == "moe"]
        if moe:
            raise ValueError(f"{mt}: layers_block_type has 'moe' layers (hybrid_override_pattern letter 'E') at "
                             f"{moe}: mixture-of-experts layers are not supported yet; only 'linear_attention' (M), "
                             "'full_attention' (*) and 'mlp' (-) layers")
        unknown = sorted({t for t in types if t not in _NEMOTRON_H_KINDS})
        if unknown:
            raise ValueError(f"{mt}: layers_block_type entries {unknown} are not supported "
                             f"({', '.join(_NEMOTRON_H_KINDS)})")
        mlp_act = str(hf_config.mlp_hidden_act)
        if mlp_act not in ("relu2", "silu", "swish"):
            raise ValueError(f"{mt}: mlp_hidden_act {mlp_act!r} is not supported (relu2 or silu)")
        conv_act = {"silu": "silu", "swish": "silu", "identity": "identity", "linear": "identity"}.get(
            str(hf_config.mamba_hidden_act))
        if conv_act is None:
            raise ValueError(f"{mt}: mamba_hidden_act {hf_config.mamba_hidden_act!r} is not supported (silu or "
                             "identity)")
        d, n_layers = int(hf_config.hidden_size), len(types)
        eps = float(hf_config.layer_norm_epsilon)
        d_head = int(getattr(hf_config, "head_dim", None) or d // hf_config.num_attention_heads)
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        ssm = SSMConfig(
            family="mamba2", d_model=d, n_layers=n_layers, vocab_size=int(hf_config.vocab_size),
            d_state=int(hf_config.ssm_state_size), d_conv=int(hf_config.conv_kernel), expand=int(hf_config.expand),
            d_inner=int(hf_config.mamba_num_heads * hf_config.mamba_head_dim), n_heads=int(hf_config.mamba_num_heads),
            head_dim=int(hf_config.mamba_head_dim), n_groups=int(hf_config.n_groups),
            chunk_size=int(hf_config.chunk_size), dt_limit=tuple(hf_config.time_step_limit or (0.0, float("inf"))),
            activation=conv_act, conv_bias=bool(hf_config.use_conv_bias), proj_bias=bool(hf_config.use_bias),
            norm_eps=eps, residual_in_fp32=False, tie_embeddings=False,
        )
        return cls(
            ssm=ssm, layer_types=[_NEMOTRON_H_KINDS[t] for t in types], d_model=d, n_layers=n_layers,
            vocab_size=int(hf_config.vocab_size), n_heads=int(hf_config.num_attention_heads),
            n_key_value_heads=int(hf_config.num_key_value_heads or hf_config.num_attention_heads), d_head=d_head,
            rotary_dim=0, attn_bias=False, d_mlp=int(hf_config.intermediate_size), mlp_bias=bool(hf_config.mlp_bias),
            act_fn="relu2" if mlp_act == "relu2" else "silu", gated_mlp=False, mlp_sublayer=False, norm_eps=eps,
            n_ctx=int(hf_config.max_position_embeddings), tie_embeddings=False, pad_token_id=hf_config.pad_token_id,
            bos_token_id=hf_config.bos_token_id, eos_token_id=eos,
            name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_falcon_h1(cls, hf_config: Any) -> "HybridConfig":
        """``FalconH1Config`` (HF ``modeling_falcon_h1``): every layer is "parallel" (``FalconH1DecoderLayer``):
        h = RMSNorm(resid); resid += ssm_out_multiplier · mamba(ssm_in_multiplier · h) + attention_out_multiplier ·
        attn(attention_in_multiplier · h); then resid += MLP(RMSNorm(resid)). Read: ``num_hidden_layers`` (HF's
        ``layers_block_type`` is "hybrid" for every layer). Mamba-2 mixer: d_inner = ``mamba_d_ssm`` (else
        ``mamba_expand`` · hidden_size), ``mamba_n_heads``, ``mamba_d_head``, ``mamba_n_groups``, ``mamba_d_state``,
        ``mamba_d_conv``, ``mamba_chunk_size``, ``mamba_conv_bias``, ``mamba_proj_bias`` (in_proj's bias),
        ``projectors_bias`` (out_proj's bias: SSMConfig.out_proj_bias), ``time_step_limit``; ``ssm_multipliers`` (the
        ``mup_vector`` on in_proj's z, x, B, C, dt segments: SSMConfig.in_proj_multipliers); the gate:
        ``mamba_rms_norm`` False -> y · SiLU(z) (gate_norm "none"), True -> a grouped RMSNorm (``rms_norm_eps``)
        after the gate, or before it with ``mamba_norm_before_gate`` (gate_norm "after" / "before"). Attention:
        ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` (if set, else hidden_size //
        num_attention_heads), ``attention_bias``, a rotary embedding on the whole head (``rope_parameters``'
        ``rope_theta``; HF's default rope ignores ``partial_rotary_factor``), scale d_head ** -0.5; ``key_multiplier``
        on k_proj's output. MLP: gated, ``intermediate_size``, ``mlp_bias``, ``mlp_multipliers`` (gate, down).
        ``hidden_act``: the conv's and the MLP's activation (silu only); ``rms_norm_eps``: every RMSNorm's eps. The
        multipliers ``embedding_multiplier``, ``lm_head_multiplier`` (-> logits_scale), ``attention_in_multiplier``,
        ``attention_out_multiplier``, ``ssm_in_multiplier``, ``ssm_out_multiplier``; ``tie_word_embeddings``,
        ``max_position_embeddings``, token ids. Refused, naming the field: ``hidden_act`` other than silu, a
        ``rope_parameters`` ``rope_type`` other than "default", ``ssm_multipliers`` not 5 values,
        ``mlp_multipliers`` not 2. Not read (no effect on HF's forward): ``num_logits_to_keep`` (generation),
        ``use_cache``, ``attention_dropout``, ``initializer_range``, ``mamba_expand`` when ``mamba_d_ssm`` is set."""
        mt = "falcon_h1"
        act = str(hf_config.hidden_act)
        if act not in ("silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (silu only)")
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{mt}: rope_parameters rope_type {rope.get('rope_type')!r} is not supported "
                             "(only 'default')")
        ssm_mult = [float(v) for v in hf_config.ssm_multipliers]
        if len(ssm_mult) != 5:
            raise ValueError(f"{mt}: ssm_multipliers must hold 5 values (z, x, B, C, dt), got {ssm_mult}")
        mlp_mult = [float(v) for v in hf_config.mlp_multipliers]
        if len(mlp_mult) != 2:
            raise ValueError(f"{mt}: mlp_multipliers must hold 2 values (gate, down), got {mlp_mult}")
        d, n_layers = int(hf_config.hidden_size), int(hf_config.num_hidden_layers)
        eps = float(hf_config.rms_norm_eps)
        n_heads = int(hf_config.num_attention_heads)
        d_head = int(getattr(hf_config, "head_dim", None) or d // n_heads)
        d_inner = int(hf_config.mamba_d_ssm if hf_config.mamba_d_ssm is not None else hf_config.mamba_expand * d)
        gate_norm = "none" if not hf_config.mamba_rms_norm else "before" if hf_config.mamba_norm_before_gate \
            else "after"
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        ssm = SSMConfig(
            family="mamba2", d_model=d, n_layers=n_layers, vocab_size=int(hf_config.vocab_size),
            d_state=int(hf_config.mamba_d_state), d_conv=int(hf_config.mamba_d_conv),
            expand=int(hf_config.mamba_expand), d_inner=d_inner, n_heads=int(hf_config.mamba_n_heads),
            head_dim=int(hf_config.mamba_d_head), n_groups=int(hf_config.mamba_n_groups),
            chunk_size=int(hf_config.mamba_chunk_size),
            dt_limit=tuple(hf_config.time_step_limit or (0.0, float("inf"))), activation="silu",
            conv_bias=bool(hf_config.mamba_conv_bias), proj_bias=bool(hf_config.mamba_proj_bias),
            out_proj_bias=bool(hf_config.projectors_bias),
            in_proj_multipliers=None if all(v == 1.0 for v in ssm_mult) else tuple(ssm_mult), gate_norm=gate_norm,
            norm_eps=eps, residual_in_fp32=False, tie_embeddings=tie,
        )
        return cls(
            ssm=ssm, layer_types=["parallel"] * n_layers, d_model=d, n_layers=n_layers,
            vocab_size=int(hf_config.vocab_size), n_heads=n_heads,
            n_key_value_heads=int(hf_config.num_key_value_heads or n_heads), d_head=d_head, rotary_dim=d_head,
            rope_theta=float(rope.get("rope_theta", 10000.0)), attn_bias=bool(hf_config.attention_bias),
            d_mlp=int(hf_config.intermediate_size), mlp_bias=bool(hf_config.mlp_bias), act_fn="silu", gated_mlp=True,
            mlp_sublayer=True, embedding_multiplier=float(hf_config.embedding_multiplier),
            logits_scale=float(hf_config.lm_head_multiplier),
            attention_in_multiplier=float(hf_config.attention_in_multiplier),
            attention_out_multiplier=float(hf_config.attention_out_multiplier),
            key_multiplier=float(hf_config.key_multiplier), ssm_in_multiplier=float(hf_config.ssm_in_multiplier),
            ssm_out_multiplier=float(hf_config.ssm_out_multiplier), mlp_gate_multiplier=mlp_mult[0],
            mlp_down_multiplier=mlp_mult[1], norm_eps=eps, n_ctx=int(hf_config.max_position_embeddings),
            tie_embeddings=tie, pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id,
            eos_token_id=eos, name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_olmo_hybrid(cls, hf_config: Any) -> "HybridConfig":
        """``OlmoHybridConfig`` (HF ``modeling_olmo_hybrid``). ``layer_types`` "linear_attention" -> "gated_deltanet"
        (``OlmoHybridLinearAttentionDecoderLayer``, pre-norm: resid += GDN(input_layernorm(resid)); resid +=
        MLP(post_attention_layernorm(resid))), "full_attention" -> "attention" (``OlmoHybridAttentionDecoderLayer``,
        post-norm as OLMo-2: resid += post_attention_layernorm(attn(resid)); resid +=
        post_feedforward_layernorm(MLP(resid)); so those layers are ``post_norm_layers``). Read: ``hidden_size``,
        ``num_hidden_layers``, ``vocab_size``, ``rms_norm_eps`` (every RMSNorm and the attention's q_norm / k_norm;
        not the GDN's gated norm, whose eps HF fixes at 1e-5), ``hidden_act`` (the GDN conv's activation and the
        gated MLP's; silu only), ``intermediate_size`` (MLP, no biases). Attention: ``num_attention_heads``,
        ``num_key_value_heads``, ``head_dim`` (else hidden_size // num_attention_heads), ``attention_bias``, q_norm /
        k_norm over the whole projections (qk_norm "projection"), scale d_head ** -0.5, ``rope_parameters``: a
        default rotary embedding on the whole head with its ``rope_theta``, none (NoPE, rotary_dim 0) when
        ``rope_parameters`` is None or has no ``rope_theta``, as HF builds no rotary embedding then. Gated DeltaNet:
        ``linear_num_key_heads``, ``linear_num_value_heads``, ``linear_key_head_dim``, ``linear_value_head_dim``,
        ``linear_conv_kernel_dim``, ``linear_allow_neg_eigval`` (β · 2). ``tie_word_embeddings``,
        ``max_position_embeddings``, token ids. Refused: ``hidden_act`` other than silu, a ``rope_type`` other than
        "default", ``layer_types`` entries other than the two. Not read (no effect on the forward):
        ``linear_a_log_min/max``, ``linear_dt_min/max/init_floor`` (initialisation), ``initializer_range``,
        ``attention_dropout``, ``use_cache``."""
        from .deltanet import DeltaNetConfig

        mt = "olmo_hybrid"
        act = str(hf_config.hidden_act)
        if act not in ("silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (silu only)")
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        use_rope = rope.get("rope_theta") is not None
        if use_rope and rope.get("rope_type", "default") != "default":
            raise ValueError(f"{mt}: rope_parameters rope_type {rope.get('rope_type')!r} is not supported "
                             "(only 'default')")
        kinds = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
        types = list(hf_config.layer_types)
        unknown = sorted({t for t in types if t not in kinds})
        if unknown:
            raise ValueError(f"{mt}: layer_types entries {unknown} are not supported (linear_attention, "
                             "full_attention)")
        d, n_layers = int(hf_config.hidden_size), int(hf_config.num_hidden_layers)
        n_heads = int(hf_config.num_attention_heads)
        d_head = int(getattr(hf_config, "head_dim", None) or d // n_heads)
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        delta = DeltaNetConfig(
            d_model=d, n_k_heads=int(hf_config.linear_num_key_heads), n_v_heads=int(hf_config.linear_num_value_heads),
            d_k=int(hf_config.linear_key_head_dim), d_v=int(hf_config.linear_value_head_dim),
            d_conv=int(hf_config.linear_conv_kernel_dim), activation="silu", conv_bias=False,
            beta_scale=2.0 if hf_config.linear_allow_neg_eigval else 1.0, qk_l2norm=True, gate_norm_eps=1e-5,
        )
        layer_types = [kinds[t] for t in types]
        return cls(
            ssm=None, layer_types=layer_types, d_model=d, n_layers=n_layers, vocab_size=int(hf_config.vocab_size),
            n_heads=n_heads, n_key_value_heads=int(hf_config.num_key_value_heads or n_heads), d_head=d_head,
            rotary_dim=d_head if use_rope else 0, rope_theta=float(rope.get("rope_theta") or 10000.0),
            attn_bias=bool(hf_config.attention_bias), d_mlp=int(hf_config.intermediate_size), mlp_bias=False,
            act_fn="silu", gated_mlp=True, mlp_sublayer=True, delta=delta, qk_norm="projection",
            post_norm_layers=[i for i, t in enumerate(layer_types) if t == "attention"],
            norm_eps=float(hf_config.rms_norm_eps), n_ctx=int(hf_config.max_position_embeddings),
            tie_embeddings=tie, pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id,
            eos_token_id=eos, name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_qwen3_next(cls, hf_config: Any) -> "HybridConfig":
        """``Qwen3NextConfig`` (HF ``modeling_qwen3_next``). Every layer is pre-norm (``Qwen3NextDecoderLayer``):
        resid += mixer(input_layernorm(resid)); resid += FFN(post_attention_layernorm(resid)), every RMSNorm
        zero-centred (``Qwen3NextRMSNorm``: gain 1 + w, norm_offset 1.0). ``layer_types`` "linear_attention" ->
        "gated_deltanet" (``Qwen3NextGatedDeltaNet``; its fused ``in_proj_qkvz`` / ``in_proj_ba`` are split into
        q/k/v/g/b/a_proj by hooks/loading.py), "full_attention" -> "attention" (``Qwen3NextAttention``). Read:
        ``hidden_size``, ``num_hidden_layers``, ``vocab_size``, ``rms_norm_eps`` (every RMSNorm, the per-head q_norm /
        k_norm and the GDN's gated norm), ``hidden_act`` (the GDN conv's, the MLPs' and the experts' activation;
        silu only), ``intermediate_size`` (the dense gated MLP). Attention: ``num_attention_heads``,
        ``num_key_value_heads``, ``head_dim``, ``attention_bias``; q_proj's output is query and gate per head
        (attention_output_gate: o_proj reads z · sigmoid(gate)); q_norm / k_norm per head over head_dim (qk_norm
        "head", gain 1 + w); scale head_dim ** -0.5; ``rope_parameters``: ``rope_theta`` and
        ``partial_rotary_factor`` (0.25 by default) -> rotary_dim = int(head_dim · factor), "default" rope only.
        Gated DeltaNet: ``linear_num_key_heads``, ``linear_num_value_heads``, ``linear_key_head_dim``,
        ``linear_value_head_dim``, ``linear_conv_kernel_dim``; β = σ(b) (beta_scale 1), no conv bias, the gated
        norm's weight used as is (``Qwen3NextRMSNormGated``: w, not 1 + w). Mixture of experts
        (``Qwen3NextSparseMoeBlock``) on layer i when i is not in ``mlp_only_layers``, ``num_experts`` > 0 and
        (i + 1) % ``decoder_sparse_step`` == 0 (the other layers: the dense MLP): ``num_experts``,
        ``num_experts_per_tok``, ``moe_intermediate_size``, ``norm_topk_prob`` (the top-k softmax probabilities
        renormalised: moe_normalize_topk; else left as they are), plus the shared expert, a gated MLP
        ``shared_expert_intermediate_size`` wide scaled by sigmoid(``shared_expert_gate``(x)) (moe_shared_mlp,
        moe_shared_d_mlp, moe_shared_gate). ``tie_word_embeddings``, ``max_position_embeddings``, token ids.
        Refused, naming the field: ``hidden_act`` other than silu, a ``rope_type`` other than "default",
        ``layer_types`` entries other than the two. Not read (no effect on the forward): ``output_router_logits``,
        ``router_aux_loss_coef`` (training loss), ``initializer_range``, ``attention_dropout``, ``use_cache``."""
        from .deltanet import DeltaNetConfig

        mt = "qwen3_next"
        act = str(hf_config.hidden_act)
        if act not in ("silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (silu only)")
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{mt}: rope_parameters rope_type {rope.get('rope_type')!r} is not supported "
                             "(only 'default')")
        kinds = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
        types = list(hf_config.layer_types)
        unknown = sorted({t for t in types if t not in kinds})
        if unknown:
            raise ValueError(f"{mt}: layer_types entries {unknown} are not supported (linear_attention, "
                             "full_attention)")
        d, n_layers = int(hf_config.hidden_size), int(hf_config.num_hidden_layers)
        n_heads = int(hf_config.num_attention_heads)
        d_head = int(getattr(hf_config, "head_dim", None) or d // n_heads)
        eps = float(hf_config.rms_norm_eps)
        n_experts = int(hf_config.num_experts or 0)
        mlp_only = set(hf_config.mlp_only_layers or [])
        moe_layers = [i for i in range(n_layers) if i not in mlp_only and n_experts > 0
                      and (i + 1) % int(hf_config.decoder_sparse_step) == 0]
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        delta = DeltaNetConfig(
            d_model=d, n_k_heads=int(hf_config.linear_num_key_heads), n_v_heads=int(hf_config.linear_num_value_heads),
            d_k=int(hf_config.linear_key_head_dim), d_v=int(hf_config.linear_value_head_dim),
            d_conv=int(hf_config.linear_conv_kernel_dim), activation="silu", conv_bias=False, beta_scale=1.0,
            qk_l2norm=True, gate_norm_eps=eps,
        )
        return cls(
            ssm=None, layer_types=[kinds[t] for t in types], d_model=d, n_layers=n_layers,
            vocab_size=int(hf_config.vocab_size), n_heads=n_heads,
            n_key_value_heads=int(hf_config.num_key_value_heads or n_heads), d_head=d_head,
            rotary_dim=int(d_head * float(rope.get("partial_rotary_factor", 1.0))),
            rope_theta=float(rope.get("rope_theta", 10000.0)), attn_bias=bool(hf_config.attention_bias),
            d_mlp=int(hf_config.intermediate_size), mlp_bias=False, act_fn="silu", gated_mlp=True, mlp_sublayer=True,
            moe_layers=moe_layers, n_experts=n_experts, n_experts_per_tok=int(hf_config.num_experts_per_tok),
            moe_normalize_topk=bool(hf_config.norm_topk_prob), moe_shared_mlp=bool(moe_layers),
            moe_d_mlp=int(hf_config.moe_intermediate_size),
            moe_shared_d_mlp=int(hf_config.shared_expert_intermediate_size) if moe_layers else None,
            moe_shared_gate=bool(moe_layers), delta=delta, qk_norm="head", attention_output_gate=True,
            norm_eps=eps, norm_offset=1.0, n_ctx=int(hf_config.max_position_embeddings), tie_embeddings=tie,
            pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id, eos_token_id=eos,
            name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_recurrent_gemma(cls, hf_config: Any) -> "HybridConfig":
        """``RecurrentGemmaConfig`` (HF ``modeling_recurrent_gemma``). Every layer is pre-norm
        (``RecurrentGemmaDecoderLayer``): resid += temporal_block(temporal_pre_norm(resid)); resid +=
        mlp_block(channel_pre_norm(resid)); every RMSNorm zero-centred (``RecurrentGemmaRMSNorm``: gain 1 + w,
        norm_offset 1.0). ``block_types`` (repeated to ``num_hidden_layers``, HF ``layers_block_type``) "recurrent"
        -> "rglru" (``RecurrentGemmaRecurrentBlock``, hooks/rglru.py), "attention" -> "attention"
        (``RecurrentGemmaAttention``: local attention over ``attention_window_size`` keys, HF ``sliding_window``).
        Read: ``hidden_size``, ``num_hidden_layers``, ``vocab_size``, ``rms_norm_eps``, ``hidden_activation`` (the
        MLP's and the RG-LRU gate branch's activation: ``gelu_pytorch_tanh`` -> "gelu_tanh", or exact "gelu"),
        ``intermediate_size`` (the gated MLP is intermediate_size // 2 wide, biases on), ``logits_soft_cap``. The
        embedding is multiplied by √hidden_size rounded to bfloat16 (HF's ``normalizer`` buffer), then cast to the
        model dtype. Attention: ``num_attention_heads``, ``num_key_value_heads``, head_dim = hidden_size //
        num_attention_heads, ``attention_bias`` (q/k/v; o_proj always has a bias: attn_out_bias), scale head_dim **
        -0.5, ``rope_parameters``' ``rope_theta`` and ``partial_rotary_factor`` (0.5) -> rotary_dim. RG-LRU:
        ``lru_width``, ``num_attention_heads`` (the gates' blocks), ``conv1d_width``. ``tie_word_embeddings``
        (default True), token ids. Refused, naming the field: ``hidden_activation`` other than the two, a
        ``rope_type`` other than "default", ``block_types`` entries other than the two. Not read (no effect on the
        forward): ``w_init_variance_scale`` / ``final_w_init_variance_scale`` (initialisation),
        ``attention_dropout``, ``use_cache``; RecurrentGemma has no ``max_position_embeddings`` (n_ctx stays at its
        default)."""
        from .rglru import RGLRUConfig

        mt = "recurrent_gemma"
        act = str(hf_config.hidden_activation)
        acts = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
        if act not in acts:
            raise ValueError(f"{mt}: hidden_activation {act!r} is not supported (gelu_pytorch_tanh or gelu)")
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{mt}: rope_parameters rope_type {rope.get('rope_type')!r} is not supported "
                             "(only 'default')")
        kinds = {"recurrent": "rglru", "attention": "attention"}
        unknown = sorted({t for t in hf_config.block_types if t not in kinds})
        if unknown:
            raise ValueError(f"{mt}: block_types entries {unknown} are not supported (recurrent, attention)")
        d, n_layers = int(hf_config.hidden_size), int(hf_config.num_hidden_layers)
        n_heads = int(hf_config.num_attention_heads)
        d_head = d // n_heads
        types = [kinds[t] for t in (list(hf_config.block_types) * n_layers)[:n_layers]]
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        import torch

        normalizer = float(torch.tensor(d ** 0.5, dtype=torch.bfloat16))  # HF's bfloat16 buffer
        rglru = RGLRUConfig(d_model=d, d_lru=int(hf_config.lru_width or d), n_heads=n_heads,
                            d_conv=int(hf_config.conv1d_width), gate_act=acts[act])
        return cls(
            ssm=None, layer_types=types, d_model=d, n_layers=n_layers, vocab_size=int(hf_config.vocab_size),
            n_heads=n_heads, n_key_value_heads=int(hf_config.num_key_value_heads or n_heads), d_head=d_head,
            rotary_dim=int(d_head * float(rope.get("partial_rotary_factor", 0.5))),
            rope_theta=float(rope.get("rope_theta", 10000.0)), attn_bias=bool(hf_config.attention_bias),
            attn_out_bias=True, attention_window=int(hf_config.attention_window_size),
            d_mlp=int(hf_config.intermediate_size) // 2, mlp_bias=True, act_fn=acts[act], gated_mlp=True,
            mlp_sublayer=True, rglru=rglru, embedding_multiplier=normalizer,
            logits_soft_cap=float(hf_config.logits_soft_cap), norm_eps=float(hf_config.rms_norm_eps),
            norm_offset=1.0, tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
            pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id, eos_token_id=eos,
            name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )

    @classmethod
    def _from_kimi_linear(cls, hf_config: Any) -> "HybridConfig":
        """``KimiLinearConfig`` (HF ``modeling_kimi_linear``). Every layer is pre-norm: resid += mixer(
        input_layernorm(resid)); resid += ffn(post_attention_layernorm(resid)). ``layer_types`` "linear_attention"
        -> "kda" (``KimiLinearDeltaAttention``, hooks/kda.py: ``linear_num_heads``, ``linear_head_dim``,
        ``linear_conv_kernel_dim``; its gated norm's eps ``rms_norm_eps``), "full_attention" -> "attention", built as
        multi-head latent attention (``KimiLinearAttention``, hooks/mla.py; ``mla``: ``num_attention_heads``,
        ``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``,
        ``attention_bias``; no rotary embedding: HF applies none). ``mlp_layer_types`` "dense" -> a gated MLP of
        ``intermediate_size``; "sparse" -> ``moe_layers`` (``KimiLinearMoE``): ``num_local_experts`` experts of
        ``moe_intermediate_size``, ``num_experts_per_tok`` of them chosen by the sigmoid router (moe_router "sigmoid":
        ``n_group``, ``topk_group``, ``norm_topk_prob``, ``routed_scaling_factor``, the checkpoint's
        ``e_score_correction_bias``), plus the shared experts as the dense MLP beside them (moe_shared_mlp, width
        ``moe_intermediate_size`` · ``n_shared_experts``). Also read: ``hidden_size``, ``num_hidden_layers``,
        ``vocab_size``, ``rms_norm_eps`` (the residual norms'), ``hidden_act`` (the KDA conv's and the MLPs'; silu
        only), ``max_position_embeddings``, token ids. Never tied: ``KimiLinearForCausalLM`` declares no tied weights,
        so ``lm_head`` is its own matrix whatever ``tie_word_embeddings`` says. Refused: ``hidden_act`` other than
        silu, ``num_key_value_heads`` != ``num_attention_heads`` (HF's MLA expands keys for every head and then
        repeats them again, which only runs at one group), ``layer_types`` / ``mlp_layer_types`` entries other than
        the two each. Not read (no effect on the forward): ``rope_parameters`` (no rotary embedding is built),
        ``initializer_range``, ``attention_dropout``, ``use_cache``, ``output_router_logits``, ``pretraining_tp``."""
        from .kda import KDAConfig
        from .mla import MLAConfig

        mt = "kimi_linear"
        act = str(hf_config.hidden_act)
        if act not in ("silu", "swish"):
            raise ValueError(f"{mt}: hidden_act {act!r} is not supported (silu only)")
        n_heads = int(hf_config.num_attention_heads)
        if int(hf_config.num_key_value_heads or n_heads) != n_heads:
            raise ValueError(f"{mt}: num_key_value_heads ({hf_config.num_key_value_heads}) must equal "
                             f"num_attention_heads ({n_heads}): latent attention has one key / value per head")
        kinds = {"linear_attention": "kda", "full_attention": "attention"}
        types, ffn = list(hf_config.layer_types), list(hf_config.mlp_layer_types)
        bad = sorted({t for t in types if t not in kinds}) + sorted({t for t in ffn if t not in ("dense", "sparse")})
        if bad:
            raise ValueError(f"{mt}: layer_types / mlp_layer_types entries {bad} are not supported "
                             "(linear_attention, full_attention / dense, sparse)")
        d, n_layers = int(hf_config.hidden_size), int(hf_config.num_hidden_layers)
        eps = float(hf_config.rms_norm_eps)
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        kda = KDAConfig(d_model=d, n_heads=int(hf_config.linear_num_heads), d_head=int(hf_config.linear_head_dim),
                        d_conv=int(hf_config.linear_conv_kernel_dim), activation="silu", gate_norm_eps=eps)
        q_rank = hf_config.q_lora_rank
        mla = MLAConfig(d_model=d, n_heads=n_heads, q_lora_rank=None if q_rank is None else int(q_rank),
                        kv_lora_rank=int(hf_config.kv_lora_rank), d_nope=int(hf_config.qk_nope_head_dim),
                        d_rope=int(hf_config.qk_rope_head_dim), d_v=int(hf_config.v_head_dim),
                        bias=bool(hf_config.attention_bias))
        moe_layers = [i for i, t in enumerate(ffn) if t == "sparse"]
        moe_d = int(hf_config.moe_intermediate_size)
        return cls(
            ssm=None, layer_types=[kinds[t] for t in types], d_model=d, n_layers=n_layers,
            vocab_size=int(hf_config.vocab_size), n_heads=n_heads, n_key_value_heads=n_heads, d_head=mla.d_qk,
            rotary_dim=0, attn_bias=bool(hf_config.attention_bias), d_mlp=int(hf_config.intermediate_size),
            mlp_bias=False, act_fn="silu", gated_mlp=True, mlp_sublayer=True, moe_layers=moe_layers,
            n_experts=int(hf_config.num_local_experts), n_experts_per_tok=int(hf_config.num_experts_per_tok),
            moe_normalize_topk=bool(hf_config.norm_topk_prob), moe_shared_mlp=bool(moe_layers),
            moe_d_mlp=moe_d, moe_shared_d_mlp=moe_d * int(hf_config.n_shared_experts) if moe_layers else None,
            moe_router="sigmoid", moe_n_group=int(hf_config.n_group), moe_topk_group=int(hf_config.topk_group),
            moe_routed_scaling=float(hf_config.routed_scaling_factor), kda=kda, mla=mla, norm_eps=eps,
            n_ctx=int(hf_config.max_position_embeddings), tie_embeddings=False, pad_token_id=hf_config.pad_token_id,
            bos_token_id=hf_config.bos_token_id, eos_token_id=eos, name=getattr(hf_config, "_name_or_path", "") or mt,
            hf_model_type=mt,
        )

    @classmethod
    def _from_xlstm(cls, hf_config: Any) -> "HybridConfig":
        """``xLSTMConfig`` (HF ``modeling_xlstm``, its native PyTorch backend): every block is "mlstm"
        (``xLSTMBlock``: resid += mLSTM(norm_mlstm(resid)); resid += FFN(norm_ffn(resid)), RMSNorms with eps
        ``norm_eps``), then ``out_norm`` and ``lm_head``, whose logits are soft-capped at ``output_logit_soft_cap``
        (logits_soft_cap). Read: ``hidden_size`` (= ``embedding_dim``), ``num_hidden_layers`` (= ``num_blocks``),
        ``vocab_size``; the mLSTM (hooks/mlstm.py ``MLSTMConfig``): ``num_heads``, ``qk_dim_factor`` /
        ``v_dim_factor`` (widths int(hidden_size · factor), as ``xLSTMLayer`` builds them), ``gate_soft_cap``, ``eps``
        (the normaliser's), ``norm_eps`` (the multi-head LayerNorm's too), ``chunk_size``; the FFN: SwiGLU
        (proj_down(SiLU(proj_up_gate(x)) · proj_up(x)): a gated MLP) of width round_up(hidden_size ·
        ``ffn_proj_factor``, ``ffn_round_up_to_multiple_of``); ``weight_mode`` ("fused" checkpoints are split on
        loading, hooks/loading.py); token ids. Embeddings are never tied: ``xLSTMForCausalLM`` declares no tied
        weights, so its ``lm_head`` stays its own whatever ``tie_word_embeddings`` says. Refused: ``use_bias`` True
        (the block RMSNorms would carry biases). Not read (no effect on the values of HF's native forward): ``mode`` /
        ``chunkwise_kernel`` / ``sequence_kernel`` / ``step_kernel`` / ``max_inference_chunksize`` /
        ``return_last_states`` (other schedules of the same recurrence: chunkwise, then recurrent steps for the
        rest), ``autocast_kernel_dtype`` (unused by the native kernels), ``inference_state_dtype`` (the state is
        float32 here), ``norm_reduction_force_float32`` (norms reduce in float32 here), ``add_out_norm`` (HF's native
        model always applies ``out_norm``), ``use_cache``."""
        from .mlstm import MLSTMConfig

        mt = "xlstm"
        if hf_config.use_bias:
            raise ValueError(f"{mt}: use_bias True is not supported (the block RMSNorms would carry biases)")
        d = int(hf_config.hidden_size or hf_config.embedding_dim)
        n_layers = int(hf_config.num_hidden_layers or hf_config.num_blocks)
        mult = int(hf_config.ffn_round_up_to_multiple_of)
        d_mlp = int(((d * hf_config.ffn_proj_factor + mult - 1) // mult) * mult)  # HF round_up_to_next_multiple_of
        cap = hf_config.gate_soft_cap
        mlstm = MLSTMConfig(
            d_model=d, n_heads=int(hf_config.num_heads), qk_dim=int(d * hf_config.qk_dim_factor),
            v_dim=int(d * hf_config.v_dim_factor), gate_soft_cap=None if cap is None else float(cap),
            eps=float(hf_config.eps), norm_eps=float(hf_config.norm_eps), bias=False,
            chunk_size=int(hf_config.chunk_size),
        )
        eos = hf_config.eos_token_id[0] if isinstance(hf_config.eos_token_id, list) else hf_config.eos_token_id
        logit_cap = hf_config.output_logit_soft_cap
        return cls(
            ssm=None, layer_types=["mlstm"] * n_layers, d_model=d, n_layers=n_layers,
            vocab_size=int(hf_config.vocab_size), n_heads=int(hf_config.num_heads),
            n_key_value_heads=int(hf_config.num_heads), rotary_dim=0, d_mlp=d_mlp, mlp_bias=False, act_fn="silu",
            gated_mlp=True, mlp_sublayer=True, mlstm=mlstm, norm_eps=float(hf_config.norm_eps),
            logits_soft_cap=None if logit_cap is None else float(logit_cap), tie_embeddings=False,
            pad_token_id=hf_config.pad_token_id, bos_token_id=hf_config.bos_token_id, eos_token_id=eos,
            name=getattr(hf_config, "_name_or_path", "") or mt, hf_model_type=mt,
        )
