"""Small models: CIFAR ResNet-20 (N2UQ form and full-precision twin) and the
tiny CNN for the embedded 8x8 digits data set.

CIFAR ResNet-20 (He et al. 2016, section 4.2), with 1x1 conv + BN projection
shortcuts: FP 3x3 stem conv ``conv1`` (16 channels) -> ``bn1`` -> ReLU, then
``layer1``..``layer3`` of three basic blocks at 16, 32, 64 channels (stride 2
at the first block of ``layer2`` and ``layer3``), global average pool, FP
``fc``. The N2UQ form uses :class:`~n2uq_jax.models.resnet.N2UQBasicBlock`
(names and quantizer lookup as in the ImageNet ResNets), the twin
:class:`~n2uq_jax.models.resnet.BasicBlock`.

``SmallCNN``: FP 3x3 stem ``conv1`` -> ``bn1`` -> ReLU, then ``layer1``, a list
of two N2UQ-style blocks (``rprelu`` -> quantized 3x3 ``conv`` -> ``bn``; the
second with stride 2), ``rprelu_out``, global average pool and FP ``fc``. The
quantized convs are named ``layer1.0.conv`` and ``layer1.1.conv``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import nn
from n2uq_jax.models.common import batch_norm, classifier, global_avg_pool, resolve_policy
from n2uq_jax.models.resnet import make_stages


class CifarResNet(nnx.Module):
  """ResNet-(6n+2) for 32x32 inputs; ``depth_per_stage=3`` is ResNet-20.

  ``block`` is ``N2UQBasicBlock`` (quantized per ``policy``; ``None`` = full
  precision) or ``BasicBlock`` (the twin, which ignores ``policy``).
  """

  def __init__(self, block, depth_per_stage: int = 3, *, num_classes: int = 10,
               policy: nn.QuantPolicy | None = None, quantize_downsample: bool = True,
               in_channels: int = 3, dtype=None, rngs: nnx.Rngs):
    policy = resolve_policy(policy)
    self.conv1 = nn.QuantConv(in_channels, 16, 3, padding=1, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(16, dtype=dtype, rngs=rngs)
    stages, features = make_stages(block, 16, (16, 32, 64), (depth_per_stage,) * 3, (1, 2, 2),
                                   policy=policy, quantize_downsample=quantize_downsample,
                                   dtype=dtype, rngs=rngs)
    self.layer1, self.layer2, self.layer3 = stages
    self.fc = classifier(features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    for stage in (self.layer1, self.layer2, self.layer3):
      for block in stage:
        x = block(x)
    return self.fc(global_avg_pool(x)).astype(jnp.float32)


class PreActConvBN(nnx.Module):
  """RPReLU -> (input quantizer ->) quantized 3x3 conv -> BN."""

  def __init__(self, in_features: int, out_features: int, stride: int = 1, *,
               spec: nn.QuantSpec, dtype=None, rngs: nnx.Rngs):
    self.rprelu = nn.RPReLU(in_features)
    self.conv = nn.QuantConv(in_features, out_features, 3, strides=stride, padding=1,
                             spec=spec, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(self.rprelu(x)))


class SmallCNN(nnx.Module):
  """Tiny N2UQ-style CNN for 8x8 grey digits (any input size works).

  Input ``(N, H, W, in_channels)``; output float32 logits ``(N, num_classes)``.
  """

  def __init__(self, *, num_classes: int = 10, policy: nn.QuantPolicy | None = None,
               in_channels: int = 1, width: int = 32, dtype=None, rngs: nnx.Rngs):
    policy = resolve_policy(policy)
    self.conv1 = nn.QuantConv(in_channels, width, 3, padding=1, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(width, dtype=dtype, rngs=rngs)
    self.layer1 = nnx.List([
        PreActConvBN(width, width, 1, spec=policy.for_layer('layer1.0.conv'), dtype=dtype,
                     rngs=rngs),
        PreActConvBN(width, 2 * width, 2, spec=policy.for_layer('layer1.1.conv'),
                     dtype=dtype, rngs=rngs),
    ])
    self.rprelu_out = nn.RPReLU(2 * width)
    self.fc = classifier(2 * width, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    for block in self.layer1:
      x = block(x)
    x = self.rprelu_out(x)
    return self.fc(global_avg_pool(x)).astype(jnp.float32)
