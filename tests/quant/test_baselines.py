"""Baseline quantizers against their papers' formulas, written in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2uq_jax import quant

X = np.array([-1.0, -0.2, 0.0, 0.1, 0.26, 0.5, 0.74, 0.9, 1.0, 1.3, 1.9, 2.0, 2.6])


def _grad(fn, *args):
  return jax.grad(lambda *a: jnp.sum(fn(*a) * jnp.arange(1.0, X.size + 1)),
                  argnums=tuple(range(len(args))))(*args)


UPSTREAM = np.arange(1.0, X.size + 1)


@pytest.mark.parametrize('bits', [1, 2, 4])
def test_dorefa_activation(bits):
  k = 2 ** bits - 1
  x = jnp.asarray(X, jnp.float32)
  np.testing.assert_allclose(quant.dorefa_activation(x, bits=bits),
                             np.round(np.clip(X, 0, 1) * k) / k, atol=1e-6)
  (dx,) = _grad(lambda x: quant.dorefa_activation(x, bits=bits), x)
  np.testing.assert_allclose(dx, UPSTREAM * ((X >= 0) & (X <= 1)))


@pytest.mark.parametrize('bits', [2, 3])
def test_dorefa_weight(bits):
  w = np.random.default_rng(bits).normal(0, 0.1, (3, 3, 4, 8))
  k = 2 ** bits - 1
  t = np.tanh(w)
  want = 2 * np.round((t / (2 * np.abs(t).max()) + 0.5) * k) / k - 1
  got = quant.dorefa_weight(jnp.asarray(w, jnp.float32), bits=bits)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert len(np.unique(np.asarray(got))) <= 2 ** bits


def test_dorefa_weight_one_bit():
  w = jnp.asarray([-0.3, 0.0, 0.1, 0.2])
  np.testing.assert_allclose(quant.dorefa_weight(w, bits=1), 0.15 * np.array([-1, 1, 1, 1]))
  (dw,) = jax.grad(lambda w: jnp.sum(quant.dorefa_weight(w, bits=1) * jnp.arange(4.0)),
                   argnums=(0,))(w)
  np.testing.assert_allclose(dw, np.arange(4.0))


@pytest.mark.parametrize('bits', [2, 4])
def test_pact(bits):
  k = 2 ** bits - 1
  alpha = 1.5
  want = np.round(np.clip(X, 0, alpha) * k / alpha) * alpha / k
  x, a = jnp.asarray(X, jnp.float32), jnp.asarray(alpha)
  np.testing.assert_allclose(quant.pact_activation(x, a, bits=bits), want, atol=1e-6)
  dx, dalpha = _grad(lambda x, a: quant.pact_activation(x, a, bits=bits), x, a)
  np.testing.assert_allclose(dx, UPSTREAM * ((X >= 0) & (X < alpha)))
  np.testing.assert_allclose(dalpha, np.sum(UPSTREAM * (X >= alpha)), rtol=1e-6)


def test_pact_n2uq_mobilenet_v2_gradient():
  """SPEC 4.5: d/dalpha = round(x_c * 15 / alpha) / 15 + [x >= alpha]; dx on 0 < x < alpha."""
  alpha = 2.0
  x, a = jnp.asarray(X, jnp.float32), jnp.asarray(alpha)
  codes = np.round(np.clip(X, 0, alpha) * 15 / alpha)
  np.testing.assert_allclose(quant.pact_activation_n2uq_mbv2(x, a, bits=4),
                             codes * alpha / 15, atol=1e-6)
  dx, dalpha = _grad(lambda x, a: quant.pact_activation_n2uq_mbv2(x, a, bits=4), x, a)
  np.testing.assert_allclose(dx, UPSTREAM * ((X > 0) & (X < alpha)))
  np.testing.assert_allclose(dalpha, np.sum(UPSTREAM * (codes / 15 + (X >= alpha))), rtol=1e-6)


@pytest.mark.parametrize('signed,bits', [(False, 2), (True, 3), (False, 4)])
def test_lsq(signed, bits):
  low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
  step = 0.3
  v = X / step
  want = np.round(np.clip(v, low, high)) * step
  x, s = jnp.asarray(X, jnp.float32), jnp.asarray(step)
  np.testing.assert_allclose(quant.lsq_quantize(x, s, bits=bits, signed=signed), want, atol=1e-6)
  scale = 0.25
  dx, ds = _grad(lambda x, s: quant.lsq_quantize(x, s, bits=bits, signed=signed,
                                                 grad_scale=scale), x, s)
  inside = (v >= low) & (v <= high)
  np.testing.assert_allclose(dx, UPSTREAM * inside)
  per_element = np.where(inside, np.round(v) - v, np.where(v < low, low, high))
  np.testing.assert_allclose(ds, scale * np.sum(UPSTREAM * per_element), rtol=1e-5)
  default = jax.grad(lambda s: jnp.sum(quant.lsq_quantize(x, s, bits=bits, signed=signed)))(s)
  explicit = jax.grad(lambda s: jnp.sum(quant.lsq_quantize(
      x, s, bits=bits, signed=signed, grad_scale=1 / np.sqrt(X.size * high))))(s)
  np.testing.assert_allclose(default, explicit)


def test_uniform_quantize():
  x = jnp.asarray(X, jnp.float32)
  step = 2 / 3
  np.testing.assert_allclose(quant.uniform_quantize(x, bits=2, lower=0.0, upper=2.0),
                             np.round(np.clip(X, 0, 2) / step) * step, atol=1e-6)
  (dx,) = _grad(lambda x: quant.uniform_quantize(x, bits=2, lower=0.0, upper=2.0), x)
  np.testing.assert_allclose(dx, UPSTREAM * ((X >= 0) & (X <= 2)))


def test_baseline_errors():
  with pytest.raises(ValueError, match='bits'):
    quant.dorefa_activation(jnp.ones(2), bits=9)
  with pytest.raises(ValueError, match='signed LSQ'):
    quant.lsq_quantize(jnp.ones(2), jnp.asarray(1.0), bits=1, signed=True)
  with pytest.raises(ValueError, match='upper > lower'):
    quant.uniform_quantize(jnp.ones(2), bits=2, lower=1.0, upper=1.0)
  with pytest.raises(ValueError, match='alpha'):
    quant.pact_activation(jnp.ones(2), jnp.ones(2), bits=2)
  with pytest.raises(ValueError, match='floating'):
    quant.pact_activation(jnp.ones(2, jnp.int32), jnp.asarray(1.0), bits=2)


def test_bfloat16_keeps_dtype():
  x = jnp.asarray(X, jnp.bfloat16)
  for y in (quant.dorefa_activation(x, bits=2),
            quant.pact_activation(x, jnp.asarray(1.5), bits=2),
            quant.lsq_quantize(x, jnp.asarray(0.3), bits=2, signed=False),
            quant.uniform_quantize(x, bits=2)):
    assert y.dtype == jnp.bfloat16
