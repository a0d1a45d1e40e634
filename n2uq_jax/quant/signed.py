"""Signed N2UQ activation quantizer: an extension of this project, not in the paper.

N2UQ's output levels ``beta2 * Delta * k`` are non-negative (SPEC 2.2). That
suits the inputs of the paper's convolutions, which follow a (R)PReLU, but it
zeroes the negative half of a transformer's LayerNorm outputs. The signed form
keeps the learned thresholds and the G-STE of SPEC 2.3 unchanged and shifts the
uniform output levels down by one output scale::

  k = #{i : beta1 * x > T_i}                   (as in SPEC 2.2)
  y = beta2 * (Delta * k - 1)                  levels beta2 * {-1, -1 + Delta, ..., 1}

Gradients (``g`` the upstream gradient):

- ``x``, ``s``, ``a``, ``beta1``: exactly the G-STE gradients of SPEC 2.3 (the
  shift does not depend on them);
- ``beta2``: ``sum g * (Delta * k - 1)`` (SPEC 2.3's ``Delta * k`` minus one).

Initialisation (:func:`init_n2uq_activation_signed`): ``s = -1``, ``a_i = Delta``,
``beta1 = beta2 = 1``. The thresholds then start below zero, at
``-1 + Delta / 2 + (i - 1) Delta``, and the quantizer is uniform
round-to-nearest on ``[-1, 1]`` with an STE of slope 1 inside ``(-1, 1]``, the
signed counterpart of SPEC 2.1's "degenerates to STE" property. Like the
unsigned levels, the ``2**bits`` signed levels are symmetric and (for an even
level count) exclude zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from n2uq_jax.quant import validation
from n2uq_jax.quant.activation import (
    ActivationParams,
    level_spacing,
    n2uq_activation,
    num_thresholds,
)


def init_n2uq_activation_signed(bits: int, dtype=jnp.float32) -> ActivationParams:
  """Initial parameters of the signed quantizer: ``s = -1``, ``a_i = Delta``,
  ``beta1 = beta2 = 1`` (uniform rounding on ``[-1, 1]``)."""
  k = num_thresholds(bits)
  return ActivationParams(
      offset=jnp.full((), -1.0, dtype),
      intervals=jnp.full((k,), level_spacing(bits), dtype),
      input_scale=jnp.ones((), dtype),
      output_scale=jnp.ones((), dtype),
  )


def n2uq_activation_signed(x, offset, intervals, input_scale, output_scale, *,
                           bits) -> jax.Array:
  """Signed N2UQ activation quantizer ``y = beta2 * (Delta * k - 1)`` with G-STE.

  Args:
    x: floating array of any shape; bfloat16/float16 inputs are quantized in
      float32 arithmetic and returned in their own dtype.
    offset, intervals, input_scale, output_scale: as in
      :func:`n2uq_jax.quant.n2uq_activation` (shapes ``()``, ``(2**bits - 1,)``,
      ``()``, ``()``).
    bits: bit-width in 1..8 (keyword only, static).

  Returns:
    Array shaped and typed like ``x`` on the levels
    ``output_scale * (Delta * k - 1)``, ``k`` in ``0..2**bits - 1``.

  Raises:
    ValueError: as :func:`n2uq_jax.quant.n2uq_activation`.
  """
  validation.check_floating(x, 'x')
  x = jnp.asarray(x)
  dtype = validation.compute_dtype(x, offset, intervals, input_scale, output_scale)
  unsigned = n2uq_activation(x.astype(dtype), offset, intervals, input_scale, output_scale,
                             bits=bits)
  return (unsigned - jnp.asarray(output_scale).astype(dtype)).astype(x.dtype)
