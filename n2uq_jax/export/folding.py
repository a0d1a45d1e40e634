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
