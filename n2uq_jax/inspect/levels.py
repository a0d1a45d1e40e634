"""Quantization levels of every quantizer family: which integer level an input or a
weight lands on, and where an activation quantizer's decision thresholds lie.

An activation quantizer with ``b`` bits maps its input onto ``2**b`` levels
``k = 0..2**b - 1``; a weight quantizer maps each kernel element onto ``2**b``
levels numbered from the most negative one. These functions give ``k`` for every
family of :mod:`n2uq_jax.nn` and, for the activation quantizers, the thresholds in
input units at which ``k`` steps up (N2UQ: the learned ``T_i / beta1`` of SPEC 2.2;
the uniform baselines: the midpoints between their levels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from n2uq_jax import nn, quant

ACTIVATION_MODULES = (nn.N2UQActivation, nn.DoReFaActivation, nn.PACTActivation,
                      nn.LSQActivation, nn.UniformActivation)
"""The activation quantizer modules whose levels these functions know."""


def activation_family(module) -> str:
  """``'n2uq'``, ``'dorefa'``, ``'pact'``, ``'lsq'`` or ``'uniform'``."""
  for cls, name in ((nn.N2UQActivation, 'n2uq'), (nn.DoReFaActivation, 'dorefa'),
                    (nn.PACTActivation, 'pact'), (nn.LSQActivation, 'lsq'),
                    (nn.UniformActivation, 'uniform')):
    if isinstance(module, cls):
      return name
  raise ValueError(f'{type(module).__name__} is not an activation quantizer; valid: '
                   f'{[c.__name__ for c in ACTIVATION_MODULES]}')


def _uniform_spacing(module) -> jax.Array:
  """Input-unit spacing of the levels of a uniform-level activation quantizer."""
  top = 2 ** module.bits - 1
  family = activation_family(module)
  if family == 'dorefa':
    return jnp.asarray(1.0 / top, jnp.float32)
  if family == 'pact':
    return jnp.asarray(module.alpha[...], jnp.float32) / top
  if family == 'lsq':
    return jnp.asarray(module.step_size[...], jnp.float32)
  return jnp.asarray(module.upper / top, jnp.float32)


def activation_levels(module, x: jax.Array, y: jax.Array) -> jax.Array:
  """The level ``k`` (int32, ``0..2**bits - 1``) of every element of ``x``.

  Args:
    module: an activation quantizer module (see :data:`ACTIVATION_MODULES`).
    x: its input, any shape.
    y: its output ``module(x)``, same shape (the baselines' levels are read from it:
      ``y = k * spacing``).
  """
  if isinstance(module, nn.N2UQActivation):
    return module.codes(x)
  top = 2 ** module.bits - 1
  k = jnp.round(y.astype(jnp.float32) / _uniform_spacing(module))
  return jnp.clip(k, 0, top).astype(jnp.int32)


def decision_thresholds(module) -> jax.Array:
  """``(2**bits - 1,)`` input values at which the level steps from ``i - 1`` to ``i``.

  N2UQ: the learned ``T_i / input_scale`` (SPEC 2.2; an input above it reaches level
  ``i``). DoReFa, PACT, LSQ, uniform: ``(i - 1/2) * spacing``, the rounding midpoints.
  """
  if isinstance(module, nn.N2UQActivation):
    p = module.params()
    return quant.thresholds(p.offset, p.intervals) / p.input_scale
  index = jnp.arange(1, 2 ** module.bits, dtype=jnp.float32)
  return (index - 0.5) * _uniform_spacing(module)


def initial_thresholds(module) -> jax.Array | None:
  """The thresholds of a learned N2UQ quantizer at its SPEC 2.1 initialisation
  (uniform, ``(i - 1/2) * Delta``), or ``None`` for the other families."""
  if not isinstance(module, nn.N2UQActivation):
    return None
  init = quant.init_n2uq_activation(module.bits)
  return quant.thresholds(init.offset, init.intervals) / init.input_scale


def weight_levels(quantizer: nn.WeightQuantizer, kernel: jax.Array) -> jax.Array | None:
  """The level (int32, ``0..2**bits - 1``, most negative first) of every kernel element,
  or ``None`` for an unquantized kernel.

  N2UQ: the codes of :func:`n2uq_jax.quant.n2uq_weight_codes` (per output channel,
  last axis; SPEC 3.1). DoReFa: ``round((w_q + 1) K / 2)`` for ``bits >= 2``, the sign
  for 1 bit. LSQ: ``round(w_q / s) - Q_n``.
  """
  family, bits = quantizer.family, quantizer.bits
  if family == 'none':
    return None
  if family == 'n2uq':
    codes, _ = quant.n2uq_weight_codes(kernel, bits=bits, channel_axis=-1)
    return codes.astype(jnp.int32)
  quantized = quantizer(kernel).astype(jnp.float32)
  top = 2 ** bits - 1
  if family == 'dorefa':
    if bits == 1:
      return (kernel >= 0).astype(jnp.int32)
    return jnp.clip(jnp.round((quantized + 1) * top / 2), 0, top).astype(jnp.int32)
  if family == 'lsq':
    low, _ = quant.lsq_levels(bits, signed=True)
    step = jnp.asarray(quantizer.step_size[...], jnp.float32)
    return jnp.clip(jnp.round(quantized / step) - low, 0, top).astype(jnp.int32)
  raise ValueError(f'unknown weight quantizer family {family!r}; valid: n2uq, dorefa, lsq, none')


def level_counts(levels, num_levels: int) -> np.ndarray:
  """``(num_levels,)`` float64 occupancy counts of the integer ``levels``."""
  return np.bincount(np.asarray(levels).reshape(-1), minlength=num_levels).astype(np.float64)
