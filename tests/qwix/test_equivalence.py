"""The registry's full-precision ``small_cnn:fp``, quantized through
``N2UQProvider`` over the layers that the project's W2A2 policy quantizes,
computes the same logits and gradients as ``small_cnn`` under that policy with
the same parameters."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from n2uq_jax import models, nn
from n2uq_jax.qwix import N2UQProvider, N2UQRule
from n2uq_jax.train import config_lib

ACT_PREFIX = 'conv_general_dilated0_act_'


def _policy_rules(model):
  """One rule per quantized conv of ``model``, from its own spec."""
  rules = []
  for path, module in model.iter_modules():
    if isinstance(module, nn.QuantConv) and not module.spec.is_full_precision:
      spec = module.spec
      rules.append(N2UQRule(re.escape('/'.join(map(str, path))),
                            weight_bits=spec.weight_bits, act_bits=spec.activation_bits,
                            act_method=spec.activation, weight_method=spec.weight,
                            op_names=('conv_general_dilated',)))
  return rules


def _qwix_path(path: str) -> str:
  """The path of a policy-model variable in the provider-quantized model."""
  return path.replace('/input_quantizer/', '/' + ACT_PREFIX)


def _flat(state):
  return {'/'.join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


def _variables(model):
  """``{path: variable}`` of the parameters and batch statistics of ``model``."""
  return {'/'.join(map(str, path)): node for path, node in nnx.iter_graph(model)
          if isinstance(node, (nnx.Param, nnx.BatchStat))}


def _models():
  policy = config_lib.quant_policy(config_lib.parse_variant('w2a2'))
  reference = models.create_model('small_cnn', num_classes=10, policy=policy,
                                  rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  for _, module in reference.iter_modules():      # quantizers away from their init
    if isinstance(module, nn.N2UQActivation):
      k = module.intervals[...].shape[0]
      module.offset[...] = jnp.float32(rng.uniform(-0.2, 0.2))
      module.intervals[...] = jnp.asarray(2 / k * rng.uniform(0.6, 1.4, k), jnp.float32)
      module.input_scale[...] = jnp.float32(rng.uniform(0.8, 1.2))
      module.output_scale[...] = jnp.float32(rng.uniform(0.8, 1.2))
    if isinstance(module, nn.RPReLU):
      module.bias_in[...] = jnp.asarray(rng.normal(0, 0.3, module.num_features), jnp.float32)
  x = jnp.asarray(rng.normal(0.3, 1.0, (8, 8, 8, 1)), jnp.float32)

  fp = models.create_model('small_cnn:fp', num_classes=10, rngs=nnx.Rngs(1))
  rules = _policy_rules(reference)
  assert [r.module_path for r in rules] == ['layer1/0/conv', 'layer1/1/conv']
  quantized = qwix.quantize_model(fp, N2UQProvider(rules), x)
  source, target = _variables(reference), _variables(quantized)
  assert set(target) == {_qwix_path(p) for p in source}
  for path, var in source.items():
    target[_qwix_path(path)][...] = var[...]
  return reference, quantized, x


def test_same_logits_and_gradients_as_the_w2a2_policy_model():
  reference, quantized, x = _models()
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(8, 10)), jnp.float32)

  def loss(model):
    logits = model(x)
    return jnp.sum(logits * cotangent), logits

  value_and_grad = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
  (_, want_logits), want = value_and_grad(reference)
  (_, got_logits), got = value_and_grad(quantized)
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
  assert np.std(np.asarray(want_logits)) > 1e-2
  want, got = _flat(want), _flat(got)
  assert {_qwix_path(p) for p in want} == set(got)
  for path, value in want.items():
    np.testing.assert_allclose(got[_qwix_path(path)][...], value[...],
                               rtol=1e-5, atol=1e-5, err_msg=path)
  intervals = [p for p in got if p.endswith(ACT_PREFIX + 'intervals')]
  assert len(intervals) == 2 and all(np.all(got[p][...] != 0) for p in intervals)

  # The learned thresholds are QuantizerParam, the recipe's lr/10 group.
  assert sorted(_flat(nnx.state(quantized, nn.QuantizerParam))) == sorted(
      f'layer1/{i}/conv/{ACT_PREFIX}{field}' for i in (0, 1)
      for field in ('offset', 'intervals', 'input_scale', 'output_scale'))

  reference.eval()
  quantized.eval()
  np.testing.assert_allclose(quantized(x), reference(x), rtol=1e-5, atol=1e-5)
