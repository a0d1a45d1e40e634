"""Argument checks shared by every quantizer and by the layers and rules that name bit-widths:
clear errors before any tracing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MIN_BITS = 1
MAX_BITS = 8


def check_bits(bits) -> int:
  """Returns ``bits`` as an int, or raises ``ValueError`` if it is not in 1..8."""
  if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
    raise ValueError(
        f'bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}')
  if not MIN_BITS <= int(bits) <= MAX_BITS:
    raise ValueError(
        f'bits must be in {MIN_BITS}..{MAX_BITS}, got {int(bits)}')
  return int(bits)


def check_floating(x, name: str) -> None:
  """Raises ``ValueError`` unless ``x`` has a floating-point dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f'{name} must have a floating-point dtype (float32, float64, bfloat16 '
        f'or float16), got {dtype}')


def check_shape(x, shape: tuple[int, ...], name: str) -> None:
  """Raises ``ValueError`` unless ``x`` has exactly ``shape``."""
  actual = tuple(np.shape(x))
  if actual != tuple(shape):
    raise ValueError(f'{name} must have shape {tuple(shape)}, got {actual}')


def compute_dtype(*arrays):
  """The dtype quantizer arithmetic runs in: at least float32, float64 if any
  argument is float64 (bfloat16 and float16 inputs are computed in float32)."""
  dtypes = [jnp.result_type(a) for a in arrays]
  return jnp.result_type(jnp.float32, *[
      d for d in dtypes if jnp.issubdtype(d, jnp.floating)])


def channel_axis_index(ndim: int, channel_axis: int) -> int:
  """Normalises ``channel_axis`` for an array of rank ``ndim``."""
  if not isinstance(channel_axis, (int, np.integer)) or not -ndim <= channel_axis < ndim:
    raise ValueError(
        f'channel_axis must be an integer in {-ndim}..{ndim - 1} for an array '
        f'of rank {ndim}, got {channel_axis!r}')
  return int(channel_axis) % ndim
