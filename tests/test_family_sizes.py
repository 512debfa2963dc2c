"""The model-size guard (hooks/loading.py ``estimate_parameters``, read before anything is allocated) is an upper
estimate for every hybrid and gated-linear-RNN family: at least the parameters Hugging Face's model of the same config.json has, experts
and shared blocks included, and not wildly above them (so the guard neither lets a huge MoE through nor refuses a
small model)."""

from __future__ import annotations

import pytest

from interp.hooks.loading import estimate_parameters
from test_bamba import make_hf_bamba
from test_falcon_h1 import make_hf_falcon_h1
from test_granite_hybrid import make_hf_granite
from test_jamba import make_hf_jamba
from test_nemotron_h import make_hf_nemotron_h
from test_zamba2 import make_hf_zamba2

BUILDERS = {"bamba": make_hf_bamba, "granite": make_hf_granite, "jamba": make_hf_jamba,
            "nemotron_h": make_hf_nemotron_h, "zamba2": make_hf_zamba2,
            "falcon_h1": make_hf_falcon_h1}
KINDS = {"bamba": "bamba", "granite": "granite-moe", "jamba": "jamba", "nemotron_h": "nemotron_h", "zamba2": "two-blocks", "falcon_h1": "fh1-before"}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_size_estimate_bounds_the_real_count(family):
    hf = BUILDERS[family](KINDS[family])
    true = sum(p.numel() for p in hf.parameters())
    estimate = estimate_parameters(hf.config.to_dict())
    assert true <= estimate <= 4 * true, f"{family}: estimate {estimate}, real {true}"


#: Hugging Face's default configs of the gated-linear-RNN families (billions of parameters: built on the meta device,
#: nothing allocated), and RWKV-4 at its 169M shape
DEFAULT_CONFIGS = {"rwkv": ("RwkvConfig", "RwkvForCausalLM", dict(vocab_size=50277, hidden_size=768,
                                                                  num_hidden_layers=12)),
                   "recurrent_gemma": ("RecurrentGemmaConfig", "RecurrentGemmaForCausalLM", {}),
                   "xlstm": ("xLSTMConfig", "xLSTMForCausalLM", dict(hidden_size=512, num_hidden_layers=4)),
                   "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", dict(num_hidden_layers=4)),
                   "kimi_linear": ("KimiLinearConfig", "KimiLinearForCausalLM", dict(num_hidden_layers=4))}


@pytest.mark.parametrize("family", list(DEFAULT_CONFIGS))
def test_size_estimate_bounds_the_real_count_at_real_shapes(family):
    import torch
    import transformers

    config_name, model_name, fields = DEFAULT_CONFIGS[family]
    cfg = getattr(transformers, config_name)(**fields)
    with torch.device("meta"):
        hf = getattr(transformers, model_name)(cfg)
    true = sum(p.numel() for p in hf.parameters())
    estimate = estimate_parameters(cfg.to_dict())
    assert true <= estimate <= 4 * true, f"{family}: estimate {estimate}, real {true}"
