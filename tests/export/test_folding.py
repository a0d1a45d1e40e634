"""Integer thresholds (SPEC 8) against the float64 chain evaluated on every
accumulator value, and bit-packing round trips."""

import numpy as np
import pytest

from n2uq_jax.export import folding, packing


def _chain_codes(acc, acc_scale, bn, rprelu, input_scale, thresholds):
  scale, bias, mean, var, eps = bn
  bias_in, slope, bias_out = rprelu
  x = acc[:, None] * acc_scale
  y = (x - mean) / np.sqrt(var + eps) * scale + bias
  z = y + bias_in
  r = np.where(z > 0, z, slope * z) + bias_out
  u = input_scale * r
  return np.sum(u[..., None] > thresholds, axis=-1)


@pytest.mark.parametrize('input_scale', [1.3, -0.7, 0.0])
def test_folded_thresholds_equal_the_chain_on_every_accumulator(input_scale):
  rng = np.random.default_rng(0)
  c, levels = 64, 3
  acc_scale = rng.uniform(0.005, 0.02, c)
  acc_scale[3] = 0.0                                   # a dead channel: constant input
  bn = (np.where(rng.random(c) < 0.3, -1, 1) * rng.uniform(0.5, 1.5, c), rng.normal(0, .3, c),
        rng.normal(0, .2, c), rng.uniform(.5, 2, c), 1e-5)
  slope = rng.uniform(0, 0.5, c)
  slope[:4] = 0.0                                      # flat negative side
  slope[4:10] = -0.25                                  # non-monotone: two-sided intervals
  rprelu = (rng.normal(0, .1, c), slope, rng.normal(0, .1, c))
  thresholds = np.sort(rng.normal(0.5, 0.6, levels))
  tau, tau_hi, direction = folding.fold_thresholds(acc_scale, *bn, *rprelu, input_scale,
                                                   thresholds)
  assert tau.dtype == tau_hi.dtype == np.int32 and tau.shape == tau_hi.shape == (c, levels)
  if input_scale != 0:
    assert set(direction[4:10].tolist()) == {2 if input_scale > 0 else -2}
    assert set(direction[10:].tolist()) == {-1, 1}     # negative BN scales flip
  acc = np.arange(-400, 401)[:, None, None].astype(np.int64)
  want = _chain_codes(acc[:, 0, 0], acc_scale, bn, rprelu, input_scale, thresholds)
  monotone = direction[:, None] * acc >= tau[None]
  inside = (acc >= tau[None]) & (acc <= tau_hi[None])
  bits = np.select([np.abs(direction[:, None]) == 1, direction[:, None] == 2],
                   [monotone, ~inside], inside)
  got = np.sum(bits, -1)
  np.testing.assert_array_equal(got, want)
  if input_scale != 0:
    assert 0 < want.mean() < levels                    # not all one level


def test_ties_follow_the_strict_comparison():
  # t = acc exactly, PReLU identity for t > 0, thresholds on integers: acc > T, not >=.
  one = np.ones(1)
  tau, _, direction = folding.fold_thresholds(one, one, 0 * one, 0 * one, one - 1e-5, 1e-5,
                                           0 * one, one, 0 * one, 1.0, np.array([2.0, 5.0]))
  assert direction[0] == 1
  np.testing.assert_array_equal(tau[0], [3, 6])       # v > 2 iff v >= floor(2) + 1
  # slope -1 (|t|): beta1 > 0 counts |v| > 2, i.e. v outside [-2, 2]; beta1 < 0
  # with thresholds -2, -5 counts -|v| > -2, i.e. v inside [-1, 1]
  tau, hi, direction = folding.fold_thresholds(one, one, 0 * one, 0 * one, one - 1e-5, 1e-5,
                                               0 * one, -one, 0 * one, 1.0, np.array([2.0]))
  assert direction[0] == 2 and (tau[0, 0], hi[0, 0]) == (-2, 2)
  tau, hi, direction = folding.fold_thresholds(one, one, 0 * one, 0 * one, one - 1e-5, 1e-5,
                                               0 * one, -one, 0 * one, -1.0, np.array([-2.0]))
  assert direction[0] == -2 and (tau[0, 0], hi[0, 0]) == (-1, 1)


@pytest.mark.parametrize('bits', range(1, 9))
def test_packing_round_trip_and_size(bits):
  codes = np.random.default_rng(bits).integers(0, 2 ** bits, (3, 3, 5, 7)).astype(np.uint8)
  packed = packing.pack(codes, bits)
  assert packed.dtype == np.uint8 and packed.size == packing.packed_size(codes.size, bits)
  np.testing.assert_array_equal(packing.unpack(packed, bits, codes.shape), codes)


def test_packing_layout_two_bits():
  # four codes per byte, the first code in the two lowest bits
  np.testing.assert_array_equal(packing.pack(np.array([1, 2, 3, 0, 3]), 2), [0b00111001, 0b11])
  with pytest.raises(ValueError, match='does not fit'):
    packing.pack(np.array([4]), 2)
