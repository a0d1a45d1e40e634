"""NNX layers: quantized conv/dense against lax/NumPy compositions of the pure
quantizers, parameter selection by variable type, RPReLU, specs and policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import nn, quant


def _input(shape=(2, 7, 7, 4), seed=0):
  return jax.random.normal(jax.random.key(seed), shape) + 0.5


@pytest.mark.parametrize('groups,strides', [(1, 1), (1, 2), (4, 1)])
def test_quant_conv_is_conv_of_quantized_tensors(groups, strides):
  spec = nn.QuantSpec.uniform_bits(2)
  conv = nn.QuantConv(4, 8, 3, strides=strides, padding=1, feature_group_count=groups,
                      spec=spec, rngs=nnx.Rngs(0))
  x = _input()
  params = quant.init_n2uq_activation(2)
  x_q = quant.n2uq_activation(x, *params, bits=2)
  w_q = quant.n2uq_weight(conv.kernel[...], bits=2)
  want = jax.lax.conv_general_dilated(x_q, w_q, (strides, strides), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=groups)
  np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-5)
  assert conv.kernel[...].shape == (3, 3, 4 // groups, 8)


def test_full_precision_conv_and_dense_have_no_quantizers():
  conv = nn.QuantConv(4, 8, 1, rngs=nnx.Rngs(0))
  assert conv.input_quantizer is None
  x = _input()
  want = jnp.einsum('nhwc,co->nhwo', x, conv.kernel[...][0, 0])
  np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-5)
  dense = nn.QuantDense(4, 3, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(dense(x), x @ dense.kernel[...] + dense.bias[...], rtol=1e-5)


def test_quantizer_params_are_selectable_by_type():
  conv = nn.QuantConv(4, 8, 3, spec=nn.QuantSpec.uniform_bits(3), rngs=nnx.Rngs(0))
  quantizer_state = nnx.state(conv, nn.QuantizerParam)
  leaves = jax.tree.leaves(quantizer_state)
  assert sorted(int(np.size(v)) for v in leaves) == [1, 1, 1, 7]
  other = nnx.state(conv, nnx.All(nnx.Param, nnx.Not(nn.QuantizerParam)))
  assert [np.shape(v) for v in jax.tree.leaves(other)] == [(3, 3, 4, 8)]
  grads = nnx.grad(lambda m: jnp.sum(m(_input())))(conv)
  grad_leaves = jax.tree.leaves(nnx.state(grads, nn.QuantizerParam))
  assert all(np.all(np.isfinite(g)) for g in grad_leaves)
  assert any(np.any(g != 0) for g in grad_leaves)


@pytest.mark.parametrize('family', ['dorefa', 'pact', 'pact_n2uq_mbv2', 'lsq', 'uniform'])
def test_baseline_activation_families(family):
  spec = nn.QuantSpec(activation=family, weight='dorefa', activation_bits=2, weight_bits=2)
  conv = nn.QuantConv(4, 4, 3, padding=1, spec=spec, rngs=nnx.Rngs(0))
  y = conv(_input())
  assert y.shape == (2, 7, 7, 4) and np.all(np.isfinite(y))
  x_q = conv.input_quantizer(_input())
  assert len(np.unique(np.asarray(x_q))) <= 4


def test_lsq_weight_quantizer_step_init_and_levels():
  conv = nn.QuantConv(4, 4, 3, spec=nn.QuantSpec(activation='none', weight='lsq', weight_bits=3),
                      rngs=nnx.Rngs(0))
  kernel = conv.kernel[...]
  step = conv.weight_quantizer.step_size[...]
  np.testing.assert_allclose(step, 2 * np.mean(np.abs(kernel)) / np.sqrt(3), rtol=1e-6)
  codes = np.asarray(conv.quantized_kernel()) / float(step)
  np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
  assert codes.min() >= -4 and codes.max() <= 3


def test_bfloat16_compute_keeps_float32_params():
  conv = nn.QuantConv(4, 8, 3, padding=1, spec=nn.QuantSpec.uniform_bits(2),
                      dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  y = conv(_input())
  assert y.dtype == jnp.bfloat16
  assert conv.kernel[...].dtype == jnp.float32
  assert conv.input_quantizer.intervals[...].dtype == jnp.float32


def test_rprelu_formula():
  layer = nn.RPReLU(4)
  layer.bias_in[...] = jnp.asarray([0.1, -0.2, 0.0, 0.3])
  layer.slope[...] = jnp.asarray([0.25, 0.5, -1.0, 0.0])
  layer.bias_out[...] = jnp.asarray([0.0, 1.0, -1.0, 0.5])
  x = np.asarray(_input())
  z = x + np.array([0.1, -0.2, 0.0, 0.3])
  want = np.maximum(z, 0) + np.array([0.25, 0.5, -1.0, 0.0]) * np.minimum(z, 0) + np.array(
      [0.0, 1.0, -1.0, 0.5])
  np.testing.assert_allclose(layer(jnp.asarray(x)), want, rtol=1e-6)
  fresh = nn.RPReLU(3)
  np.testing.assert_array_equal(fresh.slope[...], 0.25)


def test_policy_overrides_by_layer_name():
  policy = nn.QuantPolicy(default=nn.QuantSpec.uniform_bits(2),
                          overrides={'layer4.*': nn.QuantSpec.uniform_bits(4, activation='dorefa'),
                                     '*downsample*': nn.FULL_PRECISION})
  assert policy.for_layer('layer1.0.conv1') == nn.QuantSpec.uniform_bits(2)
  assert policy.for_layer('layer4.1.conv2').activation == 'dorefa'
  assert policy.for_layer('layer2.0.downsample.conv').is_full_precision
  assert nn.QuantPolicy.full_precision().for_layer('x').is_full_precision


def test_bad_specs_and_shapes():
  with pytest.raises(ValueError, match='activation quantizer must be one of'):
    nn.QuantSpec(activation='ltq')
  with pytest.raises(ValueError, match='weight quantizer must be one of'):
    nn.QuantSpec(weight='pact')
  with pytest.raises(ValueError, match='bits'):
    nn.QuantSpec(activation_bits=12)
  with pytest.raises(ValueError, match='divisible'):
    nn.QuantConv(6, 8, 3, feature_group_count=4, rngs=nnx.Rngs(0))
  conv = nn.QuantConv(4, 8, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='4 channels'):
    conv(jnp.ones((1, 5, 5, 3)))
