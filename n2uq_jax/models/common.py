"""Pieces shared by the model families: BatchNorm with the PyTorch conventions,
pooling, the ResNet shortcut, policy handling, and the parameter utilities
:func:`count_params` and :func:`transfer_params`.

Paths: a variable's path is the sequence of attribute names and list indices
from the model root, joined with ``/`` (``"layer1/0/conv1/kernel"``). The dotted
name that a quantized layer passes to :meth:`QuantPolicy.for_layer` is the
layer's path joined with ``.`` (``"layer2.0.downsample.conv"``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import nn

BN_MOMENTUM = 0.9
"""Flax convention for PyTorch's BatchNorm momentum 0.1 (SPEC 5)."""
BN_EPSILON = 1e-5

classifier_init = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
"""``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the PyTorch default for linear layers."""


def batch_norm(num_features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm over the channel (last) axis with PyTorch's defaults: momentum
  0.1 (0.9 in flax convention), epsilon 1e-5, no cross-device reduction. It
  starts in training mode; ``model.eval()`` switches to running averages."""
  return nnx.BatchNorm(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       axis_name=None, dtype=dtype, rngs=rngs)


def resolve_policy(policy: nn.QuantPolicy | None) -> nn.QuantPolicy:
  """``None`` means full precision; anything else must be a ``QuantPolicy``."""
  if policy is None:
    return nn.QuantPolicy.full_precision()
  if not isinstance(policy, nn.QuantPolicy):
    raise ValueError(f'policy must be an n2uq_jax.nn.QuantPolicy or None, got {policy!r}')
  return policy


def is_full_precision_policy(policy: nn.QuantPolicy | None) -> bool:
  """Whether ``policy`` quantizes nothing (its default and every override)."""
  if policy is None:
    return True
  return policy.default.is_full_precision and all(
      spec.is_full_precision for spec in policy.overrides.values())


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 max pooling, stride 2, padding 1 (padded cells never win), NHWC."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """``(N, H, W, C) -> (N, C)``, the mean over the spatial axes."""
  return jnp.mean(x, axis=(1, 2))


def classifier(in_features: int, num_classes: int, *, dtype=None, kernel_init=classifier_init,
               rngs: nnx.Rngs) -> nn.QuantDense:
  """The full-precision classifier every model ends with (SPEC 4.1)."""
  return nn.QuantDense(in_features, num_classes, spec=nn.FULL_PRECISION, use_bias=True,
                       dtype=dtype, kernel_init=kernel_init, rngs=rngs)


class Downsample(nnx.Module):
  """ResNet projection shortcut: 1x1 conv (stride) -> BN.

  ``spec`` decides the conv's quantizers: with an activation quantizer this is
  SPEC 4.1's quantized shortcut (quantizer -> quantized 1x1 conv -> BN, no
  RPReLU before the quantizer); with ``FULL_PRECISION`` the ordinary one. The
  attributes ``conv`` and ``bn`` are the same in the N2UQ models and the
  full-precision twins, so their parameters transfer by path.
  """

  def __init__(self, in_features: int, out_features: int, stride: int, *,
               spec: nn.QuantSpec = nn.FULL_PRECISION, dtype=None, rngs: nnx.Rngs):
    self.conv = nn.QuantConv(in_features, out_features, 1, strides=stride, padding=0,
                             spec=spec, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))


def _path_str(path) -> str:
  return '/'.join(str(part) for part in path)


def _variables(model: nnx.Module, kind) -> dict[str, nnx.Variable]:
  return {_path_str(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, kind)}


def _shape(variable: nnx.Variable) -> tuple[int, ...]:
  return tuple(variable.get_value().shape)


def count_params(model: nnx.Module) -> int:
  """Number of trainable elements: the sizes of every ``nnx.Param`` summed.

  ``QuantizerParam`` (quantizer offsets, intervals, scales, PACT clips)
  subclasses ``nnx.Param`` and is counted; BatchNorm running statistics
  (``nnx.BatchStat``) are not. Works on abstract models from ``nnx.eval_shape``.
  """
  return sum(math.prod(_shape(v)) for v in _variables(model, nnx.Param).values())


def _category(variable: nnx.Variable):
  if isinstance(variable, nn.QuantizerParam):
    return nn.QuantizerParam
  if isinstance(variable, nnx.Param):
    return nnx.Param
  return nnx.BatchStat


def transfer_params(source: nnx.Module, target: nnx.Module) -> list[str]:
  """Copies parameters and BatchNorm statistics from ``source`` into ``target``.

  Every ``nnx.Param`` and ``nnx.BatchStat`` of ``target`` whose path (see the
  module docstring) also exists in ``source``, with the same kind of variable
  (parameter, quantizer parameter, or batch statistic) and the same shape,
  receives a copy of the source value, cast to the target's dtype. Everything
  else keeps its value, so the N2UQ-specific parameters (RPReLU, quantizers)
  of a model initialised from its full-precision twin keep their SPEC 4.6
  initialisation. Both models must be concrete (not from ``nnx.eval_shape``).

  Returns:
    The sorted ``/``-joined paths that were copied.
  """
  kinds = (nnx.Param, nnx.BatchStat)
  src = _variables(source, kinds)
  copied = []
  for path, tgt in _variables(target, kinds).items():
    var = src.get(path)
    if var is None or _category(var) is not _category(tgt) or _shape(var) != _shape(tgt):
      continue
    value = tgt.get_value()
    tgt.set_value(jnp.asarray(var.get_value(), dtype=value.dtype))
    copied.append(path)
  return sorted(copied)
