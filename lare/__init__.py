"""LARE: Latent Augmentation using Regional Embedding.

The package is four rooms over a small base (docs/library.md draws the layers):

- :mod:`lare.core`: the method (encoders, Eq. (1)-(5), f_Box and sampling, probe, LADS, training);
- :mod:`lare.data`: datasets, the synthetic world, bring-your-own embeddings, cache, splits;
- :mod:`lare.compare`: the method registry, the equal-budget search, results and tables;
- :mod:`lare.pipeline`: parameters, preflight, the notebooks' steps, figures, the orchestrator;

and the base, :mod:`lare.utils` (seeds, atomic writes, hashing) and :mod:`lare.provenance` (code
fingerprints, git commit, versions). Imports only go down: pipeline, compare, data, core, base.
"""

__version__ = "0.1.0"
