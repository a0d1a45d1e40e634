"""Helpers of the interop tests."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def jax_logits(model: nnx.Module, images_nchw: np.ndarray) -> np.ndarray:
  """``model`` on NCHW images (transposed to NHWC), jitted: one compilation of
  the whole network is several times faster than eager op-by-op dispatch."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return np.asarray(forward(state, jnp.asarray(images_nchw.transpose(0, 2, 3, 1))))


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  """``max |got - want| / max |want|``."""
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
