"""ResNets: the N2UQ variants (SPEC 4.1-4.4) and their full-precision twins.

N2UQ blocks use the pre-activation order RPReLU -> activation quantizer ->
quantized conv -> BN; the quantizer is the ``input_quantizer`` of each
:class:`~n2uq_jax.nn.QuantConv`, built from ``policy.for_layer(<dotted name>)``.
An RPReLU (``rprelu_out``) follows every residual addition. The stem (conv 7x7/2,
BN, ReLU, max-pool 3x3/2), the global average pool and the classifier ``fc``
stay full precision. The twins are the standard ResNets (v1.5: stride on the
3x3 conv of the bottleneck) with plain ReLUs.

Attribute names follow torchvision so that a twin's parameters transfer by
path (:func:`~n2uq_jax.models.transfer_params`): ``conv1``, ``bn1``,
``layer1``..``layer4`` (``nnx.List`` of blocks), inside a block ``conv1``,
``bn1``, ``conv2``, ``bn2`` (``conv3``, ``bn3``) and the shortcut
``downsample.conv`` / ``downsample.bn``, classifier ``fc``. The N2UQ-only
modules are ``rprelu1``, ``rprelu2`` (``rprelu3``) before the block's convs and
``rprelu_out`` after the addition.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import nn
from n2uq_jax.models.common import (Downsample, batch_norm, classifier, global_avg_pool,
                                    max_pool_3x3_s2, resolve_policy)


def _needs_downsample(in_features: int, out_features: int, stride: int) -> bool:
  return stride != 1 or in_features != out_features


def _downsample_spec(policy: nn.QuantPolicy, name: str, quantize_downsample: bool) -> nn.QuantSpec:
  if not quantize_downsample:
    return nn.FULL_PRECISION
  return policy.for_layer(f'{name}.downsample.conv')


class N2UQBasicBlock(nnx.Module):
  """SPEC 4.3: two pre-activated quantized 3x3 convs and a post-add RPReLU.

  ``name`` is the block's dotted name (``"layer2.0"``), used to look up the
  specs of ``conv1``, ``conv2`` and ``downsample.conv`` in ``policy``.
  """
  expansion = 1

  def __init__(self, in_features: int, planes: int, stride: int = 1, *, name: str,
               policy: nn.QuantPolicy, quantize_downsample: bool = True, dtype=None,
               rngs: nnx.Rngs):
    out_features = planes * self.expansion
    self.rprelu1 = nn.RPReLU(in_features)
    self.conv1 = nn.QuantConv(in_features, planes, 3, strides=stride, padding=1,
                              spec=policy.for_layer(f'{name}.conv1'), dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.rprelu2 = nn.RPReLU(planes)
    self.conv2 = nn.QuantConv(planes, planes, 3, padding=1,
                              spec=policy.for_layer(f'{name}.conv2'), dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.downsample = (
        Downsample(in_features, out_features, stride,
                   spec=_downsample_spec(policy, name, quantize_downsample), dtype=dtype,
                   rngs=rngs)
        if _needs_downsample(in_features, out_features, stride) else None)
    self.rprelu_out = nn.RPReLU(out_features)

  def __call__(self, x: jax.Array) -> jax.Array:
    t = self.bn1(self.conv1(self.rprelu1(x)))
    t = self.bn2(self.conv2(self.rprelu2(t)))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.rprelu_out(t + shortcut)


class N2UQBottleneck(nnx.Module):
  """SPEC 4.4: pre-activated quantized 1x1 -> 3x3 (stride) -> 1x1 (x4) convs and
  a post-add RPReLU."""
  expansion = 4

  def __init__(self, in_features: int, planes: int, stride: int = 1, *, name: str,
               policy: nn.QuantPolicy, quantize_downsample: bool = True, dtype=None,
               rngs: nnx.Rngs):
    out_features = planes * self.expansion
    self.rprelu1 = nn.RPReLU(in_features)
    self.conv1 = nn.QuantConv(in_features, planes, 1, padding=0,
                              spec=policy.for_layer(f'{name}.conv1'), dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.rprelu2 = nn.RPReLU(planes)
    self.conv2 = nn.QuantConv(planes, planes, 3, strides=stride, padding=1,
                              spec=policy.for_layer(f'{name}.conv2'), dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.rprelu3 = nn.RPReLU(planes)
    self.conv3 = nn.QuantConv(planes, out_features, 1, padding=0,
                              spec=policy.for_layer(f'{name}.conv3'), dtype=dtype, rngs=rngs)
    self.bn3 = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.downsample = (
        Downsample(in_features, out_features, stride,
                   spec=_downsample_spec(policy, name, quantize_downsample), dtype=dtype,
                   rngs=rngs)
        if _needs_downsample(in_features, out_features, stride) else None)
    self.rprelu_out = nn.RPReLU(out_features)

  def __call__(self, x: jax.Array) -> jax.Array:
    t = self.bn1(self.conv1(self.rprelu1(x)))
    t = self.bn2(self.conv2(self.rprelu2(t)))
    t = self.bn3(self.conv3(self.rprelu3(t)))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.rprelu_out(t + shortcut)


class BasicBlock(nnx.Module):
  """Full-precision ResNet basic block: conv-BN-ReLU-conv-BN, add, ReLU."""
  expansion = 1

  def __init__(self, in_features: int, planes: int, stride: int = 1, *, dtype=None,
               rngs: nnx.Rngs):
    out_features = planes * self.expansion
    self.conv1 = nn.QuantConv(in_features, planes, 3, strides=stride, padding=1,
                              dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv2 = nn.QuantConv(planes, planes, 3, padding=1, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.downsample = (
        Downsample(in_features, out_features, stride, dtype=dtype, rngs=rngs)
        if _needs_downsample(in_features, out_features, stride) else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    t = jax.nn.relu(self.bn1(self.conv1(x)))
    t = self.bn2(self.conv2(t))
    shortcut = x if self.downsample is None else self.downsample(x)
    return jax.nn.relu(t + shortcut)


class Bottleneck(nnx.Module):
  """Full-precision ResNet v1.5 bottleneck (stride on the 3x3 conv)."""
  expansion = 4

  def __init__(self, in_features: int, planes: int, stride: int = 1, *, dtype=None,
               rngs: nnx.Rngs):
    out_features = planes * self.expansion
    self.conv1 = nn.QuantConv(in_features, planes, 1, padding=0, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv2 = nn.QuantConv(planes, planes, 3, strides=stride, padding=1, dtype=dtype,
                              rngs=rngs)
    self.bn2 = batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv3 = nn.QuantConv(planes, out_features, 1, padding=0, dtype=dtype, rngs=rngs)
    self.bn3 = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.downsample = (
        Downsample(in_features, out_features, stride, dtype=dtype, rngs=rngs)
        if _needs_downsample(in_features, out_features, stride) else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    t = jax.nn.relu(self.bn1(self.conv1(x)))
    t = jax.nn.relu(self.bn2(self.conv2(t)))
    t = self.bn3(self.conv3(t))
    shortcut = x if self.downsample is None else self.downsample(x)
    return jax.nn.relu(t + shortcut)


N2UQ_BLOCKS = (N2UQBasicBlock, N2UQBottleneck)


def make_stages(block, in_features: int, widths: Sequence[int], depths: Sequence[int],
                strides: Sequence[int], *, policy: nn.QuantPolicy, quantize_downsample: bool,
                dtype, rngs: nnx.Rngs) -> tuple[list[nnx.List], int]:
  """Builds ``layer1``, ``layer2``, ... as ``nnx.List``s of ``block``; returns
  them and the channel count of the last one."""
  stages = []
  for index, (width, depth, stride) in enumerate(zip(widths, depths, strides), start=1):
    blocks = []
    for position in range(depth):
      kwargs = {}
      if block in N2UQ_BLOCKS:
        kwargs = dict(name=f'layer{index}.{position}', policy=policy,
                      quantize_downsample=quantize_downsample)
      blocks.append(block(in_features, width, stride if position == 0 else 1, dtype=dtype,
                          rngs=rngs, **kwargs))
      in_features = width * block.expansion
    stages.append(nnx.List(blocks))
  return stages, in_features


class ResNet(nnx.Module):
  """ImageNet ResNet: FP stem, four stages of ``block``, FP pool and ``fc``.

  ``block`` is :class:`N2UQBasicBlock` / :class:`N2UQBottleneck` (the N2UQ
  models, quantized per ``policy``; ``None`` means full precision) or
  :class:`BasicBlock` / :class:`Bottleneck` (the full-precision twins, which
  ignore ``policy`` and ``quantize_downsample``).

  Input ``(N, H, W, in_channels)``; output float32 logits ``(N, num_classes)``.
  """

  def __init__(self, block, depths: Sequence[int], *, num_classes: int = 1000,
               policy: nn.QuantPolicy | None = None, quantize_downsample: bool = True,
               in_channels: int = 3, dtype=None, rngs: nnx.Rngs):
    policy = resolve_policy(policy)
    self.conv1 = nn.QuantConv(in_channels, 64, 7, strides=2, padding=3, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(64, dtype=dtype, rngs=rngs)
    stages, features = make_stages(block, 64, (64, 128, 256, 512), depths, (1, 2, 2, 2),
                                   policy=policy, quantize_downsample=quantize_downsample,
                                   dtype=dtype, rngs=rngs)
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.fc = classifier(features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
    return self.fc(global_avg_pool(x)).astype(jnp.float32)
