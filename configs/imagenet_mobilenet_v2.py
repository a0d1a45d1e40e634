"""ImageNet MobileNetV2 (W4A4 in the paper; the last 1x1 conv uses the PACT
variant of SPEC 4.5) with the official N2UQ recipe (SPEC 5).

Argument: variants and method, e.g. ``:w4a4`` (default), ``:w3a3``, ``:fp``,
``:w2a2,dorefa``, ``:fp,w4a4``.
Set ``--config.init_checkpoint`` (an FP run of mobilenet_v2_fp) and
``--config.teacher_checkpoint`` (a resnet101_fp checkpoint); prepare imagenet2012 for tfds
in ``--config.data.data_dir``::

  python train.py --config=configs/imagenet_mobilenet_v2.py:w4a4 --workdir=runs/mobilenet_v2_w4a4 \\
      --config.data.data_dir=/data/tfds \\
      --config.init_checkpoint=runs/mobilenet_v2_fp --config.teacher_checkpoint=runs/r101_fp
"""

from n2uq_jax.train import config_lib


def get_config(arg: str = 'w4a4'):
  return config_lib.imagenet_config('mobilenet_v2', 'mobilenet_v2_fp', arg)
