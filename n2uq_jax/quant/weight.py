"""N2UQ entropy-preserving weight quantizer (SPEC.md section 3.1).

Per output channel ``o`` of a kernel ``W`` (the channel axis is the last axis
for HWIO kernels)::

  gamma   = (2**n - 1) / 2**(n - 1)
  sigma_o = gamma * mean |W[o]|                      (a constant: stop-gradient)
  W_hat   = W / sigma_o
  q       = round((clip(W_hat, -1, 1) + 1) * K / 2)  (half to even), K = 2**n - 1
  W_q     = sigma_o * (2 q / K - 1)
  dL/dW   = dL/dW_q / sigma_o                        (identity STE on W_hat, no clip mask)

The 2**n levels are symmetric and exclude zero; a weight of exactly 0 maps to
``+sigma_o / K``. For uniformly distributed weights every level receives the
same share of weights, which maximises the entropy of the codes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from n2uq_jax.quant import validation


def entropy_preserving_gamma(bits: int) -> float:
  """``gamma = (2**bits - 1) / 2**(bits - 1)``: 1.5, 1.75, 1.875 for 2, 3, 4 bits."""
  bits = validation.check_bits(bits)
  return (2 ** bits - 1) / 2 ** (bits - 1)


def _reduce_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
  axis = validation.channel_axis_index(ndim, channel_axis)
  return tuple(i for i in range(ndim) if i != axis)


def _prepare(w, bits, channel_axis):
  bits = validation.check_bits(bits)
  validation.check_floating(w, 'w')
  w = jnp.asarray(w)
  if w.ndim == 0:
    raise ValueError('w must have at least one axis (the channel axis), got a scalar')
  return w, bits, _reduce_axes(w.ndim, channel_axis)


def _scale_and_codes(w, bits, reduce_axes):
  """``(sigma, q)`` in the compute dtype; ``sigma`` keeps the reduced axes as size 1."""
  dtype = validation.compute_dtype(w)
  wf = w.astype(dtype)
  levels = 2 ** bits - 1
  scale = entropy_preserving_gamma(bits) * jnp.mean(jnp.abs(wf), axis=reduce_axes,
                                                    keepdims=True)
  # An all-zero channel has scale 0; dividing by 1 instead keeps it finite
  # (its weights all map to the level +0 * 1/K = 0).
  safe_scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  normalized = jnp.clip(wf / safe_scale, -1, 1)
  codes = jnp.round((normalized + 1) * (levels / 2))
  return scale, safe_scale, codes


def n2uq_weight_codes(w, *, bits, channel_axis=-1):
  """Integer codes and per-channel scales of the N2UQ weight quantizer (SPEC 3.1, 8).

  Args:
    w: floating kernel of any rank, e.g. HWIO ``(kh, kw, in/groups, out)``.
    bits: bit-width in 1..8.
    channel_axis: the output-channel axis (statistics are per output channel).

  Returns:
    ``(codes, scale)``: ``codes`` uint8 shaped like ``w`` with values in
    ``0..2**bits - 1``; ``scale`` (float32, or float64 for float64 ``w``) with
    the shape of ``w`` reduced to size 1 on every axis but ``channel_axis``,
    so that ``scale * (2 * codes / (2**bits - 1) - 1) == n2uq_weight(w)``
    bit for bit in IEEE arithmetic (NumPy; compute ``2 * codes`` in a wider
    type than uint8 for 8 bits). XLA may round that expression differently in
    the last bit, since it divides by a constant through its reciprocal.
  """
  w, bits, reduce_axes = _prepare(w, bits, channel_axis)
  scale, _, codes = _scale_and_codes(w, bits, reduce_axes)
  return codes.astype(jnp.uint8), scale


def n2uq_weight(w, *, bits, channel_axis=-1) -> jax.Array:
  """Entropy-preserving N2UQ weight quantizer with its exact STE (SPEC 3.1).

  Args:
    w: floating kernel of any rank; bfloat16 is quantized in float32.
    bits: bit-width in 1..8 (keyword only, static).
    channel_axis: the output-channel axis, ``-1`` for HWIO kernels.

  Returns:
    ``sigma_o * (2 q / K - 1)`` shaped and typed like ``w``. Its gradient is
    the upstream gradient divided by ``sigma_o``, everywhere (no clip mask).

  Non-finite ``w`` (tested in tests/quant/test_properties.py): a NaN or inf makes its
  channel's ``sigma_o`` NaN or inf, and so every output of that channel NaN (a NaN
  in the channel) or +-inf (an inf, no NaN); the other channels are unaffected.
  :func:`n2uq_weight_codes` of such a channel are unspecified. The gradient of a
  channel whose ``sigma_o`` is inf is 0; of one whose ``sigma_o`` is NaN, the upstream
  gradient unscaled (the all-zero-channel guard divides by 1).
  """
  w, bits, reduce_axes = _prepare(w, bits, channel_axis)
  return _n2uq_weight(bits, reduce_axes, w)


def _dequantize(scale, codes, bits):
  """``scale * (2 q / K - 1)`` with the level ``2 q / K - 1`` correctly rounded.

  XLA evaluates a division by a constant as a multiplication by its
  reciprocal, which can differ from IEEE division in the last bit; the levels
  are therefore tabulated with NumPy, so that the result equals the formula
  evaluated with exact IEEE arithmetic bit for bit.
  """
  dtype = np.dtype(scale.dtype)
  levels = 2 ** bits - 1
  table = 2 * np.arange(levels + 1, dtype=dtype) / dtype.type(levels) - 1
  return scale * jnp.asarray(table)[codes.astype(jnp.int32)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _n2uq_weight(bits, reduce_axes, w):
  scale, _, codes = _scale_and_codes(w, bits, reduce_axes)
  return _dequantize(scale, codes, bits).astype(w.dtype)


def _n2uq_weight_fwd(bits, reduce_axes, w):
  scale, safe_scale, codes = _scale_and_codes(w, bits, reduce_axes)
  return _dequantize(scale, codes, bits).astype(w.dtype), safe_scale


def _n2uq_weight_bwd(bits, reduce_axes, safe_scale, upstream):
  del bits, reduce_axes
  return ((upstream.astype(safe_scale.dtype) / safe_scale).astype(upstream.dtype),)


_n2uq_weight.defvjp(_n2uq_weight_fwd, _n2uq_weight_bwd)
