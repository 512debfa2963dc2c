"""Shared fixtures: tiny random Hugging Face checkpoints written to disk, loaded back offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

SSM_CONFIGS = {
    "mamba1": dict(vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
    "mamba2-g1": dict(vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, head_dim=16,
                      num_heads=4, n_groups=1, chunk_size=8),
    "mamba2-g2": dict(vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, head_dim=16,
                      num_heads=4, n_groups=2, chunk_size=8),
}
#: FalconMamba variants for make_hf_ssm (not in the shared ``ssm_kind`` fixture; tests/test_falcon_mamba.py uses
#: them): the defaults (tied embeddings), and untied embeddings with projection biases, a large mixer eps and
#: residuals in the model dtype
FALCON_MAMBA_CONFIGS = {
    "falcon_mamba": dict(vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
    "falcon_mamba-untied": dict(vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
                                conv_kernel=3, time_step_rank=5, tie_word_embeddings=False, use_bias=True,
                                mixer_rms_eps=1e-2, residual_in_fp32=False),
}


def make_hf_ssm(kind: str, seed: int = 0):
    """A random tiny MambaForCausalLM / Mamba2ForCausalLM / FalconMambaForCausalLM with non-trivial D, dt bias,
    norms (``kind``: a key of SSM_CONFIGS or FALCON_MAMBA_CONFIGS)."""
    from transformers import (
        FalconMambaConfig, FalconMambaForCausalLM, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM,
    )

    torch.manual_seed(seed)
    if kind in FALCON_MAMBA_CONFIGS:
        model = FalconMambaForCausalLM(FalconMambaConfig(**FALCON_MAMBA_CONFIGS[kind]))
    elif kind == "mamba1":
        model = MambaForCausalLM(MambaConfig(**SSM_CONFIGS[kind]))
    else:
        model = Mamba2ForCausalLM(Mamba2Config(**SSM_CONFIGS[kind]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("mixer.D", "conv1d.bias", "proj.bias")) and not name.endswith("dt_proj.bias"):
                p.normal_(0, 0.5)
            elif name.endswith("norm.weight"):
                p.normal_(1, 0.2)
            elif name.endswith("out_proj.weight"):
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(params=list(SSM_CONFIGS))
def ssm_kind(request) -> str:
    return request.param


@pytest.fixture
def hf_ssm(ssm_kind):
    return make_hf_ssm(ssm_kind)


@pytest.fixture
def ssm_folder(hf_ssm, tmp_path):
    folder = tmp_path / "ckpt"
    hf_ssm.save_pretrained(folder)
    return folder


@pytest.fixture
def ssm(ssm_folder):
    import interp

    return interp.load(str(ssm_folder))


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small full-batch fits are much faster on one thread than on two busy
    ones); a module opts in for all its tests with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def load_tokfsm(name: str):
    """An embedded TokFSM model in float32; fails (with the command that installs them) if its weights are not
    installed."""
    import interp
    from interp import zoo

    if zoo.embedded_path(name) is None:
        pytest.fail(f"the weights of embedded model {name!r} are not installed (interp/zoo/weights/{name}); "
                    f"install them with `python -m interp.zoo.train {name} --install`, then rerun this test")
    return interp.load(name, dtype=torch.float32)
