"""One vocabulary of quantizer families: the NNX layers, the Qwix rules and the
training methods accept exactly the names of ``quant.ACTIVATION_FAMILIES`` /
``quant.WEIGHT_FAMILIES``, and a layer's forward pass is its family's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2uq_jax import nn, quant
from n2uq_jax.qwix import N2UQRule
from n2uq_jax.runs import model as model_lib


@pytest.mark.parametrize('family', sorted(quant.ACTIVATION_FAMILIES))
def test_every_activation_family_is_a_layer_spec_and_a_qwix_rule(family):
  nn.QuantSpec(activation=family, weight='n2uq')
  N2UQRule(weight_bits=2, act_bits=2, act_method=family)
  module = nn.make_activation_quantizer(family, 2)
  x = jnp.asarray(np.random.default_rng(0).normal(0.5, 1.0, (2, 4, 4, 3)), jnp.float32)
  spec = quant.ACTIVATION_FAMILIES[family]
  params = spec.init(2, x, jnp.float32)
  expected = spec.apply(x, params, 2, ())
  np.testing.assert_array_equal(x if module is None else module(x), expected)


@pytest.mark.parametrize('family', sorted(quant.WEIGHT_FAMILIES))
def test_every_weight_family_is_a_layer_spec_and_a_qwix_rule(family):
  nn.QuantSpec(activation='n2uq', weight=family)
  N2UQRule(weight_bits=2, act_bits=2, weight_method=family)
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
  spec = quant.WEIGHT_FAMILIES[family]
  expected = spec.apply(kernel, spec.init(2, kernel, jnp.float32), 2, (3,))
  np.testing.assert_array_equal(nn.WeightQuantizer(family, 2, kernel)(kernel), expected)


def test_unknown_family_names_the_valid_ones():
  for make in (lambda: nn.QuantSpec(activation='n2uqq'),
               lambda: N2UQRule(weight_bits=2, act_bits=2, act_method='n2uqq'),
               lambda: nn.make_activation_quantizer('n2uqq', 2)):
    with pytest.raises(ValueError, match="one of .*'n2uq'.*got 'n2uqq'"):
      make()


def test_every_method_is_a_pair_of_families():
  assert model_lib.METHODS == tuple(quant.METHODS)
  for method, (activation, weight) in quant.METHODS.items():
    spec = model_lib.quant_policy(model_lib.parse_variant('w2a2', method)).default
    assert (spec.activation, spec.weight) == (activation, weight)
    assert activation in quant.ACTIVATION_FAMILIES and weight in quant.WEIGHT_FAMILIES
