"""Shared pieces of the export tests: non-trivial random parameters for a model."""

import numpy as np
from flax import nnx

from n2uq_jax import nn, quant


def randomize(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """Gives BatchNorm, RPReLU and the quantizers random values that exercise every
  folding rule: about a fifth of the BatchNorm scales and a tenth of the PReLU
  slopes negative, about a third of the quantizer input scales negative, uneven
  quantizer intervals."""
  rng = np.random.default_rng(seed)

  def put(variable, value):
    variable.set_value(np.asarray(value, np.float32).reshape(variable.get_value().shape))

  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      c = node.num_features
      sign = np.where(rng.random(c) < 0.2, -1.0, 1.0)
      put(node.scale, sign * rng.uniform(0.5, 1.5, c))
      put(node.bias, rng.normal(0, 0.3, c))
      put(node.mean, rng.normal(0, 0.2, c))
      put(node.var, rng.uniform(0.5, 2.0, c))
    elif isinstance(node, nn.RPReLU):
      c = node.num_features
      put(node.bias_in, rng.normal(0, 0.1, c))
      put(node.slope, np.where(rng.random(c) < 0.1, -0.2, rng.uniform(0.0, 0.5, c)))
      put(node.bias_out, rng.normal(0, 0.1, c))
    elif isinstance(node, nn.N2UQActivation):
      k = 2 ** node.bits - 1
      put(node.offset, rng.normal(0, 0.1))
      put(node.intervals, quant.level_spacing(node.bits) * rng.uniform(0.4, 1.6, k))
      put(node.input_scale, rng.uniform(0.8, 1.25) * (-1 if rng.random() < 0.3 else 1))
      put(node.output_scale, rng.uniform(0.8, 1.25))
    elif isinstance(node, nn.PACTActivation):
      put(node.alpha, rng.uniform(1.5, 3.0))
  return model
