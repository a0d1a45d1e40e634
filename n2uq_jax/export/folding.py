"""Integer thresholds on a quantized conv's int32 accumulator (SPEC 8).

Between a quantized conv and the next N2UQ quantizer, without a residual add,
the next quantizer's input is, per output channel ``c``::

  t = a_c * acc + b_c                 (dequantization and BatchNorm, ``acc`` the int32 sum)
  u = beta1 * (PReLU_c(t) + bias_out_c) with PReLU_c(t) = t if t > 0 else slope_c * t
  k = #{i : u > T_i}

``a_c = output_step * weight_scale_c / K_w * bn_scale_c / sqrt(var_c + eps)`` and
``b_c = bn_bias_c - mean_c * bn_scale_c / sqrt(var_c + eps) + bias_in_c``. With
``slope_c >= 0`` the map ``acc -> u`` is monotone, so ``u > T_i`` is ``acc > x``
(increasing) or ``acc < x`` (decreasing) for a real ``x``. On integers
``acc > x`` is ``acc >= floor(x) + 1`` and ``acc < x`` is ``-acc >= floor(-x) + 1``:
every channel becomes ``k = #{i : direction_c * acc >= tau_{c,i}}`` with integer
``tau``. A negative BatchNorm scale (``a_c < 0``) or a negative ``beta1`` flips
the direction. A negative PReLU slope makes the map V-shaped (minimum at
``t = 0``): ``PReLU(t) > h`` holds outside the closed interval
``[h / slope, h]`` of ``t`` and ``PReLU(t) < h`` inside the open one, so with
``beta1 > 0`` such a channel counts the thresholds whose integer interval
``[lo, hi]`` does not hold ``acc`` (rule ``int_outside``) and with ``beta1 < 0``
those whose interval holds it (``int_inside``): the two-sided intervals of
SPEC 8. The thresholds are derived in float64; the float32 forward
of the fake-quantized model can disagree only where ``u`` lies within float32
rounding of a threshold.
"""

from __future__ import annotations

import numpy as np

INT32_LIMIT = 2 ** 31 - 1
"""Integer thresholds are clipped to ``[-INT32_LIMIT, INT32_LIMIT]``: an
accumulator never reaches these (``|acc| <= K_a * K_w * fan_in``), so the clipped
ends mean "always" and "never"."""

DIRECTION_RULES = {1: 'int_ge', -1: 'int_le', 2: 'int_outside', -2: 'int_inside'}
"""The rule of a channel by its direction: level ``i`` counts when ``acc >= tau_i``,
``-acc >= tau_i`` (that is, ``acc <= -tau_i``), ``not (tau_i <= acc <= tau_hi_i)``,
or ``tau_i <= acc <= tau_hi_i``."""


def accumulator_affine(acc_scale, bn_scale, bn_bias, bn_mean, bn_var, epsilon, bias_in):
  """``(a, b)``, float64 ``(C,)``: ``t = a * acc + b`` is the PReLU input per channel."""
  mul = np.asarray(bn_scale, np.float64) / np.sqrt(np.asarray(bn_var, np.float64) + epsilon)
  a = np.asarray(acc_scale, np.float64) * mul
  b = np.asarray(bn_bias, np.float64) - np.asarray(bn_mean, np.float64) * mul + np.asarray(
      bias_in, np.float64)
  return a, b


def _integer_above(x: np.ndarray) -> np.ndarray:
  """``floor(x) + 1`` clipped to the int32 limits (``-inf`` -> always, ``inf`` -> never)."""
  with np.errstate(invalid='ignore', over='ignore'):
    out = np.floor(np.clip(x, -float(INT32_LIMIT), float(INT32_LIMIT))) + 1
    return np.clip(np.nan_to_num(out), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)


def fold_thresholds(acc_scale, bn_scale, bn_bias, bn_mean, bn_var, epsilon, bias_in, slope,
                    bias_out, input_scale, thresholds):
  """Integer thresholds of one folded quantizer.

  Args:
    acc_scale: ``(C,)`` dequantization factor of the accumulator.
    bn_scale, bn_bias, bn_mean, bn_var: ``(C,)`` BatchNorm in evaluation mode;
      ``epsilon`` its epsilon.
    bias_in, slope, bias_out: ``(C,)`` RPReLU.
    input_scale: ``beta1`` (scalar); thresholds: ``(K,)`` the quantizer's ``T``.

  Returns:
    ``(tau, tau_hi, direction)``: int32 ``(C, K)``, int32 ``(C, K)`` and int8
    ``(C,)``; the count rule of each channel is :data:`DIRECTION_RULES`
    (``tau_hi`` is ``INT32_LIMIT`` where unused).
  """
  a, b = accumulator_affine(acc_scale, bn_scale, bn_bias, bn_mean, bn_var, epsilon, bias_in)
  slope = np.asarray(slope, np.float64)[:, None]
  bias_out = np.asarray(bias_out, np.float64)[:, None]
  beta1 = float(input_scale)
  level = np.asarray(thresholds, np.float64)[None, :]
  with np.errstate(divide='ignore', invalid='ignore'):
    if beta1 != 0:
      h = level / beta1 - bias_out  # the condition on PReLU(t) relative to h
      # beta1 > 0: PReLU(t) > h <=> t > t_star; beta1 < 0: PReLU(t) < h <=> t < t_star
      positive = h >= 0 if beta1 > 0 else h > 0
      t_star = np.where(positive, h, np.where(slope > 0, h / slope, -np.inf))
    else:
      t_star = np.zeros_like(level + slope)
    x = (t_star - b[:, None]) / a[:, None]
  above = (beta1 > 0) != (a < 0)  # acc > x (else acc < x, i.e. -acc > -x)
  tau = np.where(above[:, None], _integer_above(x), _integer_above(-x))
  direction = np.where(above, 1, -1).astype(np.int8)
  constant = (a == 0) | (beta1 == 0)
  if np.any(constant):
    t0 = b[:, None]
    u0 = beta1 * (np.where(t0 > 0, t0, slope * t0) + bias_out)
    tau = np.where(constant[:, None], np.where(u0 > level, -INT32_LIMIT, INT32_LIMIT), tau)
    direction[constant] = 1
  tau_hi = np.full(tau.shape, INT32_LIMIT, np.int32)
  two_sided = (slope[:, 0] < 0) & ~constant
  if np.any(two_sided):
    lo, hi = _two_sided(a[two_sided, None], b[two_sided, None], slope[two_sided],
                        bias_out[two_sided], beta1, level)
    tau[two_sided], tau_hi[two_sided] = lo, hi
    direction[two_sided] = 2 if beta1 > 0 else -2
  return tau.astype(np.int32), tau_hi, direction


def _two_sided(a, b, slope, bias_out, beta1, level):
  """``(lo, hi)`` int32 of channels with a negative slope (see the module docstring).

  ``beta1 > 0``: ``u > T`` iff ``t`` is outside ``[h / slope, h]`` (always when
  ``h < 0``); ``beta1 < 0``: iff ``t`` is inside ``(h / slope, h)`` (never when
  ``h <= 0``). Empty intervals are ``[INT32_LIMIT, -INT32_LIMIT]``.
  """
  h = level / beta1 - bias_out
  ends = np.stack([(h / slope - b) / a, (h - b) / a])
  low, high = ends.min(axis=0), ends.max(axis=0)
  above = lambda x: _integer_above(x).astype(np.int64)
  if beta1 > 0:  # closed interval of t: the integers ceil(low) .. floor(high)
    lo, hi = -above(-low) + 1, above(high) - 1
    empty = h < 0
  else:  # open interval: floor(low) + 1 .. ceil(high) - 1
    lo, hi = above(low), -above(-high)
    empty = h <= 0
  lo = np.where(empty, INT32_LIMIT, np.clip(lo, -INT32_LIMIT, INT32_LIMIT))
  hi = np.where(empty, -INT32_LIMIT, np.clip(hi, -INT32_LIMIT, INT32_LIMIT))
  return lo.astype(np.int32), hi.astype(np.int32)


# --- Float thresholds on a float input (the residual-stream quantizers) ---------------
#
# A quantizer that reads ``RPReLU(x)`` computes, in float32 and in this order,
# ``z = x + bias_in``, ``p = z if z > 0 else slope * z``, ``r = p + bias_out``,
# ``u = beta1 * r`` and counts ``u > T_i``. Each step is monotone in ``x`` on either side
# of ``z = 0``, so ``{x : u > T_i}`` is a union of at most two intervals of float32
# values. Found by bisection over the float32 values themselves (evaluating the same
# float32 operations), those intervals reproduce the float32 chain's decisions exactly,
# tie for tie, without computing the chain.

_KEY_MAX = int(np.float32(np.finfo(np.float32).max).view(np.int32))


def _key(x: np.ndarray) -> np.ndarray:
  """int64 keys in the order of the float32 values (``-0.0`` and ``0.0`` share 0)."""
  bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
  return np.where(bits >= 0, bits, -(2 ** 31) - bits)


def _value(key: np.ndarray) -> np.ndarray:
  """The float32 of a key; keys beyond the finite range are ``-inf`` / ``inf``."""
  key = np.asarray(key, np.int64)
  finite = np.clip(key, -_KEY_MAX, _KEY_MAX)
  bits = np.where(finite >= 0, finite, -(2 ** 31) - finite).astype(np.int32)
  x = bits.view(np.float32)
  return np.where(key > _KEY_MAX, np.inf, np.where(key < -_KEY_MAX, -np.inf, x)).astype(
      np.float32)


def _first_true(predicate, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """Smallest key in ``[lo, hi]`` where the monotone non-decreasing ``predicate``
  (of float32 values) holds, ``hi + 1`` where it holds nowhere."""
  lo, hi = lo.copy(), hi + 1  # invariant: false below lo, true from hi on
  while np.any(lo < hi):
    mid = (lo + hi) // 2
    true = predicate(_value(mid))
    hi = np.where(true & (lo < hi), mid, hi)
    lo = np.where(~true & (lo < hi), mid + 1, lo)
  return lo


def float_count_intervals(bias_in, slope, bias_out, input_scale, thresholds):
  """Exact float32 thresholds of ``k = #{i : beta1 * RPReLU(x) > T_i}`` on ``x``.

  Args:
    bias_in, slope, bias_out: ``(C,)`` RPReLU (SPEC 4.2); zeros, ones and zeros for a
      quantizer that reads ``x`` directly.
    input_scale: ``beta1`` (scalar); thresholds: ``(K,)`` the quantizer's ``T``.

  Returns:
    ``(above, below, invert)``: float32 ``(C, K)``, float32 ``(C, K)`` and bool
    ``(C, K)`` such that, for every float32 ``x`` of channel ``c``, level ``i`` counts
    exactly when ``(x > above[c, i] or x < below[c, i]) != invert[c, i]``, as the
    float32 chain decides it (``-inf`` / ``inf`` entries never hold).
  """
  with np.errstate(over='ignore', invalid='ignore'):
    return _float_count_intervals(bias_in, slope, bias_out, input_scale, thresholds)


def _float_count_intervals(bias_in, slope, bias_out, input_scale, thresholds):
  f32 = np.float32
  b_in = np.asarray(bias_in, f32)[:, None]
  slope = np.asarray(slope, f32)[:, None]
  b_out = np.asarray(bias_out, f32)[:, None]
  beta1 = f32(input_scale)
  level = np.asarray(thresholds, f32)[None, :]
  shape = np.broadcast_shapes(b_in.shape, level.shape)

  def counts(x):
    z = x + b_in
    return beta1 * (np.where(z > 0, z, slope * z) + b_out) > level

  lowest, highest = np.full(shape, -_KEY_MAX), np.full(shape, _KEY_MAX)
  # the last key of the side z <= 0 (z = x + bias_in is monotone in x)
  split = _first_true(lambda x: np.broadcast_to(x + b_in > 0, shape), lowest, highest) - 1
  # (first key, last key, rising, flat, a key of the side next to z = 0): a flat side is
  # probed there, where its float32 values are finite
  negative_side = (lowest, split, (beta1 > 0) == (slope > 0), (beta1 == 0) | (slope == 0),
                   split)
  positive_side = (split + 1, highest, np.broadcast_to(beta1 > 0, shape),
                   np.broadcast_to(beta1 == 0, shape), split + 1)
  sides = []  # the [first, last] keys of each side's true set (first > last: empty)
  for start, end, rising, flat, probe in (negative_side, positive_side):
    first = _first_true(counts, start, end)  # where the side rises
    last = _first_true(lambda x: ~counts(x), start, end) - 1  # where it falls
    holds = counts(_value(np.clip(probe, -_KEY_MAX, _KEY_MAX)))  # where it is flat
    sides.append((np.where(flat, np.where(holds, start, end + 1), np.where(rising, first, start)),
                  np.where(flat | rising, end, last)))
  (first_neg, last_neg), (first_pos, last_pos) = sides
  empty_neg, empty_pos = first_neg > last_neg, first_pos > last_pos
  # one interval [first, last] when the two sides touch or one is empty
  joined = empty_neg | empty_pos | (last_neg + 1 >= first_pos)
  first = np.where(empty_neg, first_pos, first_neg)
  last = np.where(empty_pos, last_neg, last_pos)
  prefix, suffix = first <= -_KEY_MAX, last >= _KEY_MAX
  above = np.where(joined, np.where(suffix, first - 1, last), first_pos - 1)
  below = np.where(joined, np.where(prefix, last + 1, first), last_neg + 1)
  invert = joined & ~prefix & ~suffix
  # a suffix counts above first - 1; a prefix below last + 1; [first, last] inside
  above = np.where(joined & prefix & ~suffix, _KEY_MAX + 1, above)
  below = np.where(joined & suffix, -_KEY_MAX - 1, below)
  none = joined & (first > last)
  above = np.where(none, _KEY_MAX + 1, above)
  below = np.where(none, -_KEY_MAX - 1, below)
  invert = invert & ~none
  return _value(above), _value(below), invert
