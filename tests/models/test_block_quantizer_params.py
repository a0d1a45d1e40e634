"""N2UQ blocks at random, distinct quantizer parameters (every activation
quantizer with its own offset, intervals, input and output scale), against
compositions of the pure quantizer functions applied to the blocks' raw
variables (SPEC 4.3-4.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import models, nn, quant
from tests.models.helpers import modules, policy_for, random_concrete
from tests.nn.quantizer_params import randomize_n2uq, raw_n2uq_params


def prepared(make, seed):
  """The block filled with random values, every N2UQ quantizer at its own
  random parameters, in eval mode."""
  block = random_concrete(nnx.eval_shape(make), seed)
  quantizers = modules(block, nn.N2UQActivation)
  assert quantizers
  for position, quantizer in enumerate(quantizers.values()):
    randomize_n2uq(quantizer, seed=100 * seed + position)
  block.eval()
  return block


def rprelu(module, x):
  z = x + module.bias_in[...]
  return jnp.where(z > 0, z, module.slope[...] * z) + module.bias_out[...]


def pure_conv(conv, x):
  """``quant.n2uq_activation`` on the input (from the quantizer's raw variables),
  ``quant.n2uq_weight`` on the kernel, then the plain convolution."""
  assert conv.spec.weight == 'n2uq' and conv.spec.activation == 'n2uq'
  x = quant.n2uq_activation(x, *raw_n2uq_params(conv.input_quantizer),
                            bits=conv.spec.activation_bits)
  kernel = quant.n2uq_weight(conv.kernel[...], bits=conv.spec.weight_bits)
  return jax.lax.conv_general_dilated(x, kernel, conv.strides, conv.padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=conv.feature_group_count)


def _compare(block, reference, channels):
  x = jnp.asarray(np.random.default_rng(1).normal(0.5, 1.0, (2, 6, 6, channels)), jnp.float32)
  out, expected = nnx.jit(lambda b, x: (b(x), reference(b, x)))(block, x)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bits', [2, 3])
def test_basic_block(bits):
  block = prepared(lambda: models.N2UQBasicBlock(
      8, 16, 2, name='layer2.0', policy=policy_for(bits), rngs=nnx.Rngs(0)), seed=bits)

  def reference(b, x):
    t = b.bn1(pure_conv(b.conv1, rprelu(b.rprelu1, x)))
    t = b.bn2(pure_conv(b.conv2, rprelu(b.rprelu2, t)))
    return rprelu(b.rprelu_out, t + b.downsample.bn(pure_conv(b.downsample.conv, x)))

  _compare(block, reference, 8)


def test_bottleneck():
  block = prepared(lambda: models.N2UQBottleneck(
      8, 4, 2, name='layer2.0', policy=policy_for(2), rngs=nnx.Rngs(0)), seed=5)

  def reference(b, x):
    t = b.bn1(pure_conv(b.conv1, rprelu(b.rprelu1, x)))
    t = b.bn2(pure_conv(b.conv2, rprelu(b.rprelu2, t)))
    t = b.bn3(pure_conv(b.conv3, rprelu(b.rprelu3, t)))
    return rprelu(b.rprelu_out, t + b.downsample.bn(pure_conv(b.downsample.conv, x)))

  _compare(block, reference, 8)


def test_inverted_residual():
  block = prepared(lambda: models.N2UQInvertedResidual(
      8, 8, 1, 2, name='features.3', policy=policy_for(4), rngs=nnx.Rngs(0)), seed=6)

  def reference(b, x):
    t = b.bn1(pure_conv(b.conv1, rprelu(b.rprelu1, x)))
    t = b.bn2(pure_conv(b.conv2, rprelu(b.rprelu2, t)))
    return x + b.bn3(pure_conv(b.conv3, rprelu(b.rprelu3, t)))

  _compare(block, reference, 8)
