"""Quantized convolution and dense layers and RPReLU, as Flax NNX modules.

Layouts follow the project conventions: activations NHWC, kernels HWIO (output
channel last), dense kernels ``(in, out)``. A quantized layer applies its input
quantizer (if any) to the incoming activation, quantizes its float "latent"
kernel with its weight quantizer, and runs the float convolution on the two
fake-quantized tensors (SPEC 4.1). Quantizer arithmetic stays in float32; only
the convolution runs in ``dtype`` (for example bfloat16).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import quant
from n2uq_jax.nn.quantizers import QuantizerParam, make_activation_quantizer
from n2uq_jax.nn.spec import FULL_PRECISION, QuantSpec

default_conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
"""He-normal over fan-out, the torchvision ResNet conv initialisation."""


def _pair(value, name) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(value)
  if len(value) != 2:
    raise ValueError(f'{name} must be an int or a pair of ints, got {value!r}')
  return value


class WeightQuantizer(nnx.Module):
  """Quantizes a kernel with a family of :data:`n2uq_jax.quant.WEIGHT_FAMILIES`.

  ``'n2uq'``: entropy-preserving, per output channel (the last axis, SPEC 3.1);
  ``'dorefa'``: DoReFa, per tensor; ``'lsq'``: signed LSQ with a learned step
  initialised to ``2 mean|W| / sqrt(Q_p)`` (LSQ's rule); ``'none'``: identity.
  """

  def __init__(self, family: str, bits: int, kernel: jax.Array):
    self.family = family
    self.bits = bits
    for name, value in quant.weight_family(family).init(bits, kernel, jnp.float32).items():
      setattr(self, name, QuantizerParam(value))

  def __call__(self, kernel: jax.Array) -> jax.Array:
    family = quant.weight_family(self.family)
    params = {name: getattr(self, name)[...] for name in family.param_names}
    return family.apply(kernel, params, self.bits, (kernel.ndim - 1,))


def _make_quantizers(spec: QuantSpec, kernel: jax.Array, param_dtype):
  """The input quantizer (``None`` for ``'none'``) and the weight quantizer of a
  layer with ``spec`` and latent ``kernel``."""
  return (make_activation_quantizer(spec.activation, spec.activation_bits,
                                    param_dtype=param_dtype),
          WeightQuantizer(spec.weight, spec.weight_bits, kernel))


class QuantConv(nnx.Module):
  """2-D convolution with an optional input quantizer and a weight quantizer.

  Args:
    in_features, out_features: channels ``C_in`` and ``C_out``.
    kernel_size: int or pair.
    strides: int or pair.
    padding: int or pair (symmetric zero padding, as torchvision convs), or
      ``'SAME'``/``'VALID'``.
    feature_group_count: groups; ``in_features`` for a depthwise conv.
    spec: the quantizers (:class:`QuantSpec`); ``FULL_PRECISION`` gives a
      plain conv.
    use_bias: add a float bias after the conv.
    dtype: compute dtype of the convolution (quantizers stay float32).

  Shapes: ``x`` is ``(N, H, W, C_in)``; the kernel is
  ``(kh, kw, C_in / groups, C_out)``; the output ``(N, H', W', C_out)``.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size=3, *,
               strides=1, padding=0, feature_group_count: int = 1,
               spec: QuantSpec = FULL_PRECISION, use_bias: bool = False,
               dtype=None, param_dtype=jnp.float32, kernel_init=default_conv_init,
               rngs: nnx.Rngs):
    if in_features % feature_group_count or out_features % feature_group_count:
      raise ValueError(
          f'in_features={in_features} and out_features={out_features} must both be '
          f'divisible by feature_group_count={feature_group_count}')
    self.in_features = in_features
    self.out_features = out_features
    self.kernel_size = _pair(kernel_size, 'kernel_size')
    self.strides = _pair(strides, 'strides')
    if isinstance(padding, str):
      self.padding = padding
    else:
      self.padding = tuple((p, p) for p in _pair(padding, 'padding'))
    self.feature_group_count = feature_group_count
    self.spec = spec
    self.dtype = dtype
    shape = (*self.kernel_size, in_features // feature_group_count, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
    self.input_quantizer, self.weight_quantizer = _make_quantizers(spec, self.kernel[...],
                                                                   param_dtype)

  def quantized_kernel(self) -> jax.Array:
    """The fake-quantized kernel the convolution uses, HWIO."""
    return self.weight_quantizer(self.kernel[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.in_features:
      raise ValueError(f'QuantConv expects NHWC input with {self.in_features} channels, '
                       f'got shape {x.shape}')
    if self.input_quantizer is not None:
      x = self.input_quantizer(x)
    kernel = self.quantized_kernel()
    dtype = self.dtype or jnp.result_type(x, kernel)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=self.strides,
        padding=self.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.feature_group_count)
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class QuantDense(nnx.Module):
  """Dense layer with an optional input quantizer and a weight quantizer.

  Shapes: ``x`` is ``(..., in_features)``; the kernel ``(in_features,
  out_features)`` (output channel last); the output ``(..., out_features)``.
  """

  def __init__(self, in_features: int, out_features: int, *,
               spec: QuantSpec = FULL_PRECISION, use_bias: bool = True, dtype=None,
               param_dtype=jnp.float32,
               kernel_init=nnx.initializers.lecun_normal(), rngs: nnx.Rngs):
    self.in_features = in_features
    self.out_features = out_features
    self.spec = spec
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
    self.input_quantizer, self.weight_quantizer = _make_quantizers(spec, self.kernel[...],
                                                                   param_dtype)

  def quantized_kernel(self) -> jax.Array:
    return self.weight_quantizer(self.kernel[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] != self.in_features:
      raise ValueError(f'QuantDense expects {self.in_features} input features, '
                       f'got shape {x.shape}')
    if self.input_quantizer is not None:
      x = self.input_quantizer(x)
    kernel = self.quantized_kernel()
    dtype = self.dtype or jnp.result_type(x, kernel)
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class RPReLU(nnx.Module):
  """``RPReLU(x) = PReLU(x + b1) + b2`` per channel (SPEC 4.2, ReActNet).

  ``b1``, ``b2`` start at 0 and the PReLU slope at 0.25 (PyTorch's default);
  all three have shape ``(C,)`` and act on the last (channel) axis.
  """

  def __init__(self, num_features: int, *, init_slope: float = 0.25, param_dtype=jnp.float32):
    self.num_features = num_features
    self.bias_in = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.slope = nnx.Param(jnp.full((num_features,), init_slope, param_dtype))
    self.bias_out = nnx.Param(jnp.zeros((num_features,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    z = x + self.bias_in[...].astype(x.dtype)
    return jnp.where(z > 0, z, self.slope[...].astype(x.dtype) * z) + self.bias_out[...].astype(x.dtype)
