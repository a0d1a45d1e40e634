"""Quantizer modules and quantized layers at random, distinct parameter values,
against the pure functions of ``n2uq_jax.quant`` called on the modules' raw
variables, and a quantized dense layer against the float64 NumPy reference.

At the initial N2UQ parameters (offset 0, both scales 1) a layer that passed
its parameters in the wrong order would give the same result; here offset,
intervals, input and output scale all differ, forward and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import nn, quant
from tests.nn.quantizer_params import randomize_n2uq, raw_n2uq_params
from tests.quant import reference


def _conv(x, kernel, conv):
  return jax.lax.conv_general_dilated(x, kernel, conv.strides, conv.padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=conv.feature_group_count)


def _input(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(0.6, 0.8, shape), jnp.float32)


@pytest.mark.parametrize('bits,groups,strides', [(2, 1, 1), (3, 1, 2), (2, 4, 1)])
def test_n2uq_conv_at_random_parameters(bits, groups, strides):
  conv = nn.QuantConv(4, 8, 3, strides=strides, padding=1, feature_group_count=groups,
                      spec=nn.QuantSpec.uniform_bits(bits), rngs=nnx.Rngs(bits))
  randomize_n2uq(conv.input_quantizer, seed=bits + groups)
  x = _input((2, 7, 7, 4))
  upstream = _input(conv(x).shape, seed=1)

  def pure(x, kernel, offset, intervals, input_scale, output_scale):
    x_q = quant.n2uq_activation(x, offset, intervals, input_scale, output_scale, bits=bits)
    return _conv(x_q, quant.n2uq_weight(kernel, bits=bits), conv)

  raw = (conv.kernel[...], *raw_n2uq_params(conv.input_quantizer))
  want = pure(x, *raw)
  want_grads = jax.jit(jax.grad(lambda *a: jnp.sum(pure(*a) * upstream), argnums=range(6)))(
      x, *raw)

  def loss(layer, x):
    return jnp.sum(layer(x) * upstream)

  np.testing.assert_allclose(conv(x), want, rtol=1e-6, atol=1e-6)
  layer_grads, dx = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(conv, x)
  got_grads = (dx, layer_grads.kernel[...],
               *raw_n2uq_params(layer_grads.input_quantizer))
  for name, g, w in zip(('x', 'kernel', 'offset', 'intervals', 'input_scale', 'output_scale'),
                        got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)


def test_n2uq_dense_matches_numpy_reference(x64):
  """Input quantizer, weight quantizer and matmul against SPEC 2.3 and 3.1 in
  float64 NumPy, forward and every quantizer-parameter gradient."""
  bits = 3
  dense = nn.QuantDense(6, 5, spec=nn.QuantSpec.uniform_bits(bits), param_dtype=jnp.float64,
                        rngs=nnx.Rngs(0))
  randomize_n2uq(dense.input_quantizer, seed=3)
  dense.bias[...] = jnp.asarray(np.random.default_rng(4).normal(size=5))
  rng = np.random.default_rng(5)
  x = rng.normal(0.6, 0.8, (4, 6))
  upstream = rng.normal(size=(4, 5))
  params = [np.asarray(p) for p in raw_n2uq_params(dense.input_quantizer)]
  kernel = np.asarray(dense.kernel[...])
  w_q = reference.weight(kernel, bits)[0]
  x_q, dx, d_offset, d_intervals, d_in, d_out = reference.activation(
      x, *params, bits, upstream @ w_q.T)

  np.testing.assert_allclose(dense(jnp.asarray(x)), x_q @ w_q + np.asarray(dense.bias[...]),
                             rtol=1e-12, atol=1e-12)
  grads, got_dx = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) * upstream), argnums=(0, 1)))(
      dense, jnp.asarray(x))
  got = raw_n2uq_params(grads.input_quantizer)
  np.testing.assert_allclose(got_dx, dx, rtol=1e-10, atol=1e-12)
  for name, g, w in zip(('offset', 'intervals', 'input_scale', 'output_scale'), got,
                        (d_offset, d_intervals, d_in, d_out)):
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)
  np.testing.assert_allclose(grads.kernel[...], (x_q.T @ upstream) / reference.weight(
      kernel, bits)[2], rtol=1e-10, atol=1e-12)   # STE: dW = dW_q / sigma_o


def test_n2uq_activation_module_codes_and_levels():
  quantizer = nn.N2UQActivation(3)
  randomize_n2uq(quantizer, seed=8)
  x = _input((3, 50), seed=2)
  offset, intervals, input_scale, output_scale = raw_n2uq_params(quantizer)
  codes = quantizer.codes(x)
  np.testing.assert_array_equal(
      codes, quant.n2uq_activation_codes(x, offset, intervals, input_scale, bits=3))
  np.testing.assert_allclose(quantizer(x), np.asarray(codes) * float(output_scale) * 2 / 7,
                             rtol=1e-6)


def _baseline_cases():
  rng = np.random.default_rng(11)
  alpha = float(rng.uniform(0.8, 1.6))
  step = float(rng.uniform(0.2, 0.4))
  return [
      ('dorefa', {}, lambda x, p: quant.dorefa_activation(x, bits=2)),
      ('pact', {'alpha': alpha}, lambda x, p: quant.pact_activation(x, p['alpha'], bits=2)),
      ('pact_n2uq_mbv2', {'alpha': alpha},
       lambda x, p: quant.pact_activation_n2uq_mbv2(x, p['alpha'], bits=2)),
      ('lsq', {'step_size': step},
       lambda x, p: quant.lsq_quantize(x, p['step_size'], bits=2, signed=False,
                                       grad_scale=1 / math.sqrt(5 * 6 * 3 * 3))),
      ('uniform', {}, lambda x, p: quant.uniform_quantize(x, bits=2, lower=0.0, upper=2.0)),
  ]


@pytest.mark.parametrize('family,values,pure', _baseline_cases(),
                         ids=[c[0] for c in _baseline_cases()])
def test_baseline_activation_modules_match_pure_functions(family, values, pure):
  """Forward and gradients (input and learned parameter) at a random ``alpha``
  or step size. LSQ's gradient scale is ``1 / sqrt(features per example * Q_p)``."""
  quantizer = nn.make_activation_quantizer(family, 2)
  for name, value in values.items():
    getattr(quantizer, name)[...] = jnp.asarray(value, jnp.float32)
  x = _input((2, 5, 6, 3), seed=3) * 1.5
  upstream = _input(x.shape, seed=4)
  params = {name: jnp.asarray(v, jnp.float32) for name, v in values.items()}
  np.testing.assert_array_equal(quantizer(x), pure(x, params))
  grads, dx = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) * upstream), argnums=(0, 1)))(
      quantizer, x)
  want_dx, want_params = jax.grad(lambda x, p: jnp.sum(pure(x, p) * upstream),
                                  argnums=(0, 1))(x, params)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6)
  for name in values:
    assert float(want_params[name]) != 0
    np.testing.assert_allclose(getattr(grads, name)[...], want_params[name], rtol=1e-5,
                               err_msg=name)


@pytest.mark.parametrize('family', ['dorefa', 'lsq'])
def test_baseline_weight_quantizers_match_pure_functions(family):
  conv = nn.QuantConv(3, 4, 3, spec=nn.QuantSpec(activation='none', weight=family, weight_bits=3),
                      rngs=nnx.Rngs(2))
  kernel = conv.kernel[...]
  if family == 'lsq':
    conv.weight_quantizer.step_size[...] = jnp.asarray(0.07, jnp.float32)
    want = quant.lsq_quantize(kernel, jnp.asarray(0.07, jnp.float32), bits=3, signed=True)
  else:
    want = quant.dorefa_weight(kernel, bits=3)
  np.testing.assert_array_equal(conv.quantized_kernel(), want)
  x = _input((1, 5, 5, 3))
  np.testing.assert_allclose(conv(x), _conv(x, want, conv), rtol=1e-6, atol=1e-6)
