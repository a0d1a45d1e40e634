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

from n2uq_jax.quant import validation

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
  return 2 ** validation.check_bits(bits) - 1


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
  bits = validation.check_bits(bits)
  validation.check_floating(x, 'x')
  for name, value in (('offset', offset), ('intervals', intervals),
                      ('input_scale', input_scale), ('output_scale', output_scale)):
    validation.check_floating(value, name)
  validation.check_shape(offset, (), 'offset')
  validation.check_shape(intervals, (2 ** bits - 1,), f'intervals (bits={bits})')
  validation.check_shape(input_scale, (), 'input_scale')
  validation.check_shape(output_scale, (), 'output_scale')
  return bits


_UNROLL_LIMIT = 31
"""Up to this many thresholds, per-threshold work is unrolled into one
elementwise chain instead of a ``(..., K)`` broadcast (which XLA:CPU would
materialize before reducing)."""


def _level_codes(u: jax.Array, level_thresholds: jax.Array) -> jax.Array:
  """``#{i : u > T_i}`` elementwise, in ``u.dtype`` (an exact small integer)."""
  count = level_thresholds.shape[0]
  if count > _UNROLL_LIMIT:
    return jnp.sum(u[..., None] > level_thresholds, axis=-1, dtype=u.dtype)
  codes = jnp.zeros(u.shape, u.dtype)
  for i in range(count):
    codes = codes + (u > level_thresholds[i]).astype(u.dtype)
  return codes


def n2uq_activation_codes(x, offset, intervals, input_scale, *, bits) -> jax.Array:
  """Integer output level ``k = #{i : beta1 * x > T_i}`` (SPEC 2.2, 8).

  Args:
    x: floating array of any shape.
    offset, intervals, input_scale: as in :func:`n2uq_activation`.
    bits: bit-width in 1..8.

  Returns:
    int32 array shaped like ``x`` with values in ``0..2**bits - 1``. Non-finite
    inputs follow the strict comparison: ``+inf`` gets the top code ``2**bits - 1``,
    ``-inf`` and NaN (every comparison with NaN is false) get code 0.
  """
  bits = _check_arguments(x, offset, intervals, input_scale,
                          jnp.ones((), jnp.result_type(input_scale)), bits)
  dtype = validation.compute_dtype(x, offset, intervals, input_scale)
  u = input_scale.astype(dtype) * jnp.asarray(x).astype(dtype)
  level_thresholds = thresholds(offset.astype(dtype), intervals.astype(dtype))
  return _level_codes(u, level_thresholds).astype(jnp.int32)


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

  Non-finite ``x`` (tested in tests/quant/test_properties.py): the forward maps
  ``+inf`` to the top level and ``-inf`` and NaN to 0 (their codes, see
  :func:`n2uq_activation_codes`), so the output stays finite. Their gradient with
  respect to ``x`` is 0 (they lie in no segment), the gradients of ``offset``,
  ``intervals`` and ``output_scale`` stay finite, and the gradient of
  ``input_scale`` (a sum of ``x`` times the upstream gradient over the segments)
  is NaN as soon as any element of ``x`` is not finite.

  Raises:
    ValueError: for bits outside 1..8, an ``intervals`` of the wrong length,
      non-scalar scales or offset, or a non-floating ``x``.
  """
  bits = _check_arguments(x, offset, intervals, input_scale, output_scale, bits)
  x = jnp.asarray(x)
  params = _vary_like(x, offset, intervals, input_scale, output_scale)
  return _n2uq_activation(bits, x, *params)


def _vary_like(x, *params):
  """Inside ``shard_map``, marks replicated parameters as varying over the mesh
  axes that ``x`` varies over. The backward rule returns per-shard parameter
  gradients, which must have the parameters' type; JAX's autodiff of this cast
  then sums them over those axes. Outside ``shard_map`` it changes nothing."""
  axes = jax.typeof(x).mat.varying
  out = []
  for p in params:
    p = jnp.asarray(p)
    missing = tuple(sorted(axes - jax.typeof(p).mat.varying))
    out.append(jax.lax.pcast(p, missing, to='varying') if missing else p)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _n2uq_activation(bits, x, offset, intervals, input_scale, output_scale):
  return _forward(bits, x, offset, intervals, input_scale, output_scale)


def _forward(bits, x, offset, intervals, input_scale, output_scale):
  dtype = validation.compute_dtype(x, offset, intervals, input_scale, output_scale)
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
  dtype = validation.compute_dtype(x, offset, intervals, input_scale, output_scale)
  s, a, beta1, beta2 = (p.astype(dtype) for p in (offset, intervals, input_scale, output_scale))
  xf = x.astype(dtype)
  g = upstream.astype(dtype)
  k = num_thresholds(bits)
  if xf.size == 0 or k > _UNROLL_LIMIT:
    grads = _backward_broadcast(bits, xf, g, s, a, beta1, beta2)
  else:
    # XLA:CPU neither fuses producers into its reductions nor vectorizes fused
    # ones, so there the per-segment sums run blockwise (_backward_blocked);
    # other backends fuse the broadcast-and-reduce form well.
    grads = jax.lax.platform_dependent(
        xf, g, s, a, beta1, beta2,
        cpu=functools.partial(_backward_blocked, bits),
        default=functools.partial(_backward_broadcast, bits))
  dx, d_offset, d_intervals, d_input_scale, d_output_scale = grads
  return (dx.astype(x.dtype), d_offset.astype(offset.dtype),
          d_intervals.astype(intervals.dtype), d_input_scale.astype(input_scale.dtype),
          d_output_scale.astype(output_scale.dtype))


_BLOCK = 32768
"""Elements per block of the CPU backward: the block and its ``K + 3``
accumulator rows stay in cache while every per-segment sum is updated."""


def _segment_lookup(u, ends, clamped):
  """Per element: inside ``(d_0, d_K]``, the segment start ``d_{i-1}`` and the
  clamped interval ``a_bar_i`` of the segment ``d_{i-1} < u <= d_i`` holding ``u``."""
  k = clamped.shape[0]
  lower = jnp.broadcast_to(ends[0], u.shape)
  length = jnp.broadcast_to(clamped[0], u.shape)
  for i in range(1, k):
    above = u > ends[i]
    lower = jnp.where(above, ends[i], lower)
    length = jnp.where(above, clamped[i], length)
  inside = (u > ends[0]) & (u <= ends[k])
  return inside, lower, length


def _backward_blocked(bits, xf, g, s, a, beta1, beta2):
  """G-STE on blocks of ``_BLOCK`` elements, every sum elementwise-accumulated.

  With ``w = g * c_i`` and ``t = (u - d_{i-1}) / a_bar_i`` for an element in
  segment ``i`` (both zero outside ``(d_0, d_K]``), ``d a_j = -beta2 * F_j`` with
  ``F_j = sum [u > d_j] w + [d_{j-1} < u <= d_j] w t`` (equal to the sums in
  :func:`_backward`). The loop writes each block's ``dx`` and carries ``F`` as
  ``(K, block)`` partial sums and ``sum w``, ``sum w x``, ``sum g k`` as
  ``(block,)`` partial sums, so each block is read from memory once and all
  updates are vectorised elementwise work.
  """
  dtype = xf.dtype
  spacing = level_spacing(bits)
  clamped = clamp_intervals(a)
  ends = breakpoints(s, a)
  level_thresholds = ends[:-1] + clamped / 2
  flat_x, flat_g = xf.reshape(-1), g.reshape(-1)
  n = flat_x.size
  block = min(_BLOCK, n)
  num_blocks = -(-n // block)
  index_dtype = jnp.int32 if n < 2 ** 31 else jnp.int64
  upper_col, lower_col = ends[1:, None], ends[:-1, None]

  def accumulate(i, carry):
    dx, f, w_sum, wx_sum, gk_sum = carry
    i = i.astype(index_dtype)
    # The last block is shifted back to end at n: its dx is written again with
    # the same values, and its already-counted head is masked out of the sums.
    start = jnp.minimum(i * block, n - block)
    xb = jax.lax.dynamic_slice(flat_x, (start,), (block,))
    gb = jax.lax.dynamic_slice(flat_g, (start,), (block,))
    u = beta1 * xb
    inside, lower, length = _segment_lookup(u, ends, clamped)
    slope = jnp.where(inside, spacing / length, 0)
    dx = jax.lax.dynamic_update_slice(dx, gb * slope * (beta2 * beta1), (start,))
    gb = jnp.where(start + jax.lax.iota(index_dtype, block) >= i * block, gb, 0)
    w = gb * slope
    wt = w * ((u - lower) / length)
    f = f + jnp.where(u > upper_col, w, jnp.where(u > lower_col, wt, 0))
    return (dx, f, w_sum + w, wx_sum + w * xb,
            gk_sum + gb * _level_codes(u, level_thresholds))

  zeros = jnp.zeros((block,), dtype)
  # Under shard_map the carries vary over the same mesh axes as the data.
  initial = _vary_like(flat_x, jnp.zeros((n,), dtype),
                       jnp.zeros((clamped.shape[0], block), dtype), zeros, zeros, zeros)
  dx, f, w_sum, wx_sum, gk_sum = jax.lax.fori_loop(0, num_blocks, accumulate, tuple(initial))
  d_offset = -beta2 * jnp.sum(w_sum)
  d_intervals = jnp.where(a > INTERVAL_FLOOR, -beta2 * jnp.sum(f, axis=1), 0)
  d_input_scale = beta2 * jnp.sum(wx_sum)
  d_output_scale = spacing * jnp.sum(gk_sum)
  return dx.reshape(xf.shape), d_offset, d_intervals, d_input_scale, d_output_scale


def _backward_broadcast(bits, xf, g, s, a, beta1, beta2):
  """The sums of :func:`_backward` by broadcasting to ``(..., K)`` and reducing."""
  spacing = level_spacing(bits)
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

  return dx, d_offset, d_intervals, d_input_scale, d_output_scale


_n2uq_activation.defvjp(_forward_with_residuals, _backward)
