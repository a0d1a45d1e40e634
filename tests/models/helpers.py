"""Helpers for the model tests: cached abstract models and cheap materialisation."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from n2uq_jax import models, nn


def policy_for(bits: int | None) -> nn.QuantPolicy | None:
  """W{bits}A{bits} N2UQ everywhere, or ``None`` (full precision)."""
  return None if bits is None else nn.QuantPolicy(default=nn.QuantSpec.uniform_bits(bits))


@functools.lru_cache(maxsize=None)
def abstract_model(name: str, bits: int | None = None, num_classes: int = 1000,
                   **kwargs) -> nnx.Module:
  """The model from ``nnx.eval_shape`` (shapes only; nothing is initialised).
  Cached: callers must not mutate it (use :func:`materialize`)."""
  return nnx.eval_shape(lambda: models.create_model(
      name, num_classes=num_classes, policy=policy_for(bits), rngs=nnx.Rngs(0), **kwargs))


def path_str(path) -> str:
  return '/'.join(str(p) for p in path)


def variables(model, kind=nnx.Variable) -> dict[str, nnx.Variable]:
  return {path_str(p): v for p, v in nnx.iter_graph(model) if isinstance(v, kind)}


def modules(model, kind) -> dict[str, nnx.Module]:
  return {'.'.join(str(x) for x in p): m for p, m in nnx.iter_graph(model) if isinstance(m, kind)}


def materialize(abstract: nnx.Module, fill) -> nnx.Module:
  """A concrete copy of ``abstract`` whose variable at ``path`` holds
  ``fill(path, shape, dtype)``, without running any random initialiser (fast)."""
  model = nnx.clone(abstract)
  for path, var in variables(model).items():
    value = var.get_value()
    var.set_value(jnp.asarray(fill(path, value.shape, value.dtype), value.dtype))
  return model


QUANTIZER_INIT = {'offset': 0.0, 'input_scale': 1.0, 'output_scale': 1.0, 'alpha': 2.0}


def random_concrete(abstract: nnx.Module, seed: int) -> nnx.Module:
  """A concrete copy of ``abstract`` filled from numpy, without compiling any
  initialiser: kernels ``N(0, 1/fan_in)``; RPReLU and BatchNorm variables random
  (variances positive), so that the order of operations shows in the output;
  quantizer parameters at their SPEC 2.1 initial values (intervals ``2/K``)."""
  rng = np.random.default_rng(seed)

  def fill(path, shape, dtype):
    leaf = path.rsplit('/', 1)[-1]
    if 'input_quantizer' in path:
      return np.full(shape, 2.0 / shape[0]) if leaf == 'intervals' else np.full(
          shape, QUANTIZER_INIT[leaf])
    if leaf == 'kernel':
      return rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
    if leaf == 'var':
      return rng.uniform(0.5, 2.0, shape)
    if leaf == 'slope':
      return rng.uniform(-0.5, 1.5, shape)
    return rng.normal(0, 0.5, shape)

  return materialize(abstract, fill)
