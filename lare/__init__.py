"""LARE: Latent Augmentation using Regional Embedding.

The package holds every piece of logic the notebooks call (docs/library.md, "What is in `lare/`", has
the full table). The method: :mod:`lare.losses` (Eq. (1)-(5)), :mod:`lare.box` (f_Box, step 1,
and the box sampling of step 2), :mod:`lare.probe` (the linear probe), :mod:`lare.methods` (the
method registry: zero-shot, linear probe, LADS, LARE, the L-BFGS reference). The comparison:
:mod:`lare.params` (one parameter schema), :mod:`lare.hparams` and :mod:`lare.search` (the
equal-budget search), :mod:`lare.experiment` (units x methods). The data: :mod:`lare.encoders`,
:mod:`lare.cache`, :mod:`lare.extraction`, :mod:`lare.sources`, :mod:`lare.synthetic`.
"""

__version__ = "0.1.0"
