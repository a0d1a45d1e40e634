"""Signed N2UQ activation quantizer (an extension beyond the paper): an
independent NumPy float64 reference on random cases, the initial parameters,
and its relation to the unsigned quantizer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2uq_jax import quant
from tests.quant import reference


@functools.partial(jax.jit, static_argnums=2)
def _value_and_grads(x, params, bits, upstream):
  def loss(x, *params):
    return jnp.sum(quant.n2uq_activation_signed(x, *params, bits=bits) * upstream)
  y = quant.n2uq_activation_signed(x, *params, bits=bits)
  return (y, *jax.grad(loss, argnums=(0, 1, 2, 3, 4))(x, *params))


def _random_case(bits, seed):
  rng = np.random.default_rng(seed)
  spacing = 2 / (2 ** bits - 1)
  intervals = spacing * rng.uniform(0.5, 1.5, 2 ** bits - 1)
  if bits > 1:
    intervals[rng.integers(2 ** bits - 1)] = 5e-4      # one clamped interval
  params = (rng.uniform(-1.3, -0.7), intervals, rng.uniform(0.7, 1.3), rng.uniform(0.6, 1.4))
  x = rng.normal(0.0, 1.2, (6, 7))
  x[0, :3] = params[0] / params[2]                      # inputs exactly at d_0
  return x, params, rng.normal(size=x.shape)


@pytest.mark.parametrize('bits', [1, 2, 3, 4])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_numpy_reference_float64(x64, bits, seed):
  x, params, upstream = _random_case(bits, seed)
  got = _value_and_grads(jnp.asarray(x), tuple(jnp.asarray(p, jnp.float64) for p in params),
                         bits, jnp.asarray(upstream))
  want = reference.activation_signed(x, *params, bits, upstream)
  for name, g, w in zip(['y', 'dx', 'offset', 'intervals', 'input_scale', 'output_scale'],
                        got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize('bits', [2, 3, 4])
def test_initial_parameters_are_uniform_rounding_on_minus_one_one(bits):
  params = quant.init_n2uq_activation_signed(bits)
  levels = 2 ** bits - 1
  np.testing.assert_allclose(quant.thresholds(params.offset, params.intervals)[0],
                             -1 + 1 / levels, rtol=1e-6)
  x = jnp.linspace(-1.5, 1.5, 301)
  y = quant.n2uq_activation_signed(x, *params, bits=bits)
  want = np.round((np.clip(np.asarray(x, np.float64), -1, 1) + 1) * levels / 2) * 2 / levels - 1
  inside = np.abs(np.abs((np.asarray(x) + 1) * levels / 2 % 1) - 0.5) > 1e-4   # not at a tie
  np.testing.assert_allclose(np.asarray(y)[inside], want[inside], atol=1e-6)
  assert float(y.min()) == -1.0 and abs(float(y.max()) - 1.0) < 1e-6
  slope = jax.vmap(jax.grad(lambda v: quant.n2uq_activation_signed(v, *params, bits=bits)))(x)
  np.testing.assert_allclose(slope, np.where((x > -1) & (x <= 1), 1.0, 0.0), atol=1e-5)


def test_is_the_unsigned_quantizer_shifted_by_the_output_scale():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
  params = quant.ActivationParams(jnp.float32(-0.9), jnp.asarray([0.5, 0.8, 0.6], jnp.float32),
                                  jnp.float32(1.1), jnp.float32(0.7))
  signed = quant.n2uq_activation_signed(x, *params, bits=2)
  unsigned = quant.n2uq_activation(x, *params, bits=2)
  np.testing.assert_allclose(signed, unsigned - 0.7, atol=1e-6)
  assert float(signed.min()) < 0


def test_bfloat16_input_keeps_its_dtype():
  x = jnp.linspace(-2, 2, 17, dtype=jnp.bfloat16)
  y = quant.n2uq_activation_signed(x, *quant.init_n2uq_activation_signed(2), bits=2)
  assert y.dtype == jnp.bfloat16


def test_bad_arguments():
  params = quant.init_n2uq_activation_signed(2)
  with pytest.raises(ValueError, match='bits'):
    quant.n2uq_activation_signed(jnp.ones(3), *params, bits=9)
  with pytest.raises(ValueError, match='intervals'):
    quant.n2uq_activation_signed(jnp.ones(3), *params, bits=3)
  with pytest.raises(ValueError, match='floating'):
    quant.n2uq_activation_signed(jnp.ones(3, jnp.int32), *params, bits=2)
