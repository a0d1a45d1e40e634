"""Independent NumPy references of the SPEC formulas, written element by element
from the tables of SPEC 2.3 and 3.1 (not from the package's code)."""

from __future__ import annotations

import numpy as np

FLOOR = 1e-3


def activation(x, offset, intervals, input_scale, output_scale, bits, upstream):
  """Forward value and every gradient of sum(upstream * y) for the N2UQ
  activation quantizer, in float64, from the per-element table of SPEC 2.3."""
  x = np.asarray(x, np.float64)
  g = np.broadcast_to(np.asarray(upstream, np.float64), x.shape)
  a = np.asarray(intervals, np.float64)
  s, b1, b2 = float(offset), float(input_scale), float(output_scale)
  levels = 2 ** bits - 1
  spacing = 2.0 / levels
  clamped = np.where(a > FLOOR, a, FLOOR)
  ends = [s]
  for length in clamped:
    ends.append(ends[-1] + length)
  thresholds = [ends[i] + clamped[i] / 2 for i in range(levels)]

  y = np.zeros_like(x)
  dx = np.zeros_like(x)
  d_offset = 0.0
  d_intervals = np.zeros(levels)
  d_in = 0.0
  d_out = 0.0
  for idx in np.ndindex(x.shape):
    u = b1 * x[idx]
    k = sum(1 for t in thresholds if u > t)
    y[idx] = b2 * spacing * k
    d_out += g[idx] * spacing * k
    for i in range(1, levels + 1):               # segment i: d_{i-1} < u <= d_i
      if ends[i - 1] < u <= ends[i]:
        c = b2 * spacing / clamped[i - 1]
        dx[idx] = g[idx] * c * b1
        d_offset -= g[idx] * c
        for j in range(1, i):
          d_intervals[j - 1] -= g[idx] * c
        d_intervals[i - 1] -= g[idx] * b2 * spacing * (u - ends[i - 1]) / clamped[i - 1] ** 2
        d_in += g[idx] * c * x[idx]
        break
  d_intervals[a <= FLOOR] = 0.0
  return y, dx, d_offset, d_intervals, d_in, d_out


def activation_vectorized(x, offset, intervals, input_scale, output_scale, bits, upstream):
  """The same float64 quantities as :func:`activation`, one segment at a time
  over all elements at once, for tensors too large for the per-element loop."""
  x = np.asarray(x, np.float64)
  g = np.broadcast_to(np.asarray(upstream, np.float64), x.shape)
  a = np.asarray(intervals, np.float64)
  s, b1, b2 = float(offset), float(input_scale), float(output_scale)
  levels = 2 ** bits - 1
  spacing = 2.0 / levels
  clamped = np.where(a > FLOOR, a, FLOOR)
  ends = [s]
  for length in clamped:
    ends.append(ends[-1] + length)
  u = b1 * x
  k = np.zeros_like(x)
  for i in range(levels):
    k += u > ends[i] + clamped[i] / 2
  y = b2 * spacing * k
  d_out = spacing * np.sum(g * k)

  dx = np.zeros_like(x)
  d_offset = 0.0
  d_intervals = np.zeros(levels)
  d_in = 0.0
  for i in range(1, levels + 1):                 # segment i: d_{i-1} < u <= d_i
    member = (ends[i - 1] < u) & (u <= ends[i])
    c = b2 * spacing / clamped[i - 1]
    g_i = g[member]
    dx[member] = g_i * c * b1
    d_offset -= c * np.sum(g_i)
    d_intervals[:i - 1] -= c * np.sum(g_i)
    d_intervals[i - 1] -= (b2 * spacing * np.sum(g_i * (u[member] - ends[i - 1]))
                           / clamped[i - 1] ** 2)
    d_in += c * np.sum(g_i * x[member])
  d_intervals[a <= FLOOR] = 0.0
  return y, dx, d_offset, d_intervals, d_in, d_out


def weight(w, bits, channel_axis=-1):
  """``(W_q, codes, sigma)`` of SPEC 3.1 per output channel, float64."""
  w = np.moveaxis(np.asarray(w, np.float64), channel_axis, -1)
  levels = 2 ** bits - 1
  gamma = levels / 2 ** (bits - 1)
  flat = w.reshape(-1, w.shape[-1])
  sigma = gamma * np.mean(np.abs(flat), axis=0)
  codes = np.round((np.clip(flat / sigma, -1, 1) + 1) * levels / 2)   # numpy rounds half to even
  w_q = sigma * (2 * codes / levels - 1)
  shape = w.shape
  return (np.moveaxis(w_q.reshape(shape), -1, channel_axis),
          np.moveaxis(codes.reshape(shape), -1, channel_axis), sigma)


def activation_signed(x, offset, intervals, input_scale, output_scale, bits, upstream):
  """Forward value and every gradient of sum(upstream * y) for the signed
  extension ``y = beta2 * (Delta * k - 1)``, float64, element by element: the
  segment table of SPEC 2.3 for ``x``, ``s``, ``a``, ``beta1``, and
  ``Delta * k - 1`` for ``beta2``."""
  x = np.asarray(x, np.float64)
  g = np.broadcast_to(np.asarray(upstream, np.float64), x.shape)
  a = np.asarray(intervals, np.float64)
  s, b1, b2 = float(offset), float(input_scale), float(output_scale)
  levels = 2 ** bits - 1
  spacing = 2.0 / levels
  clamped = np.where(a > FLOOR, a, FLOOR)
  ends = s + np.concatenate([[0.0], np.cumsum(clamped)])
  y = np.zeros_like(x)
  dx = np.zeros_like(x)
  d_offset, d_in, d_out = 0.0, 0.0, 0.0
  d_intervals = np.zeros(levels)
  for idx in np.ndindex(x.shape):
    u = b1 * x[idx]
    k = sum(1 for i in range(levels) if u > ends[i] + clamped[i] / 2)
    y[idx] = b2 * (spacing * k - 1)
    d_out += g[idx] * (spacing * k - 1)
    segment = [i for i in range(1, levels + 1) if ends[i - 1] < u <= ends[i]]
    if not segment:
      continue
    i = segment[0]
    slope = spacing / clamped[i - 1]
    dx[idx] = g[idx] * b2 * slope * b1
    d_offset -= g[idx] * b2 * slope
    d_intervals[:i - 1] -= g[idx] * b2 * slope
    d_intervals[i - 1] -= g[idx] * b2 * slope * (u - ends[i - 1]) / clamped[i - 1]
    d_in += g[idx] * b2 * slope * x[idx]
  d_intervals[a <= FLOOR] = 0.0
  return y, dx, d_offset, d_intervals, d_in, d_out
