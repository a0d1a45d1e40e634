"""Property-based tests (hypothesis) of the public ``n2uq_jax.quant`` API over shapes
(empty, rank 0..12), dtypes (float16, bfloat16, float32, float64; integers rejected),
bit-widths, and non-finite inputs, whose behaviour the docstrings of
``n2uq_activation`` and ``n2uq_weight`` document. The activation codes are checked
against NumPy float64 thresholds written from SPEC 2.1/2.2 (the 1e-3 floor as a
select), the weight codes and scales against SPEC 3.1 in NumPy; examples are few
(every new shape compiles)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from n2uq_jax import quant

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
FLOAT_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)

shapes = hnp.array_shapes(min_dims=0, max_dims=12, min_side=0, max_side=3)
bits_values = st.integers(1, 8)


def _activation_params(bits, seed):
  """A learned-looking parameter set: random positive intervals, offset and scales."""
  rng = np.random.default_rng(seed)
  k = 2 ** bits - 1
  return quant.ActivationParams(
      offset=jnp.float32(rng.uniform(-0.5, 0.5)),
      intervals=jnp.asarray(rng.uniform(0.0, 2.0 / k, size=k), jnp.float32),
      input_scale=jnp.float32(rng.uniform(0.5, 2.0)),
      output_scale=jnp.float32(rng.uniform(0.5, 2.0)))


def _inputs(shape, seed, dtype):
  values = np.random.default_rng(seed).normal(size=shape) * 1.5
  return jnp.asarray(values, dtype)


INTERVAL_FLOOR = 1e-3
TIE = 1e-5
"""Relative distance to a threshold (or to a rounding half-point) within which the
float32 arithmetic of the quantizer and the float64 reference may round to
neighbouring codes; such near-ties are counted, and may be one level off."""


def _reference_thresholds(offset, intervals):
  """NumPy float64 thresholds of SPEC 2.1/2.2: ``a_bar = where(a > 1e-3, a, 1e-3)``
  (a select), ``d_i = s + sum_{j<=i} a_bar_j``, ``T_i = d_{i-1} + a_bar_i / 2``."""
  a = np.asarray(intervals, np.float64)
  clamped = np.where(a > INTERVAL_FLOOR, a, INTERVAL_FLOOR)
  ends = float(offset) + np.concatenate([[0.0], np.cumsum(clamped)])
  return ends[:-1] + clamped / 2


def _assert_codes_match(got, expected, distance, what):
  """Equal codes, except where ``distance`` (to the nearest decision point, relative)
  is under TIE: there one level off at most."""
  got = np.asarray(got, np.int64)
  differs = got != expected
  near_tie = distance <= TIE
  assert np.all(np.abs(got - expected)[differs] <= 1), what
  assert not np.any(differs & ~near_tie), (
      f'{what}: {int(np.sum(differs & ~near_tie))} codes differ away from a tie; '
      f'got {got[differs & ~near_tie][:5]}, expected {expected[differs & ~near_tie][:5]}')


def _reference_codes(x, params):
  """NumPy float64 ``k = #{i : beta1 x > T_i}`` with the thresholds of
  :func:`_reference_thresholds`, and each element's relative distance to the
  nearest threshold."""
  t = _reference_thresholds(params.offset, params.intervals)
  u = np.float64(params.input_scale) * np.asarray(x, np.float32).astype(np.float64)
  codes = (u[..., None] > t).sum(-1)
  distance = np.min(np.abs(u[..., None] - t), axis=-1, initial=np.inf) / np.maximum(
      1.0, np.abs(u))
  return codes, distance


def _reference_weight(w, bits):
  """NumPy float64 SPEC 3.1 per output channel (last axis): ``sigma = gamma mean|W|``,
  ``q = round((clip(W / sigma, -1, 1) + 1) K / 2)`` half to even (an all-zero channel
  divides by 1); returns ``(codes, sigma, distance of (.)K/2 to a half-integer)``."""
  wf = np.asarray(np.asarray(w, np.float32) if np.asarray(w).dtype != np.float64 else w,
                  np.float64)
  levels = 2 ** bits - 1
  gamma = (2 ** bits - 1) / 2 ** (bits - 1)
  axes = tuple(range(wf.ndim - 1))
  count = np.prod([wf.shape[axis] for axis in axes])
  with np.errstate(invalid='ignore'):  # a channel with no weights: 0 / 0, NaN as in JAX
    sigma = gamma * np.sum(np.abs(wf), axis=axes, keepdims=True) / count
  safe = np.where(sigma > 0, sigma, 1.0)
  position = (np.clip(wf / safe, -1, 1) + 1) * (levels / 2)
  distance = np.abs(np.abs(position - np.floor(position) - 0.5)) / np.maximum(1.0, position)
  return np.round(position), sigma, distance


@SETTINGS
@given(shape=shapes, bits=bits_values, seed=st.integers(0, 2 ** 16),
       dtype=st.sampled_from(FLOAT_DTYPES))
def test_activation_shapes_dtypes_levels(shape, bits, seed, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    params = _activation_params(bits, seed)
    x = _inputs(shape, seed, dtype)
    y = quant.n2uq_activation(x, *params, bits=bits)
    codes = quant.n2uq_activation_codes(x, params.offset, params.intervals,
                                        params.input_scale, bits=bits)
    assert y.shape == x.shape == codes.shape and y.dtype == x.dtype
    assert codes.dtype == jnp.int32
    expected, distance = _reference_codes(x, params)
    _assert_codes_match(codes, expected, distance, f'activation codes, bits={bits}')
    step = np.float64(params.output_scale) * quant.level_spacing(bits)
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(codes) * step,
                               rtol=1e-2 if dtype in (jnp.float16, jnp.bfloat16) else 1e-6)


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=8, min_side=0, max_side=3),
       bits=bits_values, seed=st.integers(0, 2 ** 16), dtype=st.sampled_from(FLOAT_DTYPES))
def test_weight_shapes_dtypes_levels(shape, bits, seed, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    w = _inputs(shape, seed, dtype)
    q = quant.n2uq_weight(w, bits=bits)
    codes, scale = quant.n2uq_weight_codes(w, bits=bits)
    assert q.shape == w.shape == codes.shape and q.dtype == w.dtype
    assert codes.dtype == jnp.uint8 and scale.shape == (1,) * (w.ndim - 1) + shape[-1:]
    assert np.all(np.asarray(codes) <= 2 ** bits - 1)
    expected, sigma, distance = _reference_weight(w, bits)
    _assert_codes_match(codes, expected, distance, f'weight codes, bits={bits}')
    np.testing.assert_allclose(np.asarray(scale, np.float64), sigma, rtol=1e-5)
    levels = 2 * np.asarray(codes, np.float64) / (2 ** bits - 1) - 1
    np.testing.assert_allclose(np.asarray(q, np.float64), np.asarray(scale, np.float64) * levels,
                               rtol=1e-2 if dtype in (jnp.float16, jnp.bfloat16) else 1e-6)
    assert np.all(np.isfinite(np.asarray(q, np.float32)))


@SETTINGS
@given(bits=bits_values, seed=st.integers(0, 2 ** 16),
       specials=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=4))
def test_activation_nonfinite_codes_and_gradients(bits, seed, specials):
  params = _activation_params(bits, seed)
  finite = np.random.default_rng(seed).normal(size=6).astype(np.float32)
  x = jnp.asarray(np.concatenate([finite, np.asarray(specials, np.float32)]))
  codes = np.asarray(quant.n2uq_activation_codes(x, params.offset, params.intervals,
                                                 params.input_scale, bits=bits))
  top = 2 ** bits - 1
  np.testing.assert_array_equal(codes[6:], [top if s == np.inf else 0 for s in specials])
  y = np.asarray(quant.n2uq_activation(x, *params, bits=bits))
  assert np.all(np.isfinite(y))
  step = float(params.output_scale) * quant.level_spacing(bits)
  np.testing.assert_allclose(y[6:], codes[6:] * step, rtol=1e-6)
  # the finite elements are quantized as if the others were not there
  alone = quant.n2uq_activation(jnp.asarray(finite), *params, bits=bits)
  np.testing.assert_array_equal(y[:6], np.asarray(alone))

  loss = lambda x, p: jnp.sum(quant.n2uq_activation(x, *p, bits=bits) * jnp.arange(x.size))
  grad_x, grad_p = jax.grad(loss, argnums=(0, 1))(x, params)
  grad_x = np.asarray(grad_x)
  assert np.all(grad_x[6:] == 0) and np.all(np.isfinite(grad_x))
  alone_x = jax.grad(loss)(jnp.asarray(finite), params)
  np.testing.assert_array_equal(grad_x[:6], np.asarray(alone_x))
  for name in ('offset', 'intervals', 'output_scale'):
    assert np.all(np.isfinite(np.asarray(getattr(grad_p, name)))), name
  assert np.isnan(float(grad_p.input_scale))


@SETTINGS
@given(bits=bits_values, seed=st.integers(0, 2 ** 16), special=st.sampled_from(
    [np.nan, np.inf, -np.inf]), where=st.integers(0, 3))
def test_weight_nonfinite_poisons_only_its_channel(bits, seed, special, where):
  w = np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32)
  w[where, 1] = special
  q = np.asarray(quant.n2uq_weight(jnp.asarray(w), bits=bits))
  clean = np.asarray(quant.n2uq_weight(jnp.asarray(w[:, [0, 2]]), bits=bits))
  np.testing.assert_array_equal(q[:, [0, 2]], clean)
  if np.isnan(special):
    assert np.all(np.isnan(q[:, 1]))
  else:
    assert np.all(np.isinf(q[:, 1]))
  upstream = np.arange(12, dtype=np.float32).reshape(4, 3)
  grad = np.asarray(jax.grad(lambda w: jnp.sum(quant.n2uq_weight(w, bits=bits) * upstream))(
      jnp.asarray(w)))
  np.testing.assert_array_equal(grad[:, 1], upstream[:, 1] if np.isnan(special) else 0.0)
  assert np.all(np.isfinite(grad))


PUBLIC_QUANTIZERS = {
    'n2uq_activation': lambda x, b: quant.n2uq_activation(x, *quant.init_n2uq_activation(b),
                                                          bits=b),
    'n2uq_activation_codes': lambda x, b: quant.n2uq_activation_codes(
        x, *quant.init_n2uq_activation(b)[:3], bits=b),
    'n2uq_weight': lambda x, b: quant.n2uq_weight(x, bits=b),
    'n2uq_weight_codes': lambda x, b: quant.n2uq_weight_codes(x, bits=b),
    'dorefa_activation': lambda x, b: quant.dorefa_activation(x, bits=b),
    'dorefa_weight': lambda x, b: quant.dorefa_weight(x, bits=b),
    'pact_activation': lambda x, b: quant.pact_activation(x, jnp.float32(2.0), bits=b),
    'lsq_quantize': lambda x, b: quant.lsq_quantize(x, jnp.float32(0.1), bits=b, signed=False),
    'uniform_quantize': lambda x, b: quant.uniform_quantize(x, bits=b),
}


@pytest.mark.parametrize('name', sorted(PUBLIC_QUANTIZERS))
@settings(max_examples=8, deadline=None, derandomize=True)
@given(dtype=st.sampled_from([np.int8, np.int32, np.uint8, np.bool_]),
       bits=st.integers(-3, 12))
def test_integer_inputs_and_bad_bits_are_rejected(name, dtype, bits):
  fn = PUBLIC_QUANTIZERS[name]
  with pytest.raises(ValueError, match='floating-point dtype|bits must be'):
    fn(jnp.ones((2, 3), dtype), min(max(bits, 1), 8))
  if not 1 <= bits <= 8:
    with pytest.raises(ValueError, match=f'bits must be in 1..8, got {bits}'):
      fn(jnp.ones((2, 3), jnp.float32), bits)


@pytest.mark.parametrize('name', sorted(PUBLIC_QUANTIZERS))
@settings(max_examples=6, deadline=None, derandomize=True)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=10, min_side=0, max_side=2),
       dtype=st.sampled_from(FLOAT_DTYPES), bits=bits_values)
def test_every_quantizer_keeps_shape_and_dtype(name, shape, dtype, bits):
  with jax.enable_x64(dtype == jnp.float64):
    x = _inputs(shape, 0, dtype)
    out = PUBLIC_QUANTIZERS[name](x, bits)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == x.shape
    if not name.endswith('codes'):
      assert out.dtype == x.dtype
