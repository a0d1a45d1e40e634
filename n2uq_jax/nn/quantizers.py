"""Flax NNX modules holding the learned parameters of the activation quantizers.

Every learned quantizer parameter is a :class:`QuantizerParam`, a subclass of
``nnx.Param``: ``nnx.state(model, QuantizerParam)`` selects exactly the
parameters that the N2UQ recipe trains at a tenth of the learning rate
(SPEC 5), and every quantizer can be enumerated with ``nnx.iter_graph`` for
export.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import quant


class QuantizerParam(nnx.Param):
  """A learned quantizer parameter: thresholds, scales, clip levels, step sizes."""


class ActivationQuantizer(nnx.Module):
  """An activation quantizer of a family of :data:`n2uq_jax.quant.ACTIVATION_FAMILIES`:
  its learned parameters are :class:`QuantizerParam` attributes named as the family
  names them, and the forward pass is the family's ``apply``.

  Args:
    family: the family's name.
    bits: bit-width, 1..8.
    param_dtype: dtype of the learned parameters.
    initial: initial values replacing the family's defaults, by parameter name.
  """

  def __init__(self, family: str, bits: int, *, param_dtype=jnp.float32, **initial):
    spec = quant.activation_family(family)
    unknown = sorted(set(initial) - set(spec.param_names))
    if unknown:
      raise ValueError(f'{family} quantizer has no parameters {unknown}; its parameters: '
                       f'{spec.param_names}')
    self.family = family
    self.bits = quant.check_bits(bits)
    for name, value in spec.init(self.bits, None, param_dtype).items():
      setattr(self, name, QuantizerParam(jnp.asarray(initial.get(name, value), param_dtype)))

  def quantizer_params(self) -> dict[str, jax.Array]:
    """The learned parameters' values, by name."""
    return {name: getattr(self, name)[...]
            for name in quant.activation_family(self.family).param_names}

  def __call__(self, x: jax.Array) -> jax.Array:
    return quant.activation_family(self.family).apply(x, self.quantizer_params(), self.bits, ())


class N2UQActivation(ActivationQuantizer):
  """N2UQ activation quantizer (SPEC 2): learned offset, intervals and scales.

  Attributes:
    bits: bit-width.
    offset, intervals, input_scale, output_scale: :class:`QuantizerParam` of
      shapes ``()``, ``(2**bits - 1,)``, ``()``, ``()``, initialised per SPEC 2.1.
  """

  def __init__(self, bits: int, *, param_dtype=jnp.float32):
    super().__init__('n2uq', bits, param_dtype=param_dtype)

  def params(self) -> quant.ActivationParams:
    return quant.ActivationParams(self.offset[...], self.intervals[...],
                                  self.input_scale[...], self.output_scale[...])

  def codes(self, x: jax.Array) -> jax.Array:
    """Integer levels ``k`` of ``x``, int32 in ``0..2**bits - 1``."""
    p = self.params()
    return quant.n2uq_activation_codes(x, p.offset, p.intervals, p.input_scale, bits=self.bits)


class DoReFaActivation(ActivationQuantizer):
  """DoReFa activation quantizer on ``[0, 1]``; no learned parameters."""

  def __init__(self, bits: int, *, param_dtype=jnp.float32):
    super().__init__('dorefa', bits, param_dtype=param_dtype)


class PACTActivation(ActivationQuantizer):
  """PACT with a learned clip ``alpha``.

  ``gradient='paper'`` uses PACT's own STE (family ``pact``); ``gradient='n2uq_mbv2'``
  the variant of the official N2UQ MobileNetV2 (SPEC 4.5, family ``pact_n2uq_mbv2``),
  with ``alpha`` at 2.0.
  """

  def __init__(self, bits: int, *, init_alpha: float = quant.families.PACT_INIT_ALPHA,
               gradient: str = 'paper', param_dtype=jnp.float32):
    if gradient not in ('paper', 'n2uq_mbv2'):
      raise ValueError(f"PACT gradient must be 'paper' or 'n2uq_mbv2', got {gradient!r}")
    super().__init__('pact' if gradient == 'paper' else 'pact_n2uq_mbv2', bits,
                     param_dtype=param_dtype, alpha=init_alpha)
    self.gradient = gradient


class LSQActivation(ActivationQuantizer):
  """LSQ on unsigned activations with a learned step; gradient scale
  ``1 / sqrt(features_per_example * Q_p)`` (LSQ section 2.2).

  The step starts at ``init_range / Q_p`` (default range 2.0, the N2UQ output
  range), since LSQ's data-dependent initialisation needs a batch.
  """

  def __init__(self, bits: int, *, init_range: float = quant.families.LSQ_INIT_RANGE,
               param_dtype=jnp.float32):
    _, high = quant.lsq_levels(bits, signed=False)
    super().__init__('lsq', bits, param_dtype=param_dtype, step_size=init_range / high)


class UniformActivation(ActivationQuantizer):
  """Fixed uniform quantizer on ``[0, upper]`` with a clipped STE
  (``upper`` = :data:`n2uq_jax.quant.families.UNIFORM_UPPER`)."""

  upper = quant.families.UNIFORM_UPPER

  def __init__(self, bits: int, *, param_dtype=jnp.float32):
    super().__init__('uniform', bits, param_dtype=param_dtype)


_MODULES = {'n2uq': N2UQActivation, 'dorefa': DoReFaActivation, 'lsq': LSQActivation,
            'uniform': UniformActivation,
            'pact': PACTActivation,
            'pact_n2uq_mbv2': lambda bits, **kw: PACTActivation(bits, gradient='n2uq_mbv2', **kw)}
"""The families with a module of their own (the level readers of export and inspection
know them by class); any other family gets an :class:`ActivationQuantizer`."""


def make_activation_quantizer(family: str, bits: int, *, param_dtype=jnp.float32):
  """The activation quantizer module of ``family`` (one of
  :data:`n2uq_jax.quant.ACTIVATION_FAMILIES`), or ``None`` for ``'none'``."""
  quant.activation_family(family)
  if family == quant.families.NONE:
    return None
  if family in _MODULES:
    return _MODULES[family](bits, param_dtype=param_dtype)
  return ActivationQuantizer(family, bits, param_dtype=param_dtype)
