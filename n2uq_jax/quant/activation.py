"""N2UQ activation quantizer: learned non-uniform thresholds, uniform output
levels, generalized straight-through estimation (SPEC.md sections 2.1-2.3).

Notation (SPEC section 1), with the names used in code::

  bits = n, K = 2**n - 1 thresholds, level spacing Delta = 2 / K
  offset s, intervals a (shape (K,)), input_scale beta1, output_scale beta2
  clamped intervals   a_bar = where(a > 1e-3, a, 1e-3)
  breakpoints         d_0 = s,  d_i = s + sum_{j<=i} a_bar_j          (i = 1..K)
  thresholds          T_i = d_{i-1} + a_bar_i / 2
  forward             u = beta1 * x,  k = #{i : u > T_i},  y = beta2 * Delta * k

The backward pass (G-STE) differentiates the piecewise-linear surrogate
``h(u) = Delta * [(i - 1) + (u - d_{i-1}) / a_bar_i]`` on the left-open,
right-closed segment ``d_{i-1} < u <= d_i``; its slope is zero for ``u <= d_0``
and ``u > d_K``. All parameter gradients come from two per-segment sums of the
upstream gradient (SPEC 2.3, "compact formulation"), computed in one pass.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from n2uq_jax.quant import _validation

INTERVAL_FLOOR = 1e-3
"""Lower bound on the interval lengths, applied with a select (SPEC 2.1)."""

OUTPUT_RANGE = 2.0
"""Top output level before the output scale: ``K * Delta`` (SPEC 1, ``R``)."""


class ActivationParams(NamedTuple):
  """The four learned parameters of one N2UQ activation quantizer (SPEC 2.1).

  Attributes:
    offset: ``()``, the start ``s`` of the first interval.
    intervals: ``(2**bits - 1,)``, the interval lengths ``a``.
    input_scale: ``()``, ``beta1``, multiplies the input.
    output_scale: ``()``, ``beta2``, multiplies the uniform output levels.
  """
  offset: jax.Array
  intervals: jax.Array
  input_scale: jax.Array
  output_scale: jax.Array


def num_thresholds(bits: int) -> int:
  """``K = 2**bits - 1``: thresholds, intervals, and the index of the top level."""
  return 2 ** _validation.check_bits(bits) - 1


def level_spacing(bits: int) -> float:
  """``Delta = 2 / (2**bits - 1)``: spacing of the output levels (SPEC 1)."""
  return OUTPUT_RANGE / num_thresholds(bits)


def init_n2uq_activation(bits: int, dtype=jnp.float32) -> ActivationParams:
  """Initial parameters of SPEC 2.1: ``s = 0``, ``a_i = Delta``, ``beta1 = beta2 = 1``.

  At these values the quantizer is uniform round-to-nearest on ``[0, 2]`` with
  an STE of slope 1 inside ``(0, 2]``.
  """
  k = num_thresholds(bits)
  return ActivationParams(
      offset=jnp.zeros((), dtype),
      intervals=jnp.full((k,), level_spacing(bits), dtype),
      input_scale=jnp.ones((), dtype),
      output_scale=jnp.ones((), dtype),
  )


def clamp_intervals(intervals: jax.Array) -> jax.Array:
  """``a_bar = where(a > 1e-3, a, 1e-3)``: a select, so clamped entries get no gradient."""
  return jnp.where(intervals > INTERVAL_FLOOR, intervals,
                   jnp.asarray(INTERVAL_FLOOR, intervals.dtype))


def breakpoints(offset: jax.Array, intervals: jax.Array) -> jax.Array:
  """``(d_0, ..., d_K)``, shape ``(K + 1,)``: segment ends of the surrogate (SPEC 2.2)."""
  clamped = clamp_intervals(intervals)
  return jnp.concatenate([offset[None], offset + jnp.cumsum(clamped)])


def thresholds(offset: jax.Array, intervals: jax.Array) -> jax.Array:
  """``T_i = d_{i-1} + a_bar_i / 2``, shape ``(K,)``: an input ``u`` above ``T_i``
  reaches level ``i`` (SPEC 2.2). Sorted ascending."""
  return breakpoints(offset, intervals)[:-1] + clamp_intervals(intervals) / 2


def _check_arguments(x, offset, intervals, input_scale, output_scale, bits):
  bits = _validation.check_bits(bits)
  _validation.check_floating(x, 'x')
  for name, value in (('offset', offset), ('intervals', intervals),
                      ('input_scale', input_scale), ('output_scale', output_scale)):
    _validation.check_floating(value, name)
  _validation.check_shape(offset, (), 'offset')
  _validation.check_shape(intervals, (2 ** bits - 1,), f'intervals (bits={bits})')
  _validation.check_shape(input_scale, (), 'input_scale')
  _validation.check_shape(output_scale, (), 'output_scale')
  return bits


def _level_codes(u: jax.Array, level_thresholds: jax.Array) -> jax.Array:
  """``#{i : u > T_i}`` elementwise, in ``u.dtype`` (an exact small integer)."""
  return jnp.sum(u[..., None] > level_thresholds, axis=-1, dtype=u.dtype)


def n2uq_activation_codes(x, offset, intervals, input_scale, *, bits) -> jax.Array:
  """Integer output level ``k = #{i : beta1 * x > T_i}`` (SPEC 2.2, 8).

  Args:
    x: floating array of any shape.
    offset, intervals, input_scale: as in :func:`n2uq_activation`.
    bits: bit-width in 1..8.

  Returns:
    int32 array shaped like ``x`` with values in ``0..2**bits - 1``.
  """
  bits = _check_arguments(x, offset, intervals, input_scale,
                          jnp.ones((), jnp.result_type(input_scale)), bits)
  dtype = _validation.compute_dtype(x, offset, intervals, input_scale)
  u = input_scale.astype(dtype) * jnp.asarray(x).astype(dtype)
  level_thresholds = thresholds(offset.astype(dtype), intervals.astype(dtype))
  return jnp.sum(u[..., None] > level_thresholds, axis=-1, dtype=jnp.int32)


def n2uq_activation(x, offset, intervals, input_scale, output_scale, *, bits) -> jax.Array:
  """N2UQ activation quantizer with G-STE gradients (SPEC 2.2 and 2.3).

  Forward: ``y = output_scale * Delta * k`` with ``k`` from
  :func:`n2uq_activation_codes` (strict ``>``). Backward: the exact gradients of
  SPEC 2.3 for ``x`` and all four parameters, segments left-open and
  right-closed, clamped intervals receiving zero gradient.

  Args:
    x: floating array of any shape; bfloat16/float16 inputs are quantized in
      float32 arithmetic and returned in their own dtype.
    offset: ``()`` start of the first interval ``s``.
    intervals: ``(2**bits - 1,)`` interval lengths ``a``.
    input_scale: ``()`` ``beta1``.
    output_scale: ``()`` ``beta2``.
    bits: bit-width in 1..8 (keyword only, static).

  Returns:
    Array shaped and typed like ``x``, on the levels ``output_scale * Delta * k``.

  Raises:
    ValueError: for bits outside 1..8, an ``intervals`` of the wrong length,
      non-scalar scales or offset, or a non-floating ``x``.
  """
  bits = _check_arguments(x, offset, intervals, input_scale, output_scale, bits)
  return _n2uq_activation(bits, jnp.asarray(x), jnp.asarray(offset),
                          jnp.asarray(intervals), jnp.asarray(input_scale),
                          jnp.asarray(output_scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _n2uq_activation(bits, x, offset, intervals, input_scale, output_scale):
  return _forward(bits, x, offset, intervals, input_scale, output_scale)


def _forward(bits, x, offset, intervals, input_scale, output_scale):
  dtype = _validation.compute_dtype(x, offset, intervals, input_scale, output_scale)
  u = input_scale.astype(dtype) * x.astype(dtype)
  codes = _level_codes(u, thresholds(offset.astype(dtype), intervals.astype(dtype)))
  step = output_scale.astype(dtype) * level_spacing(bits)
  return (step * codes).astype(x.dtype)


def _forward_with_residuals(bits, x, offset, intervals, input_scale, output_scale):
  y = _forward(bits, x, offset, intervals, input_scale, output_scale)
  return y, (x, offset, intervals, input_scale, output_scale)


def _backward(bits, residuals, upstream):
  """G-STE (SPEC 2.3). With ``g`` the upstream gradient, ``c_i = Delta / a_bar_i``
  and, per segment ``i``, ``P_i = sum g`` and ``Q_i = sum g * (u - d_{i-1})``:

    dx        = g * beta2 * beta1 * c_i                    (elementwise)
    d beta1   = beta2 * sum g * c_i * x
    d s       = -beta2 * sum_i c_i P_i
    d a_j     = -beta2 * (sum_{i>j} c_i P_i + c_j Q_j / a_bar_j),  0 if a_j <= 1e-3
    d beta2   = Delta * sum g * k
  """
  x, offset, intervals, input_scale, output_scale = residuals
  dtype = _validation.compute_dtype(x, offset, intervals, input_scale, output_scale)
  spacing = level_spacing(bits)
  s, a, beta1, beta2 = (p.astype(dtype) for p in (offset, intervals, input_scale, output_scale))
  xf = x.astype(dtype)
  g = upstream.astype(dtype)
  u = beta1 * xf

  clamped = clamp_intervals(a)
  ends = breakpoints(s, a)                      # (K + 1,)
  lower, upper = ends[:-1], ends[1:]            # d_{i-1}, d_i
  slopes = spacing / clamped                    # c_i, (K,)

  # One pass over the tensor: segment membership (left-open, right-closed),
  # the per-element slope, and the per-segment sums P_i and Q_i.
  in_segment = (u[..., None] > lower) & (u[..., None] <= upper)         # (..., K)
  slope = jnp.sum(jnp.where(in_segment, slopes, 0), axis=-1)           # (...)
  reduce_axes = tuple(range(u.ndim))
  seg_grad = jnp.sum(jnp.where(in_segment, g[..., None], 0), axis=reduce_axes)       # P
  seg_offset_grad = jnp.sum(
      jnp.where(in_segment, (g[..., None] * (u[..., None] - lower)), 0),
      axis=reduce_axes)                                                # Q
  codes = _level_codes(u, ends[:-1] + clamped / 2)

  dx = g * (beta2 * beta1) * slope
  d_input_scale = beta2 * jnp.sum(g * slope * xf)
  d_output_scale = spacing * jnp.sum(g * codes)

  weighted = slopes * seg_grad                                         # c_i P_i
  d_offset = -beta2 * jnp.sum(weighted)
  later = jnp.cumsum(weighted[::-1])[::-1] - weighted                  # sum_{i>j} c_i P_i
  d_intervals = -beta2 * (later + slopes * seg_offset_grad / clamped)
  d_intervals = jnp.where(a > INTERVAL_FLOOR, d_intervals, 0)

  return (dx.astype(x.dtype), d_offset.astype(offset.dtype),
          d_intervals.astype(intervals.dtype), d_input_scale.astype(input_scale.dtype),
          d_output_scale.astype(output_scale.dtype))


_n2uq_activation.defvjp(_forward_with_residuals, _backward)
