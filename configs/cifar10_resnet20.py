"""CIFAR-10 ResNet-20: the tfds ``cifar10`` dataset, or JPEG folders.

Argument: variants and method, e.g. ``:w2a2`` (default, needs ``--config.init_checkpoint``
and ``--config.teacher_checkpoint``, or ``--config.loss=ce``), ``:fp,w2a2`` (FP first,
then W2A2 initialised from and distilled from it), ``:w2a2,lsq``.

From JPEG folders ``/data/cifar10/train/<class>/<image>.jpg``, evaluating on a fixed
10% of them::

  python train.py --config=configs/cifar10_resnet20.py:fp,w2a2 --config.data.source=folder \\
      --config.data.data_dir=/data/cifar10 --config.data.validation_fraction=0.1

From tfds (``tfds build cifar10 --data_dir=/data/tfds --file_format=array_record``)::

  python train.py --config=configs/cifar10_resnet20.py:fp,w2a2 --config.data.data_dir=/data/tfds
"""

from n2uq_jax.train import config_lib


def get_config(arg: str = 'w2a2'):
  return config_lib.cifar10_config(arg)
