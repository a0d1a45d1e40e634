"""Random, distinct parameters for N2UQ activation quantizer modules, and their
raw variables in the argument order of ``quant.n2uq_activation``."""

import jax.numpy as jnp
import numpy as np

from n2uq_jax import nn


def randomize_n2uq(quantizer: nn.N2UQActivation, seed: int) -> None:
  """Distinct random parameters: the two scales are far apart, the intervals unequal."""
  rng = np.random.default_rng(seed)
  k = quantizer.intervals[...].shape[0]
  dtype = quantizer.intervals[...].dtype
  quantizer.offset[...] = jnp.asarray(rng.uniform(-0.2, 0.2), dtype)
  quantizer.intervals[...] = jnp.asarray(2 / k * rng.uniform(0.5, 1.5, k), dtype)
  quantizer.input_scale[...] = jnp.asarray(rng.uniform(0.6, 0.9), dtype)
  quantizer.output_scale[...] = jnp.asarray(rng.uniform(1.3, 1.8), dtype)


def raw_n2uq_params(quantizer: nn.N2UQActivation):
  """The quantizer's variables in the order of ``quant.n2uq_activation``."""
  return (quantizer.offset[...], quantizer.intervals[...], quantizer.input_scale[...],
          quantizer.output_scale[...])
