"""Quantization levels of every quantizer family against NumPy formulas of the
quantizers, and the decision thresholds against the levels they produce."""

import jax.numpy as jnp
import numpy as np
import pytest

from n2uq_jax import nn
from n2uq_jax.inspect import levels


def _activation_modules(bits):
  k = 2 ** bits - 1
  step = 1.5 / k
  pact = nn.PACTActivation(bits)
  pact.alpha.set_value(jnp.asarray(1.7))
  lsq = nn.LSQActivation(bits)
  lsq.step_size.set_value(jnp.asarray(step))
  n2uq = nn.N2UQActivation(bits)  # unequal intervals spanning [-0.2, 1.6]
  n2uq.offset.set_value(jnp.asarray(-0.2))
  n2uq.intervals.set_value(jnp.linspace(0.3, 0.9, k) * 3 / k)
  n2uq.input_scale.set_value(jnp.asarray(1.3))
  return {
      # module, NumPy level of x
      'dorefa': (nn.DoReFaActivation(bits), lambda x: np.round(np.clip(x, 0, 1) * k)),
      'pact': (pact, lambda x: np.round(np.clip(x, 0, 1.7) * k / 1.7)),
      'lsq': (lsq, lambda x: np.round(np.clip(x / step, 0, k))),
      'uniform': (nn.UniformActivation(bits),
                  lambda x: np.round(np.clip(x, 0, 2.0) / (2.0 / k))),
      'n2uq': (n2uq, None),
  }


@pytest.mark.parametrize('bits', [1, 2, 4])
def test_activation_levels_and_thresholds(bits):
  x = np.random.default_rng(bits).normal(0.6, 1.2, size=(4, 5, 5, 8)).astype(np.float32)
  for family, (module, numpy_levels) in _activation_modules(bits).items():
    assert levels.activation_family(module) == family
    got = np.asarray(levels.activation_levels(module, jnp.asarray(x), module(jnp.asarray(x))))
    assert got.dtype == np.int32 and got.shape == x.shape
    if numpy_levels is not None:
      np.testing.assert_array_equal(got, numpy_levels(x.astype(np.float64)), err_msg=family)
    thresholds = np.asarray(levels.decision_thresholds(module), np.float64)
    assert thresholds.shape == (2 ** bits - 1,) and np.all(np.diff(thresholds) > 0)
    # level i is reached exactly above threshold i (random inputs never sit on one)
    np.testing.assert_array_equal(got, (x[..., None] > thresholds).sum(-1), err_msg=family)
    assert got.min() == 0 and got.max() == 2 ** bits - 1, family


def _weight_quantizer(family, bits, kernel):
  return nn.WeightQuantizer(family, bits, jnp.asarray(kernel))


@pytest.mark.parametrize('bits', [2, 3])
def test_weight_levels(bits):
  kernel = np.random.default_rng(bits).normal(0, 0.05, size=(3, 3, 16, 8)).astype(np.float32)
  k = 2 ** bits - 1
  w = kernel.astype(np.float64)

  sigma = k / 2 ** (bits - 1) * np.mean(np.abs(w), axis=(0, 1, 2), keepdims=True)
  n2uq = np.round((np.clip(w / sigma, -1, 1) + 1) * k / 2)
  unit = np.tanh(w) / (2 * np.max(np.abs(np.tanh(w)))) + 0.5
  dorefa = np.round(unit * k)
  lsq_q = _weight_quantizer('lsq', bits, kernel)
  step = float(lsq_q.step_size[...])
  low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  lsq = np.round(np.clip(w / step, low, high)) - low
  for family, expected, quantizer in (('n2uq', n2uq, None), ('dorefa', dorefa, None),
                                      ('lsq', lsq, lsq_q)):
    quantizer = quantizer or _weight_quantizer(family, bits, kernel)
    got = np.asarray(levels.weight_levels(quantizer, jnp.asarray(kernel)))
    np.testing.assert_array_equal(got, expected, err_msg=family)
    counts = levels.level_counts(got, 2 ** bits)
    assert counts.shape == (2 ** bits,) and counts.sum() == kernel.size
  assert levels.weight_levels(_weight_quantizer('none', bits, kernel), kernel) is None


def test_one_bit_dorefa_weights_are_the_sign():
  kernel = np.array([[-0.3, 0.0], [0.2, -0.01]], np.float32)
  got = levels.weight_levels(_weight_quantizer('dorefa', 1, kernel), jnp.asarray(kernel))
  np.testing.assert_array_equal(np.asarray(got), [[0, 1], [1, 0]])


def test_level_counts_include_unused_levels():
  counts = levels.level_counts(np.array([[0, 1, 1], [3, 3, 3]]), 5)
  np.testing.assert_array_equal(counts, [1, 2, 0, 3, 0])


def test_not_a_quantizer_is_a_clear_error():
  with pytest.raises(ValueError, match='RPReLU is not an activation quantizer'):
    levels.activation_family(nn.RPReLU(4))


def test_initial_thresholds_are_uniform_midpoints():
  # SPEC 2.1: offset 0, intervals Delta = 2 / K, so T_i = (i - 1/2) Delta
  np.testing.assert_allclose(levels.initial_thresholds(nn.N2UQActivation(2)),
                             [1 / 3, 1.0, 5 / 3], rtol=1e-6)
  assert levels.initial_thresholds(nn.DoReFaActivation(2)) is None
