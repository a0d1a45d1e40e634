"""Flax NNX modules holding the learned parameters of the activation quantizers.

Every learned quantizer parameter is a :class:`QuantizerParam`, a subclass of
``nnx.Param``: ``nnx.state(model, QuantizerParam)`` selects exactly the
parameters that the N2UQ recipe trains at a tenth of the learning rate
(SPEC 5), and every quantizer can be enumerated with ``nnx.iter_graph`` for
export.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import quant


class QuantizerParam(nnx.Param):
  """A learned quantizer parameter: thresholds, scales, clip levels, step sizes."""


class N2UQActivation(nnx.Module):
  """N2UQ activation quantizer (SPEC 2): learned offset, intervals and scales.

  Attributes:
    bits: bit-width.
    offset, intervals, input_scale, output_scale: :class:`QuantizerParam` of
      shapes ``()``, ``(2**bits - 1,)``, ``()``, ``()``, initialised per SPEC 2.1.
  """

  def __init__(self, bits: int, *, param_dtype=jnp.float32):
    self.bits = bits
    init = quant.init_n2uq_activation(bits, param_dtype)
    self.offset = QuantizerParam(init.offset)
    self.intervals = QuantizerParam(init.intervals)
    self.input_scale = QuantizerParam(init.input_scale)
    self.output_scale = QuantizerParam(init.output_scale)

  def params(self) -> quant.ActivationParams:
    return quant.ActivationParams(self.offset[...], self.intervals[...],
                                  self.input_scale[...], self.output_scale[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    return quant.n2uq_activation(x, *self.params(), bits=self.bits)

  def codes(self, x: jax.Array) -> jax.Array:
    """Integer levels ``k`` of ``x``, int32 in ``0..2**bits - 1``."""
    p = self.params()
    return quant.n2uq_activation_codes(x, p.offset, p.intervals, p.input_scale, bits=self.bits)


class DoReFaActivation(nnx.Module):
  """DoReFa activation quantizer on ``[0, 1]``; no learned parameters."""

  def __init__(self, bits: int):
    self.bits = bits

  def __call__(self, x: jax.Array) -> jax.Array:
    return quant.dorefa_activation(x, bits=self.bits)


class PACTActivation(nnx.Module):
  """PACT with a learned clip ``alpha``.

  ``gradient='paper'`` uses PACT's own STE; ``gradient='n2uq_mbv2'`` the
  variant of the official N2UQ MobileNetV2 (SPEC 4.5), with ``alpha`` at 2.0.
  """

  def __init__(self, bits: int, *, init_alpha: float = 2.0, gradient: str = 'paper',
               param_dtype=jnp.float32):
    if gradient not in ('paper', 'n2uq_mbv2'):
      raise ValueError(f"PACT gradient must be 'paper' or 'n2uq_mbv2', got {gradient!r}")
    self.bits = bits
    self.gradient = gradient
    self.alpha = QuantizerParam(jnp.asarray(init_alpha, param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    fn = quant.pact_activation if self.gradient == 'paper' else quant.pact_activation_n2uq_mbv2
    return fn(x, self.alpha[...], bits=self.bits)


class LSQActivation(nnx.Module):
  """LSQ on unsigned activations with a learned step; gradient scale
  ``1 / sqrt(features_per_example * Q_p)`` (LSQ section 2.2).

  The step starts at ``init_range / Q_p`` (default range 2.0, the N2UQ output
  range), since LSQ's data-dependent initialisation needs a batch.
  """

  def __init__(self, bits: int, *, init_range: float = 2.0, param_dtype=jnp.float32):
    self.bits = bits
    _, high = quant.lsq_levels(bits, signed=False)
    self.step_size = QuantizerParam(jnp.asarray(init_range / high, param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    _, high = quant.lsq_levels(self.bits, signed=False)
    features = math.prod(x.shape[1:]) if x.ndim > 1 else x.size
    return quant.lsq_quantize(x, self.step_size[...], bits=self.bits, signed=False,
                              grad_scale=1.0 / math.sqrt(features * high))


class UniformActivation(nnx.Module):
  """Fixed uniform quantizer on ``[0, upper]`` with a clipped STE."""

  def __init__(self, bits: int, *, upper: float = 2.0):
    self.bits = bits
    self.upper = upper

  def __call__(self, x: jax.Array) -> jax.Array:
    return quant.uniform_quantize(x, bits=self.bits, lower=0.0, upper=self.upper)


def make_activation_quantizer(family: str, bits: int, *, param_dtype=jnp.float32):
  """The activation quantizer module of ``family`` (see ``spec.ACTIVATION_QUANTIZERS``),
  or ``None`` for ``'none'``."""
  if family == 'none':
    return None
  if family == 'n2uq':
    return N2UQActivation(bits, param_dtype=param_dtype)
  if family == 'dorefa':
    return DoReFaActivation(bits)
  if family == 'pact':
    return PACTActivation(bits, param_dtype=param_dtype)
  if family == 'pact_n2uq_mbv2':
    return PACTActivation(bits, gradient='n2uq_mbv2', param_dtype=param_dtype)
  if family == 'lsq':
    return LSQActivation(bits, param_dtype=param_dtype)
  if family == 'uniform':
    return UniformActivation(bits)
  raise ValueError(f'unknown activation quantizer {family!r}; valid: n2uq, dorefa, pact, '
                   'pact_n2uq_mbv2, lsq, uniform, none')
