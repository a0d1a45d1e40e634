"""N2UQ entropy-preserving weight quantizer (SPEC 3.1): test vector, NumPy
reference, gradient, codes, level occupancy, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2uq_jax import quant
from tests.quant import reference

SPEC_W = [0.02, -0.01, 0.005, -0.03, 0.0, 0.012, 0.04, -0.002, 0.008]


def test_spec_test_vector(x64):
  w = jnp.asarray(SPEC_W, jnp.float64).reshape(3, 3, 1, 1)
  sigma = 0.0211666666666666667
  got = quant.n2uq_weight(w, bits=2).ravel()
  want = sigma * np.array([1, -1 / 3, 1 / 3, -1, 1 / 3, 1 / 3, 1, -1 / 3, 1 / 3])
  np.testing.assert_allclose(got, want, rtol=1e-12)
  codes, scale = quant.n2uq_weight_codes(w, bits=2)
  np.testing.assert_array_equal(codes.ravel(), [3, 1, 2, 0, 2, 2, 3, 1, 2])  # 0 -> half to even
  np.testing.assert_allclose(scale.ravel(), [sigma], rtol=1e-12)


@pytest.mark.parametrize('bits', [1, 2, 3, 4, 8])
@pytest.mark.parametrize('channel_axis', [-1, 0])
def test_matches_numpy_reference_float64(x64, bits, channel_axis):
  rng = np.random.default_rng(bits)
  w = rng.laplace(0, 0.02, (3, 3, 4, 5))
  w[0, 0, 0] = 0.0
  got = quant.n2uq_weight(jnp.asarray(w), bits=bits, channel_axis=channel_axis)
  want, codes, sigma = reference.weight(w, bits, channel_axis)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  got_codes, scale = quant.n2uq_weight_codes(jnp.asarray(w), bits=bits, channel_axis=channel_axis)
  assert got_codes.dtype == jnp.uint8
  np.testing.assert_array_equal(got_codes, codes)
  np.testing.assert_allclose(np.asarray(scale).ravel(), sigma, rtol=1e-12)
  levels = 2 ** bits - 1
  np.testing.assert_array_equal(
      np.asarray(scale) * (2 * np.asarray(got_codes, np.float64) / levels - 1), got)


@pytest.mark.parametrize('bits', [2, 4])
def test_gradient_is_upstream_over_scale_without_clip_mask(x64, bits):
  rng = np.random.default_rng(0)
  w = rng.normal(0, 0.05, (1, 1, 16, 3))
  w[0, 0, 0, 0] = 5.0                       # far outside the clip range
  upstream = rng.normal(size=w.shape)
  grad = jax.grad(lambda w: jnp.sum(quant.n2uq_weight(w, bits=bits) * upstream))(jnp.asarray(w))
  _, _, sigma = reference.weight(w, bits)
  np.testing.assert_allclose(grad, upstream / sigma, rtol=1e-12)


@pytest.mark.parametrize('bits', [1, 2, 3, 4])
def test_uniform_weights_fill_every_level_equally(bits):
  w = jax.random.uniform(jax.random.key(bits), (200_000, 2), minval=-1.0, maxval=1.0)
  codes, _ = quant.n2uq_weight_codes(w, bits=bits, channel_axis=1)
  share = np.bincount(np.asarray(codes).ravel(), minlength=2 ** bits) / codes.size
  np.testing.assert_allclose(share, np.full(2 ** bits, 1 / 2 ** bits), atol=0.004)


def test_gamma_values():
  assert [quant.entropy_preserving_gamma(b) for b in (2, 3, 4)] == [1.5, 1.75, 1.875]


def test_bfloat16_and_jit():
  w = jax.random.normal(jax.random.key(0), (3, 3, 8, 4), jnp.bfloat16) * 0.05
  got = jax.jit(lambda w: quant.n2uq_weight(w, bits=2))(w)
  assert got.dtype == jnp.bfloat16
  want, _, _ = reference.weight(np.asarray(w, np.float32), 2)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)


def test_zero_channel_stays_finite():
  w = jnp.zeros((3, 3, 2, 2)).at[..., 1].set(0.1)
  grad = jax.grad(lambda w: jnp.sum(quant.n2uq_weight(w, bits=2)))(w)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(quant.n2uq_weight(w, bits=2)[..., 0], 0)


def test_bad_arguments():
  with pytest.raises(ValueError, match='bits'):
    quant.n2uq_weight(jnp.ones((3, 3)), bits=0)
  with pytest.raises(ValueError, match='channel_axis'):
    quant.n2uq_weight(jnp.ones((3, 3)), bits=2, channel_axis=2)
  with pytest.raises(ValueError, match='floating'):
    quant.n2uq_weight_codes(jnp.ones((3, 3), jnp.int8), bits=2)
