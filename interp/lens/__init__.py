"""Logit lens, tuned lens and direct logit attribution: each layer's residual stream read through the final norm
and the unembedding (as it is, or through a learned per-layer translator), and each component's direct share of one
prediction's logit. One job per module:

* :mod:`interp.lens.logit`: the logit lens (``logit_lens`` → ``LogitLens``, ``logit_lens_figure``, windows) and
  the read-out every lens shares (``resid_logits``: ``model.unembed(model.ln_final(resid))``);
* :mod:`interp.lens.tuned`: the tuned lens (``TunedLensConfig``, ``train_tuned_lens`` → ``TunedLens``,
  ``tuned_lens`` → ``LogitLens``, ``lens_kl``);
* :mod:`interp.lens.attribution`: direct logit attribution (``direct_logit_attribution`` → ``LogitAttribution``,
  ``logit_attribution_figure``).

    from interp.lens import logit_lens, logit_lens_figure, train_tuned_lens, tuned_lens, TunedLensConfig
    lens = logit_lens(model, tokens)                                            # [n_layers, P] arrays
    tl = train_tuned_lens(model, corpus, cfg=TunedLensConfig(steps=200), out_dir="runs/lens/x")
    fig = logit_lens_figure(tuned_lens(model, tokens, lens=tl), model.to_str_tokens(tokens[0]), vocab)
    dla = direct_logit_attribution(model, tokens, answer=7, wrong=3)     # Σ values + bias = target
"""

from interp.lens import attribution, logit, tuned
from interp.lens.attribution import *  # noqa: F403
from interp.lens.logit import *  # noqa: F403
from interp.lens.tuned import *  # noqa: F403

__all__ = [*logit.__all__, *tuned.__all__, *attribution.__all__]
