"""interp: mechanistic interpretability for state-space models and transformers.

    import interp
    model = interp.load("tokfsm-mamba")            # embedded, or a folder / hub id / HF model
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("ssm.hook_dt"))
"""

from . import zoo  # the embedded models: interp.zoo.list_models() right after import interp
from .loading import load

__version__ = "0.1.0"
__all__ = ["load", "zoo"]
