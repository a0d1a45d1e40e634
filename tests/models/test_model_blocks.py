"""Block wiring against hand-composed references, and concrete forward and
training-mode behaviour of the small models (tiny inputs only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import models, nn
from tests.models.helpers import policy_for, random_concrete


def rprelu(module, x):
  """RPReLU written out (SPEC 4.2): PReLU(x + b1) + b2 per channel."""
  z = x + module.bias_in[...]
  return jnp.where(z > 0, z, module.slope[...] * z) + module.bias_out[...]


def conv_by_hand(conv, x):
  """A quantized conv written out: input quantizer, then the plain convolution
  with the fake-quantized kernel."""
  if conv.input_quantizer is not None:
    x = conv.input_quantizer(x)
  return jax.lax.conv_general_dilated(x, conv.quantized_kernel(), conv.strides, conv.padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=conv.feature_group_count)


def run(block, x, *references):
  """The block's output and each reference, in one compiled call."""
  outs = nnx.jit(lambda b, x: (b(x), *(ref(b, x) for ref in references)))(block, x)
  return [np.asarray(o) for o in outs]


def prepared(make, seed=0):
  """The block built by ``make`` (abstractly), filled with random values, in
  eval mode (BatchNorm uses its random running statistics)."""
  block = random_concrete(nnx.eval_shape(make), seed)
  block.eval()
  return block


def tiny_input(channels, size=6, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(0.5, 1.0, (2, size, size, channels)),
                     jnp.float32)


def basic_reference(b, x, *, rprelu_on_shortcut=False, post_add=True):
  t = b.bn1(conv_by_hand(b.conv1, rprelu(b.rprelu1, x)))
  t = b.bn2(conv_by_hand(b.conv2, rprelu(b.rprelu2, t)))
  s = rprelu(b.rprelu1, x) if rprelu_on_shortcut else x
  s = s if b.downsample is None else b.downsample.bn(conv_by_hand(b.downsample.conv, s))
  return rprelu(b.rprelu_out, t + s) if post_add else t + s


@pytest.mark.parametrize('in_features,stride,quantize_ds', [(8, 2, True), (8, 2, False),
                                                            (16, 1, True)])
def test_n2uq_basic_block_order(in_features, stride, quantize_ds):
  """SPEC 4.3: RPReLU -> quantizer -> conv -> BN twice, shortcut without RPReLU
  (quantizer -> 1x1 conv -> BN when quantized), RPReLU after the addition."""
  block = prepared(lambda: models.N2UQBasicBlock(
      in_features, 16, stride, name='layer2.0', policy=policy_for(2),
      quantize_downsample=quantize_ds, rngs=nnx.Rngs(0)))
  assert isinstance(block.conv1.input_quantizer, nn.N2UQActivation)
  assert isinstance(block.conv2.input_quantizer, nn.N2UQActivation)
  if block.downsample is not None:
    has_quantizer = block.downsample.conv.input_quantizer is not None
    assert has_quantizer == quantize_ds
    assert block.downsample.conv.spec.is_full_precision == (not quantize_ds)
  out, expected, no_post_add, rprelu_on_shortcut = run(
      block, tiny_input(in_features), basic_reference,
      lambda b, x: basic_reference(b, x, post_add=False),
      lambda b, x: basic_reference(b, x, rprelu_on_shortcut=True))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # negative controls: the reference notices a missing or misplaced RPReLU
  assert not np.allclose(out, no_post_add, atol=1e-3)
  if block.downsample is not None:
    assert not np.allclose(out, rprelu_on_shortcut, atol=1e-3)


def test_n2uq_bottleneck_order():
  """SPEC 4.4: three pre-activated convs, stride on the 3x3, post-add RPReLU."""
  block = prepared(lambda: models.N2UQBottleneck(8, 4, 2, name='layer2.0',
                                                 policy=policy_for(2), rngs=nnx.Rngs(0)))

  def reference(b, x):
    t = b.bn1(conv_by_hand(b.conv1, rprelu(b.rprelu1, x)))
    t = b.bn2(conv_by_hand(b.conv2, rprelu(b.rprelu2, t)))
    t = b.bn3(conv_by_hand(b.conv3, rprelu(b.rprelu3, t)))
    return rprelu(b.rprelu_out, t + b.downsample.bn(conv_by_hand(b.downsample.conv, x)))

  out, expected = run(block, tiny_input(8), reference)
  assert out.shape == (2, 3, 3, 16)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride,out_features', [(1, 8), (2, 12)])
def test_n2uq_inverted_residual_order(stride, out_features):
  """SPEC 4.5: expansion, depthwise, projection, each RPReLU -> quantizer ->
  conv -> BN; identity added when shapes allow, no activation after it."""
  block = prepared(lambda: models.N2UQInvertedResidual(
      8, out_features, stride, 2, name='features.3', policy=policy_for(4), rngs=nnx.Rngs(0)))
  assert block.conv2.feature_group_count == 16

  def reference(b, x):
    t = b.bn1(conv_by_hand(b.conv1, rprelu(b.rprelu1, x)))
    t = b.bn2(conv_by_hand(b.conv2, rprelu(b.rprelu2, t)))
    t = b.bn3(conv_by_hand(b.conv3, rprelu(b.rprelu3, t)))
    return x + t if stride == 1 else t

  out, expected = run(block, tiny_input(8), reference)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_full_precision_basic_block_is_plain_resnet():
  block = prepared(lambda: models.BasicBlock(8, 16, 2, rngs=nnx.Rngs(0)))

  def reference(b, x):
    t = jax.nn.relu(b.bn1(jax.lax.conv_general_dilated(
        x, b.conv1.kernel[...], (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
    t = b.bn2(jax.lax.conv_general_dilated(t, b.conv2.kernel[...], (1, 1), ((1, 1), (1, 1)),
                                           dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    s = b.downsample.bn(jax.lax.conv_general_dilated(
        x, b.downsample.conv.kernel[...], (2, 2), ((0, 0), (0, 0)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return jax.nn.relu(t + s)

  out, expected = run(block, tiny_input(8), reference)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def small_cnn():
  return models.create_model('small_cnn', num_classes=10, policy=policy_for(2),
                             rngs=nnx.Rngs(0))


def test_small_cnn_train_step_reaches_every_parameter(small_cnn):
  """One gradient on a digits-shaped batch: logits float32, finite, and a
  non-zero gradient for the conv kernels, RPReLUs and quantizer scales.

  (At initialisation the slope of an RPReLU that feeds an N2UQ quantizer gets
  no gradient: its negative outputs fall below the quantizer's offset 0, where
  G-STE passes nothing. ``rprelu_out`` feeds the pool, so its slope does.)"""
  model = nnx.clone(small_cnn)
  model.train()
  x = tiny_input(1, size=8)
  labels = jnp.arange(2) % 10

  def loss_fn(m):
    logits = m(x)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  loss, grads = nnx.jit(lambda m: nnx.value_and_grad(loss_fn)(m))(model)
  assert np.isfinite(float(loss))
  flat = {'/'.join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.iter_graph(grads) if isinstance(v, nnx.Variable)}
  assert all(np.all(np.isfinite(g)) for g in flat.values())
  for path in ('conv1/kernel', 'layer1/0/conv/kernel', 'layer1/1/conv/kernel', 'fc/kernel',
               'layer1/0/rprelu/bias_in', 'layer1/1/rprelu/bias_out', 'rprelu_out/slope',
               'layer1/1/conv/input_quantizer/output_scale',
               'layer1/0/conv/input_quantizer/intervals'):
    assert np.any(flat[path] != 0), path


def test_train_mode_updates_statistics_and_eval_uses_them(small_cnn):
  model = nnx.clone(small_cnn)
  x = tiny_input(1, size=8, seed=3)
  forward = nnx.jit(lambda m, x: m(x))
  before = np.asarray(model.bn1.mean[...]).copy()
  model.train()
  forward(model, x)
  assert not np.allclose(before, model.bn1.mean[...])
  model.eval()
  together = forward(model, x)
  alone = forward(model, x[:1])
  np.testing.assert_allclose(together[:1], alone, rtol=1e-5, atol=1e-5)
  after = np.asarray(model.bn1.mean[...]).copy()
  forward(model, x)
  np.testing.assert_array_equal(after, model.bn1.mean[...])
