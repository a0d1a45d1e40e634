"""MobileNetV2: the N2UQ variant (SPEC 4.5) and the full-precision twin.

Layout and names (both models, torchvision-like ``features`` list)::

  features.0       ConvBNAct: FP 3x3 conv (stride 2, 3 -> 32) ``conv``, ``bn``, ReLU6
  features.1..17   inverted-residual blocks
  features.18      ConvBNAct: 1x1 conv 320 -> 1280 ``conv``, ``bn``, ReLU6
  (global average pool)
  classifier       FP linear 1280 -> num_classes (torchvision's ``classifier.1``;
                   its dropout has no parameters and is omitted)

An inverted-residual block has ``conv1``/``bn1`` (1x1 expansion), ``conv2``/
``bn2`` (3x3 depthwise, the block's stride) and ``conv3``/``bn3`` (1x1 linear
projection), and adds its input when the stride is 1 and the channel count is
unchanged. In the N2UQ model each conv is preceded by an RPReLU (``rprelu1``,
``rprelu2``, ``rprelu3``) and quantized with the spec
``policy.for_layer("features.<i>.conv<j>")``, its activation quantizer being
the conv's ``input_quantizer``; there is no activation after ``bn3`` and no
RPReLU after the addition. Block 1 keeps a 32 -> 32 expansion conv (SPEC 4.5);
in the twin, as in torchvision, block 1 has no expansion (``conv1 is None``)
and ReLU6 follows ``bn1`` and ``bn2``.

The N2UQ ``features.18.conv`` is quantized per ``policy.for_layer
("features.18.conv")``, except that an ``'n2uq'`` activation quantizer there
is replaced by the PACT variant ``'pact_n2uq_mbv2'`` of the same bit-width
(clip alpha initialised to 2.0; SPEC 4.5). With W4A4 (the paper's only
setting) the model has 51 N2UQ activation quantizers, one PACT quantizer and
52 quantized convs. The stem conv and ``classifier`` are always full precision.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import nn
from n2uq_jax.models.common import batch_norm, classifier, global_avg_pool, resolve_policy

STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
"""(expansion t, output channels c, blocks n, first stride s) per stage."""
NUM_BLOCKS = sum(count for _, _, count, _ in STAGES)
"""17 inverted-residual blocks, ``features.1`` .. ``features.17``."""
LAST_CONV_NAME = f'features.{NUM_BLOCKS + 1}.conv'
STEM_FEATURES = 32
LAST_FEATURES = 1280

classifier_init = nnx.initializers.normal(0.01)
"""torchvision's MobileNetV2 classifier initialisation."""


def relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0, 6)


class ConvBNAct(nnx.Module):
  """conv -> BN -> ReLU6 (``features.0`` and ``features.18``)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int = 1, *,
               spec: nn.QuantSpec = nn.FULL_PRECISION, dtype=None, rngs: nnx.Rngs):
    self.conv = nn.QuantConv(in_features, out_features, kernel_size, strides=stride,
                             padding=(kernel_size - 1) // 2, spec=spec, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return relu6(self.bn(self.conv(x)))


class N2UQInvertedResidual(nnx.Module):
  """SPEC 4.5 block: [RPReLU -> quantizer -> QConv -> BN] for the 1x1 expansion,
  the 3x3 depthwise and the 1x1 projection, plus the identity when shapes allow.
  ``name`` is the block's dotted name (``"features.3"``)."""

  def __init__(self, in_features: int, out_features: int, stride: int, expansion: int, *,
               name: str, policy: nn.QuantPolicy, dtype=None, rngs: nnx.Rngs):
    hidden = in_features * expansion
    self.use_residual = stride == 1 and in_features == out_features
    self.rprelu1 = nn.RPReLU(in_features)
    self.conv1 = nn.QuantConv(in_features, hidden, 1, spec=policy.for_layer(f'{name}.conv1'),
                              dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(hidden, dtype=dtype, rngs=rngs)
    self.rprelu2 = nn.RPReLU(hidden)
    self.conv2 = nn.QuantConv(hidden, hidden, 3, strides=stride, padding=1,
                              feature_group_count=hidden,
                              spec=policy.for_layer(f'{name}.conv2'), dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(hidden, dtype=dtype, rngs=rngs)
    self.rprelu3 = nn.RPReLU(hidden)
    self.conv3 = nn.QuantConv(hidden, out_features, 1, spec=policy.for_layer(f'{name}.conv3'),
                              dtype=dtype, rngs=rngs)
    self.bn3 = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    t = self.bn1(self.conv1(self.rprelu1(x)))
    t = self.bn2(self.conv2(self.rprelu2(t)))
    t = self.bn3(self.conv3(self.rprelu3(t)))
    return x + t if self.use_residual else t


class InvertedResidual(nnx.Module):
  """Full-precision (torchvision) block: [1x1 expansion -> BN -> ReLU6] unless
  ``expansion == 1``, 3x3 depthwise -> BN -> ReLU6, 1x1 projection -> BN."""

  def __init__(self, in_features: int, out_features: int, stride: int, expansion: int, *,
               dtype=None, rngs: nnx.Rngs):
    hidden = in_features * expansion
    self.use_residual = stride == 1 and in_features == out_features
    expand = expansion != 1
    self.conv1 = nn.QuantConv(in_features, hidden, 1, dtype=dtype, rngs=rngs) if expand else None
    self.bn1 = batch_norm(hidden, dtype=dtype, rngs=rngs) if expand else None
    self.conv2 = nn.QuantConv(hidden, hidden, 3, strides=stride, padding=1,
                              feature_group_count=hidden, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(hidden, dtype=dtype, rngs=rngs)
    self.conv3 = nn.QuantConv(hidden, out_features, 1, dtype=dtype, rngs=rngs)
    self.bn3 = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    t = x if self.conv1 is None else relu6(self.bn1(self.conv1(x)))
    t = relu6(self.bn2(self.conv2(t)))
    t = self.bn3(self.conv3(t))
    return x + t if self.use_residual else t


def last_conv_spec(policy: nn.QuantPolicy) -> nn.QuantSpec:
  """The spec of ``features.18.conv``: the policy's, with an ``'n2uq'``
  activation quantizer swapped for ``'pact_n2uq_mbv2'`` (SPEC 4.5)."""
  spec = policy.for_layer(LAST_CONV_NAME)
  if spec.activation == 'n2uq':
    spec = dataclasses.replace(spec, activation='pact_n2uq_mbv2')
  return spec


class MobileNetV2(nnx.Module):
  """MobileNetV2 (width 1.0). ``quantized=True`` builds the N2UQ model with
  ``policy`` (``None`` = full precision, same architecture); ``quantized=False``
  the torchvision twin, which takes no policy.

  Input ``(N, H, W, in_channels)``; output float32 logits ``(N, num_classes)``.
  """

  def __init__(self, *, quantized: bool, num_classes: int = 1000,
               policy: nn.QuantPolicy | None = None, in_channels: int = 3, dtype=None,
               rngs: nnx.Rngs):
    policy = resolve_policy(policy)
    layers = [ConvBNAct(in_channels, STEM_FEATURES, 3, 2, dtype=dtype, rngs=rngs)]
    in_features = STEM_FEATURES
    for expansion, out_features, count, first_stride in STAGES:
      for position in range(count):
        stride = first_stride if position == 0 else 1
        if quantized:
          block = N2UQInvertedResidual(in_features, out_features, stride, expansion,
                                       name=f'features.{len(layers)}', policy=policy,
                                       dtype=dtype, rngs=rngs)
        else:
          block = InvertedResidual(in_features, out_features, stride, expansion, dtype=dtype,
                                   rngs=rngs)
        layers.append(block)
        in_features = out_features
    last_spec = last_conv_spec(policy) if quantized else nn.FULL_PRECISION
    layers.append(ConvBNAct(in_features, LAST_FEATURES, 1, spec=last_spec, dtype=dtype,
                            rngs=rngs))
    self.features = nnx.List(layers)
    self.classifier = classifier(LAST_FEATURES, num_classes, dtype=dtype,
                                 kernel_init=classifier_init, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.features:
      x = layer(x)
    return self.classifier(global_avg_pool(x)).astype(jnp.float32)
