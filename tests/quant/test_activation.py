"""N2UQ activation quantizer: SPEC 2.3 test vector, an independent NumPy
reference on random cases (ties and clamped intervals included), invariants,
dtypes and errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2uq_jax import quant
from tests.quant import reference

SPEC_X = [-0.5, 0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 2.0]
SPEC_PARAMS = (0.05, [0.3, 0.5, 0.2], 0.8, 1.4)


def _params(offset, intervals, input_scale, output_scale, dtype=jnp.float64):
  return tuple(jnp.asarray(v, dtype) for v in (offset, intervals, input_scale, output_scale))


@functools.partial(jax.jit, static_argnums=2)
def _value_and_grads(x, params, bits, upstream):
  def loss(x, *params):
    return jnp.sum(quant.n2uq_activation(x, *params, bits=bits) * upstream)
  y = quant.n2uq_activation(x, *params, bits=bits)
  grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(x, *params)
  return (y, *grads)


def test_spec_test_vector(x64):
  x = jnp.asarray(SPEC_X, jnp.float64)
  y, dx, d_offset, d_intervals, d_in, d_out = _value_and_grads(
      x, _params(*SPEC_PARAMS), 2, jnp.ones_like(x))
  np.testing.assert_allclose(y, [0, 0, 0, 0.933333, 0.933333, 0.933333, 1.866667,
                                 1.866667, 2.8, 2.8], atol=1e-6)
  np.testing.assert_allclose(dx, [0, 0, 2.488889, 2.488889, 1.493333, 1.493333,
                                  1.493333, 3.733333, 3.733333, 0], atol=1e-6)
  np.testing.assert_allclose(d_offset, -21.155556, atol=1e-6)
  np.testing.assert_allclose(d_intervals, [-17.214815, -11.685333, -5.133333], atol=1e-6)
  np.testing.assert_allclose(d_in, 16.364444, atol=1e-6)
  np.testing.assert_allclose(d_out, 8.666667, atol=1e-6)


def _random_case(bits, seed):
  rng = np.random.default_rng(seed)
  k = 2 ** bits - 1
  intervals = rng.uniform(0.05, 0.8, k)
  if k > 1 and seed % 2 == 0:
    intervals[rng.integers(k)] = rng.choice([5e-4, -0.2, 1e-3])   # clamped entries
  offset = rng.uniform(-0.3, 0.3)
  input_scale = rng.uniform(0.5, 1.5) * rng.choice([1, 1, -1])
  output_scale = rng.uniform(0.5, 2.0)
  x = rng.normal(0.5, 1.5, (6, 7))
  upstream = rng.normal(size=x.shape)
  return x, (offset, intervals, input_scale, output_scale), upstream


@pytest.mark.parametrize('bits', [1, 2, 3, 4])
@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_matches_numpy_reference_float64(x64, bits, seed):
  x, params, upstream = _random_case(bits, seed)
  got = _value_and_grads(jnp.asarray(x), _params(*params), bits, jnp.asarray(upstream))
  want = reference.activation(x, *params, bits, upstream)
  for name, g, w in zip(['y', 'dx', 'offset', 'intervals', 'input_scale', 'output_scale'],
                        got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize('bits', [1, 2, 3, 4])
def test_exact_ties(x64, bits):
  """Dyadic parameters make every breakpoint and threshold exact: the forward
  uses a strict '>', segments are left-open and right-closed."""
  k = 2 ** bits - 1
  intervals = np.full(k, 0.25)
  offset, input_scale, output_scale = 0.0, 1.0, 1.5
  ends = offset + np.concatenate([[0.0], np.cumsum(intervals)])
  thresholds = ends[:-1] + intervals / 2
  x = np.concatenate([ends, thresholds, [-1.0, 0.0, 0.0, ends[-1] + 1]])
  upstream = np.linspace(0.5, 1.5, x.size)
  got = _value_and_grads(jnp.asarray(x), _params(offset, intervals, input_scale, output_scale),
                         bits, jnp.asarray(upstream))
  want = reference.activation(x, offset, intervals, input_scale, output_scale, bits, upstream)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-12, atol=1e-12)
  dx = np.asarray(got[1])
  assert dx[0] == 0.0                        # u == d_0: no gradient (left-open)
  assert dx[k] == pytest.approx(upstream[k] * output_scale * (2 / k) / 0.25)  # u == d_K: in segment K
  codes = quant.n2uq_activation_codes(jnp.asarray(thresholds), *_params(
      offset, intervals, input_scale, output_scale)[:3], bits=bits)
  np.testing.assert_array_equal(codes, np.arange(k))   # u == T_i does not reach level i


def test_exact_zero_inputs_at_initialisation(x64):
  """After ReLU and max-pool many inputs are exactly 0 == d_0 at initialisation."""
  params = quant.init_n2uq_activation(2, jnp.float64)
  x = jnp.zeros((4,), jnp.float64)
  grads = jax.grad(lambda x, *p: jnp.sum(quant.n2uq_activation(x, *p, bits=2)),
                   argnums=(0, 1, 2, 3, 4))(x, *params)
  np.testing.assert_array_equal(grads[0], 0)
  assert grads[1] == 0 and grads[3] == 0
  np.testing.assert_array_equal(grads[2], 0)


def test_clamped_interval_gets_zero_gradient(x64):
  params = _params(0.0, [0.5, 1e-3, -0.1], 1.0, 1.0)
  x = jnp.linspace(-0.5, 1.5, 41)
  d_intervals = jax.grad(
      lambda a: jnp.sum(quant.n2uq_activation(x, params[0], a, params[2], params[3], bits=2)))(
          params[1])
  assert d_intervals[0] != 0
  np.testing.assert_array_equal(d_intervals[1:], 0)


@pytest.mark.parametrize('bits', [1, 2, 3, 4, 8])
def test_initial_parameters_are_uniform_rounding_with_unit_ste(bits):
  params = quant.init_n2uq_activation(bits)
  chex_x = jnp.asarray(np.random.default_rng(bits).uniform(-1, 3, 4096), jnp.float32)
  spacing = 2 / (2 ** bits - 1)
  y = quant.n2uq_activation(chex_x, *params, bits=bits)
  want = np.clip(np.round(np.asarray(chex_x) / spacing), 0, 2 ** bits - 1) * spacing
  np.testing.assert_allclose(y, want, atol=1e-6)
  dx = jax.grad(lambda x: jnp.sum(quant.n2uq_activation(x, *params, bits=bits)))(chex_x)
  inside = (chex_x > 0) & (chex_x <= 2)
  np.testing.assert_allclose(dx, np.where(inside, 1.0, 0.0), atol=1e-5)


@pytest.mark.parametrize('bits', [1, 2, 3, 4])
def test_monotone_and_on_uniform_levels(bits):
  _, params, _ = _random_case(bits, 7)
  offset, intervals, input_scale, output_scale = _params(*params, dtype=jnp.float32)
  input_scale = jnp.abs(input_scale)
  x = jnp.linspace(-3, 6, 5001)
  y = np.asarray(quant.n2uq_activation(x, offset, intervals, input_scale, output_scale, bits=bits))
  assert np.all(np.diff(y) >= 0)
  levels = y / (float(output_scale) * 2 / (2 ** bits - 1))
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert np.round(levels).min() == 0 and np.round(levels).max() == 2 ** bits - 1
  codes = quant.n2uq_activation_codes(x, offset, intervals, input_scale, bits=bits)
  assert codes.dtype == jnp.int32
  np.testing.assert_array_equal(codes, np.round(levels).astype(np.int32))


def test_float32_matches_float64_reference():
  x, params, upstream = _random_case(3, 11)
  got = _value_and_grads(jnp.asarray(x, jnp.float32), _params(*params, dtype=jnp.float32), 3,
                         jnp.asarray(upstream, jnp.float32))
  params32 = tuple(np.asarray(p, np.float32) for p in params)
  want = reference.activation(np.asarray(x, np.float32), *params32, 3, upstream)
  for g, w in zip(got, want):
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=2e-4)


def test_bfloat16_input_is_quantized_in_float32():
  x, params, upstream = _random_case(2, 5)
  params = _params(*params, dtype=jnp.float32)
  x16 = jnp.asarray(x, jnp.bfloat16)
  y16 = quant.n2uq_activation(x16, *params, bits=2)
  assert y16.dtype == jnp.bfloat16
  y32 = quant.n2uq_activation(x16.astype(jnp.float32), *params, bits=2)
  np.testing.assert_array_equal(np.asarray(y16), np.asarray(y32.astype(jnp.bfloat16)))
  grads = jax.grad(lambda x, *p: jnp.sum(quant.n2uq_activation(x, *p, bits=2).astype(jnp.float32)),
                   argnums=(0, 1, 2))(x16, *params)
  assert grads[0].dtype == jnp.bfloat16 and grads[2].dtype == jnp.float32


@pytest.mark.parametrize('bits', [0, 9, -1, 2.0, True, '2'])
def test_bad_bits(bits):
  with pytest.raises(ValueError, match='bits'):
    quant.n2uq_activation(jnp.ones(3), *quant.init_n2uq_activation(2), bits=bits)


def test_bad_arguments():
  params = quant.init_n2uq_activation(2)
  with pytest.raises(ValueError, match=r'intervals.*\(7,\).*\(3,\)'):
    quant.n2uq_activation(jnp.ones(3), *params, bits=3)
  with pytest.raises(ValueError, match='floating'):
    quant.n2uq_activation(jnp.ones(3, jnp.int32), *params, bits=2)
  with pytest.raises(ValueError, match='offset'):
    quant.n2uq_activation(jnp.ones(3), jnp.zeros(1), *params[1:], bits=2)
  with pytest.raises(ValueError, match='bits'):
    quant.init_n2uq_activation(9)


def test_thresholds_and_init():
  params = quant.init_n2uq_activation(3)
  np.testing.assert_allclose(params.intervals, np.full(7, 2 / 7), rtol=1e-7)
  assert params.offset == 0 and params.input_scale == 1 and params.output_scale == 1
  np.testing.assert_allclose(quant.thresholds(params.offset, params.intervals),
                             (np.arange(7) + 0.5) * 2 / 7, rtol=1e-6)
