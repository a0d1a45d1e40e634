"""Models by name: :func:`create_model` and :func:`available_models`.

N2UQ models (quantized per ``policy``; ``None`` gives the same architecture in
full precision): ``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v2``,
``cifar_resnet20``, ``small_cnn``. The ResNets take ``quantize_downsample``
(default ``True``, SPEC 4.1). A name with the suffix ``:fp`` (``"resnet18:fp"``)
is that model under ``QuantPolicy.full_precision()``.

Full-precision twins laid out like torchvision (no policy): ``resnet18_fp``,
``resnet34_fp``, ``resnet50_fp``, ``resnet101_fp`` (the distillation teacher),
``mobilenet_v2_fp``, ``cifar_resnet20_fp``.

Every model also takes ``in_channels`` (default 3; 1 for ``small_cnn``).
"""

from __future__ import annotations

import functools
from typing import Callable

from flax import nnx

from n2uq_jax import nn
from n2uq_jax.models import cifar, mobilenet_v2, resnet
from n2uq_jax.models.common import is_full_precision_policy

FP_SUFFIX = ':fp'

_N2UQ: dict[str, Callable[..., nnx.Module]] = {
    'resnet18': functools.partial(resnet.ResNet, resnet.N2UQBasicBlock, (2, 2, 2, 2)),
    'resnet34': functools.partial(resnet.ResNet, resnet.N2UQBasicBlock, (3, 4, 6, 3)),
    'resnet50': functools.partial(resnet.ResNet, resnet.N2UQBottleneck, (3, 4, 6, 3)),
    'mobilenet_v2': functools.partial(mobilenet_v2.MobileNetV2, quantized=True),
    'cifar_resnet20': functools.partial(cifar.CifarResNet, resnet.N2UQBasicBlock, 3),
    'small_cnn': cifar.SmallCNN,
}

_FULL_PRECISION: dict[str, Callable[..., nnx.Module]] = {
    'resnet18_fp': functools.partial(resnet.ResNet, resnet.BasicBlock, (2, 2, 2, 2)),
    'resnet34_fp': functools.partial(resnet.ResNet, resnet.BasicBlock, (3, 4, 6, 3)),
    'resnet50_fp': functools.partial(resnet.ResNet, resnet.Bottleneck, (3, 4, 6, 3)),
    'resnet101_fp': functools.partial(resnet.ResNet, resnet.Bottleneck, (3, 4, 23, 3)),
    'mobilenet_v2_fp': functools.partial(mobilenet_v2.MobileNetV2, quantized=False),
    'cifar_resnet20_fp': functools.partial(cifar.CifarResNet, resnet.BasicBlock, 3),
}


def available_models() -> tuple[str, ...]:
  """Every name :func:`create_model` accepts (without the ``:fp`` suffix), sorted."""
  return tuple(sorted((*_N2UQ, *_FULL_PRECISION)))


def create_model(name: str, *, num_classes: int = 1000, policy: nn.QuantPolicy | None = None,
                 rngs: nnx.Rngs, dtype=None, **kwargs) -> nnx.Module:
  """Builds the model called ``name``.

  Args:
    name: one of :func:`available_models`, or an N2UQ model name + ``":fp"``.
    num_classes: size of the classifier output.
    policy: quantizer of every quantized layer by dotted name (N2UQ models);
      ``None`` is full precision. The full-precision twins accept only ``None``
      or a policy that quantizes nothing.
    rngs: initialisation randomness (``rngs.params``).
    dtype: compute dtype of convs, BN and the classifier (``None``: float32
      inputs compute in float32). Quantizers compute in float32; logits are
      float32.
    **kwargs: model options, e.g. ``quantize_downsample`` (ResNets),
      ``in_channels``.

  Returns:
    The model; call it on NHWC float input ``(N, H, W, C)`` to get logits
    ``(N, num_classes)``. It starts in training mode (BatchNorm uses batch
    statistics); ``model.eval()`` / ``model.train()`` switch.

  Raises:
    ValueError: unknown name (the message lists the valid ones), or a
      quantizing policy for a full-precision twin.
  """
  if not isinstance(name, str):
    raise ValueError(f'model name must be a string, got {name!r}')
  base = name[:-len(FP_SUFFIX)] if name.endswith(FP_SUFFIX) else name
  if base in _N2UQ and base != name:
    if not is_full_precision_policy(policy):
      raise ValueError(f'{name!r} is full precision by name but got a quantizing policy')
    policy = nn.QuantPolicy.full_precision()
  if name in _FULL_PRECISION:
    if not is_full_precision_policy(policy):
      raise ValueError(f'{name!r} is a full-precision model and takes no quantization '
                       f'policy; use {name[:-3]!r} for the N2UQ model')
    return _FULL_PRECISION[name](num_classes=num_classes, dtype=dtype, rngs=rngs, **kwargs)
  if base in _N2UQ:
    return _N2UQ[base](num_classes=num_classes, policy=policy, dtype=dtype, rngs=rngs, **kwargs)
  raise ValueError(f'unknown model {name!r}; valid models: {", ".join(available_models())} '
                   f'(N2UQ models also accept the suffix {FP_SUFFIX!r})')
