"""CIFAR-10 ResNet-20 (tfds ``cifar10``; prepare it first).

Argument: variants and method, e.g. ``:w2a2`` (default, needs ``--config.init_checkpoint``
and ``--config.teacher_checkpoint``, or ``--config.loss=ce``), ``:fp,w2a2`` (FP first,
then W2A2 initialised from and distilled from it), ``:w2a2,lsq``.
"""

from n2uq_jax.train import config_lib


def get_config(arg: str = 'w2a2'):
  return config_lib.cifar10_config(arg)
