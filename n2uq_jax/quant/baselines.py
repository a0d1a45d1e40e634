"""Baseline quantizers the paper compares N2UQ against, in the same calling style.

Each function is pure, takes its parameters explicitly, computes in float32 (or
float64) and returns the input's dtype. Gradients are written with the
stop-gradient idiom ``value + (surrogate - stop_gradient(surrogate))``, which
leaves the forward value bit-exact and gives the documented straight-through
gradient, with masks chosen explicitly at the boundaries.

- DoReFa-Net (Zhou et al., 2016, arXiv:1606.06160): the paper's ablation
  baseline (SPEC 3.2, 6.4), for weights and activations.
- PACT (Choi et al., 2018, arXiv:1805.06085): a learned activation clip.
- LSQ (Esser et al., ICLR 2020, arXiv:1902.08153): a learned step size with its
  gradient scale.
- Uniform: a fixed-range uniform quantizer with a clipped STE.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from n2uq_jax.quant import validation

_sg = jax.lax.stop_gradient


def _straight_through(value, surrogate):
  """``value`` in the forward pass, the gradient of ``surrogate`` in the backward."""
  return _sg(value) + (surrogate - _sg(surrogate))


def _as_compute(x, name='x', *params):
  validation.check_floating(x, name)
  x = jnp.asarray(x)
  dtype = validation.compute_dtype(x, *params)
  return x, x.astype(dtype), dtype


def _quantize_unit(r, levels):
  """DoReFa's ``quantize_k``: ``round(r * levels) / levels`` with an identity STE."""
  return _straight_through(jnp.round(r * levels) / levels, r)


def dorefa_activation(x, *, bits) -> jax.Array:
  """DoReFa activation quantizer: ``round(clip(x, 0, 1) * K) / K``, ``K = 2**bits - 1``.

  Gradient: 1 for ``0 <= x <= 1`` and 0 outside (the STE through the clip).

  Args:
    x: floating array of any shape.
    bits: bit-width in 1..8.

  Returns:
    Array like ``x`` on the levels ``{0, 1/K, ..., 1}``.
  """
  bits = validation.check_bits(bits)
  x, xf, _ = _as_compute(x)
  inside = (xf >= 0) & (xf <= 1)
  levels = 2 ** bits - 1
  value = jnp.round(jnp.clip(xf, 0, 1) * levels) / levels
  return _straight_through(value, jnp.where(inside, xf, _sg(xf))).astype(x.dtype)


def dorefa_weight(w, *, bits) -> jax.Array:
  """DoReFa weight quantizer, per tensor.

  For ``bits >= 2``: ``w_n = tanh(w) / (2 max|tanh(w)|) + 1/2`` and
  ``w_q = 2 * round(w_n * K) / K - 1`` with an identity STE on the rounding
  (gradients flow through ``tanh`` and the max). For ``bits == 1``:
  ``w_q = mean|w| * sign(w)`` (``sign(0) = +1``), identity STE, mean held
  constant.

  Returns:
    Array like ``w`` on ``2**bits`` levels in ``[-1, 1]`` (``bits >= 2``).
  """
  bits = validation.check_bits(bits)
  w, wf, _ = _as_compute(w, 'w')
  if bits == 1:
    value = jnp.mean(jnp.abs(wf)) * jnp.where(wf >= 0, 1.0, -1.0).astype(wf.dtype)
    return _straight_through(value, wf).astype(w.dtype)
  squashed = jnp.tanh(wf)
  # initial=0: an empty w has no maximum (and abs >= 0 leaves every other max alone)
  unit = squashed / (2 * jnp.max(jnp.abs(squashed), initial=0.0)) + 0.5
  return (2 * _quantize_unit(unit, 2 ** bits - 1) - 1).astype(w.dtype)


def pact_activation(x, alpha, *, bits) -> jax.Array:
  """PACT: ``y = round(clip(x, 0, alpha) * K / alpha) * alpha / K``.

  Gradients (PACT paper, STE): ``dy/dx = 1`` for ``0 <= x < alpha`` and 0
  elsewhere; ``dy/dalpha = 1`` for ``x >= alpha`` and 0 elsewhere.

  Args:
    x: floating array of any shape.
    alpha: ``()`` learned clipping level (positive).
    bits: bit-width in 1..8.
  """
  bits = validation.check_bits(bits)
  validation.check_shape(alpha, (), 'alpha')
  x, xf, dtype = _as_compute(x, 'x', alpha)
  alpha = jnp.asarray(alpha).astype(dtype)
  levels = 2 ** bits - 1
  value = jnp.round(jnp.clip(xf, 0, alpha) * levels / alpha) * alpha / levels
  surrogate = (jnp.where((xf >= 0) & (xf < alpha), xf, _sg(xf))
               + (alpha - _sg(alpha)) * (xf >= alpha))
  return _straight_through(value, surrogate).astype(x.dtype)


def pact_activation_n2uq_mbv2(x, alpha, *, bits) -> jax.Array:
  """PACT as the official N2UQ MobileNetV2 uses it before its last 1x1 conv (SPEC 4.5, Q7).

  Same forward value as :func:`pact_activation`. Its gradients differ: the
  rounding is not detached from ``alpha``, so per element
  ``dy/dalpha = round(x_c * K / alpha) / K + [x >= alpha]`` (2 for clipped
  elements) and ``dy/dx = 1`` on ``0 < x < alpha`` only.
  """
  bits = validation.check_bits(bits)
  validation.check_shape(alpha, (), 'alpha')
  x, xf, dtype = _as_compute(x, 'x', alpha)
  alpha = jnp.asarray(alpha).astype(dtype)
  levels = 2 ** bits - 1
  codes = jnp.round(jnp.clip(xf, 0, alpha) * levels / alpha)
  value = codes * alpha / levels
  alpha_slope = codes / levels + (xf >= alpha)
  surrogate = (jnp.where((xf > 0) & (xf < alpha), xf, _sg(xf))
               + (alpha - _sg(alpha)) * _sg(alpha_slope))
  return _straight_through(value, surrogate).astype(x.dtype)


def lsq_levels(bits: int, *, signed: bool) -> tuple[int, int]:
  """``(Q_n, Q_p)``: ``(-2**(b-1), 2**(b-1) - 1)`` signed, ``(0, 2**b - 1)`` unsigned."""
  bits = validation.check_bits(bits)
  if signed:
    if bits == 1:
      raise ValueError('signed LSQ needs bits in 2..8 (1 bit leaves Q_p = 0), got 1')
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return 0, 2 ** bits - 1


def lsq_quantize(x, step_size, *, bits, signed, grad_scale=None) -> jax.Array:
  """LSQ: ``y = round(clip(x / s, Q_n, Q_p)) * s`` with a learned step ``s``.

  Gradients (LSQ paper, Eq. 3 and section 2.2): ``dy/dx = 1`` for
  ``Q_n <= x/s <= Q_p``, else 0; ``dy/ds = g * (round(x/s) - x/s)`` inside,
  ``g * Q_n`` below and ``g * Q_p`` above, where ``g`` is the gradient scale.

  Args:
    x: floating array of any shape (weights: ``signed=True``; activations
      after a ReLU: ``signed=False``).
    step_size: ``()`` learned step ``s`` (positive).
    bits: bit-width in 1..8 (2..8 when signed).
    signed: whether the levels are symmetric around zero.
    grad_scale: the factor ``g``; defaults to ``1 / sqrt(x.size * Q_p)``, the
      paper's choice for weights; for activations pass
      ``1 / sqrt(features_per_example * Q_p)``.
  """
  low, high = lsq_levels(bits, signed=signed)
  validation.check_shape(step_size, (), 'step_size')
  x, xf, dtype = _as_compute(x, 'x', step_size)
  step = jnp.asarray(step_size).astype(dtype)
  if grad_scale is None:
    grad_scale = 1.0 / math.sqrt(max(x.size, 1) * high)
  ratio = xf / step
  inside = (ratio >= low) & (ratio <= high)
  codes = _sg(jnp.round(jnp.clip(ratio, low, high)))
  scaled_step = step * grad_scale
  surrogate = (jnp.where(inside, xf, _sg(xf))
               + (scaled_step - _sg(scaled_step)) * _sg(codes - jnp.where(inside, ratio, 0)))
  return _straight_through(codes * step, surrogate).astype(x.dtype)


def uniform_quantize(x, *, bits, lower=0.0, upper=1.0) -> jax.Array:
  """Uniform quantizer on ``[lower, upper]`` with ``2**bits`` levels and a clipped STE.

  ``y = lower + round((clip(x) - lower) / step) * step``,
  ``step = (upper - lower) / (2**bits - 1)``; ``dy/dx = 1`` on
  ``[lower, upper]`` and 0 outside.
  """
  bits = validation.check_bits(bits)
  if not upper > lower:
    raise ValueError(f'uniform_quantize needs upper > lower, got lower={lower}, upper={upper}')
  x, xf, _ = _as_compute(x)
  step = (upper - lower) / (2 ** bits - 1)
  value = lower + jnp.round((jnp.clip(xf, lower, upper) - lower) / step) * step
  inside = (xf >= lower) & (xf <= upper)
  return _straight_through(value, jnp.where(inside, xf, _sg(xf))).astype(x.dtype)
