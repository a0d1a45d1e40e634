"""Embedded digits (8x8 grey): a full-precision small_cnn, then its W2A2 N2UQ version
initialised from it and distilled from it. ``python train.py`` runs this::

  python train.py
  python train.py --config=configs/default.py:fp,w2a2,dorefa --config.num_epochs=10

Argument: variants and method, e.g. ``configs/default.py:fp,w2a2`` (the default),
``:w2a2,dorefa``, ``:fp,w2a2,w4a4`` (see n2uq_jax.train.config_lib).
"""

from n2uq_jax.train import config_lib


def get_config(arg: str = 'fp,w2a2'):
  return config_lib.default_config(arg)
