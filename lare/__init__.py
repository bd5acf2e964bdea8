"""LARE: Latent Augmentation using Regional Embedding.

The package holds every piece of logic the notebooks call:

- :mod:`lare.encoders`: open_clip models (by name, config path or tiny test config), image and
  class-prompt encoding.
- :mod:`lare.cache`: the embedding store (safetensors + JSON manifest, keyed, chunked, resumable).
- :mod:`lare.losses`: Eq. (1)-(5) of the paper.
- :mod:`lare.box`: f_Box, box sampling and step 1 training.
- :mod:`lare.lads`: the LADS baseline augmenter.
- :mod:`lare.probe`: zero-shot classification, linear probes (step 2) and metrics.
- :mod:`lare.synthetic`: the built-in synthetic embedding dataset with a controlled domain shift.
"""

__version__ = "0.1.0"
