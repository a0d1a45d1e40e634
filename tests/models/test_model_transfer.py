"""transfer_params: full-precision twin -> N2UQ model by path (SPEC 4.6)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import models, nn
from tests.models.helpers import abstract_model, materialize, policy_for, variables

N2UQ_ONLY = ('rprelu', 'input_quantizer')


def numbered(abstract):
  """Concrete copy whose i-th variable is filled with i + 1 (distinct per path)."""
  order = {path: i for i, path in enumerate(sorted(variables(abstract)))}
  return materialize(abstract, lambda path, shape, dtype: np.full(shape, order[path] + 1.0))


def minus_one(abstract):
  return materialize(abstract, lambda path, shape, dtype: np.full(shape, -1.0))


@pytest.mark.parametrize('quantize_ds', [True, False])
def test_resnet18_fp_into_resnet18_copies_every_conv_bn_and_fc(quantize_ds):
  source = numbered(abstract_model('resnet18_fp'))
  target = minus_one(abstract_model('resnet18', 2, quantize_downsample=quantize_ds))
  copied = models.transfer_params(source, target)

  source_vars = variables(source, (nnx.Param, nnx.BatchStat))
  target_vars = variables(target, (nnx.Param, nnx.BatchStat))
  assert copied == sorted(copied) and len(copied) == len(set(copied))
  assert set(copied) == set(source_vars)  # every conv kernel, BN scale/bias/mean/var, fc
  assert len([p for p in copied if p.endswith('/kernel')]) == 1 + 16 + 3 + 1
  assert len([p for p in copied if p.endswith('/mean')]) == 1 + 16 + 3
  assert set(target_vars) - set(copied) == {p for p in target_vars
                                            if any(k in p for k in N2UQ_ONLY)}
  for path, var in target_vars.items():
    if path in copied:
      np.testing.assert_array_equal(var.get_value(), source_vars[path].get_value())
    else:
      assert np.all(np.asarray(var.get_value()) == -1.0), path


def test_shape_mismatch_is_skipped():
  source = numbered(abstract_model('resnet18_fp'))
  target = minus_one(abstract_model('resnet18', 2, num_classes=10))
  copied = models.transfer_params(source, target)
  assert 'fc/kernel' not in copied and 'fc/bias' not in copied
  assert 'layer4/1/conv2/kernel' in copied
  assert np.all(np.asarray(target.fc.kernel[...]) == -1.0)


def test_mobilenet_v2_fp_into_mobilenet_v2():
  """Everything of the twin transfers; the block-1 expansion conv, which
  torchvision lacks, keeps its value."""
  source = numbered(abstract_model('mobilenet_v2_fp'))
  target = minus_one(abstract_model('mobilenet_v2', 4))
  copied = set(models.transfer_params(source, target))
  assert copied == set(variables(source, (nnx.Param, nnx.BatchStat)))
  assert 'features/1/conv1/kernel' not in copied and 'features/1/conv2/kernel' in copied
  assert 'features/18/conv/kernel' in copied and 'classifier/kernel' in copied
  assert np.all(np.asarray(target.features[1].conv1.kernel[...]) == -1.0)


def test_real_initialisation_keeps_quantizer_parameters():
  """With the real initialisers (small model: XLA compiles every initialiser
  shape): a full-precision-policy N2UQ model pretrained first, then copied
  into the quantized one. Everything it has is copied; the quantizers keep
  their SPEC 2.1 initial values; RPReLUs start at SPEC 4.2's values."""
  source = models.create_model('small_cnn:fp', num_classes=10, rngs=nnx.Rngs(1))
  target = models.create_model('small_cnn', num_classes=10, policy=policy_for(2),
                               rngs=nnx.Rngs(2))
  for _, module in nnx.iter_graph(source):
    if isinstance(module, nn.RPReLU):
      np.testing.assert_array_equal(module.slope[...], 0.25)
      np.testing.assert_array_equal(module.bias_in[...], 0.0)
      np.testing.assert_array_equal(module.bias_out[...], 0.0)
  assert not np.allclose(target.conv1.kernel[...], source.conv1.kernel[...])
  copied = models.transfer_params(source, target)
  assert set(copied) == set(variables(source, (nnx.Param, nnx.BatchStat)))
  np.testing.assert_array_equal(target.layer1[1].conv.kernel[...],
                                source.layer1[1].conv.kernel[...])
  quantizers = [m for _, m in nnx.iter_graph(target) if isinstance(m, nn.N2UQActivation)]
  assert len(quantizers) == 2
  for module in quantizers:
    np.testing.assert_allclose(module.intervals[...], np.full(3, 2 / 3), rtol=1e-6)
    assert float(module.offset[...]) == 0.0
    assert float(module.input_scale[...]) == float(module.output_scale[...]) == 1.0
  logits = nnx.jit(lambda m, x: m(x))(target, jnp.ones((2, 8, 8, 1)))
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
