"""ImageNet ResNet-18 with the official N2UQ recipe (SPEC 5).

Argument: variants and method, e.g. ``:w2a2`` (default), ``:w3a3``, ``:fp``,
``:w2a2,dorefa``, ``:fp,w2a2``, ``:w2a2,fp_downsample`` (N2UQ*).
Set ``--config.init_checkpoint`` (an FP run of resnet18_fp, or torchvision weights as
``torchvision:FILE.pth``) and ``--config.teacher_checkpoint`` (a resnet101_fp checkpoint,
or ``torchvision:FILE.pth``); prepare imagenet2012 for tfds in ``--config.data.data_dir``::

  python train.py --config=configs/imagenet_resnet18.py:w2a2 --workdir=runs/resnet18_w2a2 \\
      --config.data.data_dir=/data/tfds \\
      --config.init_checkpoint=runs/resnet18_fp --config.teacher_checkpoint=runs/r101_fp

The official recipe starts from torchvision's ImageNet weights (``pip install -e .[torch]``;
``resnet18-f37072fd.pth`` and ``resnet101-63fe2227.pth`` are torchvision's files)::

  python train.py --config=configs/imagenet_resnet18.py:w2a2 --workdir=runs/resnet18_w2a2_tv \\
      --config.data.data_dir=/data/tfds \\
      --config.init_checkpoint=torchvision:resnet18-f37072fd.pth \\
      --config.teacher_checkpoint=torchvision:resnet101-63fe2227.pth
"""

from n2uq_jax.train import config_lib


def get_config(arg: str = 'w2a2'):
  return config_lib.imagenet_config('resnet18', 'resnet18_fp', arg)
