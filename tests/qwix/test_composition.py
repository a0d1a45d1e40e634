"""Models written here (an NNX MLP, a Linen CNN, an NNX attention-style einsum
module), quantized through ``N2UQProvider``, compute the composition of the
pure quantizers with ``jnp.dot``, ``jnp.einsum`` and ``lax.conv``; every
method of a rule; gradients equal jax.grad of that composition; ``jax.jit`` and
``nnx.jit``; rule errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import linen, nnx

from n2uq_jax import nn, quant
from n2uq_jax.qwix import N2UQProvider, N2UQRule
from n2uq_jax.train import optimizer

N2UQ_FIELDS = ('offset', 'intervals', 'input_scale', 'output_scale')


class MLP(nnx.Module):
  """fc1 (nnx.Linear, lax.dot_general) -> ReLU -> fc2 (QuantDense, jnp.dot) -> head."""

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(6, 16, rngs=rngs)
    self.fc2 = nn.QuantDense(16, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(self.fc2(jax.nn.relu(self.fc1(x))))


class LinenCNN(linen.Module):
  """conv1 -> ReLU -> conv2 (stride 2) -> mean -> head, in Linen."""

  @linen.compact
  def __call__(self, x):
    x = linen.relu(linen.Conv(8, (3, 3), padding='SAME', name='conv1')(x))
    x = linen.Conv(6, (3, 3), strides=2, padding='VALID', name='conv2')(x)
    return linen.Dense(3, name='head')(jnp.mean(x, axis=(1, 2)))


def _act(x, params, method, bits):
  """The pure activation quantizer a rule's ``act_method`` names."""
  if method == 'n2uq':
    return quant.n2uq_activation(x, *params, bits=bits)
  if method == 'n2uq_signed':
    return quant.n2uq_activation_signed(x, *params, bits=bits)
  if method == 'dorefa':
    return quant.dorefa_activation(x, bits=bits)
  if method == 'pact':
    return quant.pact_activation(x, params, bits=bits)
  if method == 'lsq':
    high = 2 ** bits - 1
    return quant.lsq_quantize(x, params, bits=bits, signed=False,
                              grad_scale=1 / np.sqrt(x.shape[-1] * high))
  if method == 'uniform':
    return quant.uniform_quantize(x, bits=bits, lower=0.0, upper=2.0)
  return x


def _weight(w, params, method, bits):
  if method == 'n2uq':
    return quant.n2uq_weight(w, bits=bits, channel_axis=-1)
  if method == 'dorefa':
    return quant.dorefa_weight(w, bits=bits)
  if method == 'lsq':
    return quant.lsq_quantize(w, params, bits=bits, signed=True)
  return w


def _act_params(module, op_id, method):
  if method in ('n2uq', 'n2uq_signed'):
    return quant.ActivationParams(*(getattr(module, f'{op_id}_act_{f}')[...]
                                    for f in N2UQ_FIELDS))
  if method == 'pact':
    return getattr(module, f'{op_id}_act_alpha')[...]
  if method == 'lsq':
    return getattr(module, f'{op_id}_act_step_size')[...]
  return None


def _perturb(model, seed=0):
  """Moves every quantizer parameter away from its initial value."""
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nn.QuantizerParam):
      value = np.asarray(node[...])
      node[...] = jnp.asarray(value * rng.uniform(0.8, 1.2, value.shape)
                              + rng.uniform(-0.05, 0.05, value.shape), jnp.float32)


def _mlp_reference(model, x, act_method, weight_method, bits):
  """The MLP by hand: quantizers composed with jnp.dot; head in float."""
  h = x
  for layer, op_id in ((model.fc1, 'dot_general0'), (model.fc2, 'dot_general0')):
    kernel = layer.kernel[...]
    step = getattr(layer, f'{op_id}_weight_step_size', None)
    w = _weight(kernel, None if step is None else step[...], weight_method, bits)
    a = _act(h, _act_params(layer, op_id, act_method), act_method, bits)
    h = jnp.dot(a, w) + layer.bias[...]
    if layer is model.fc1:
      h = jax.nn.relu(h)
  return jnp.dot(h, model.head.kernel[...]) + model.head.bias[...]


def _input(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(0.6, 1.0, shape), jnp.float32)


@pytest.mark.parametrize('act_method, weight_method', [
    ('n2uq', 'n2uq'), ('n2uq_signed', 'n2uq'), ('dorefa', 'n2uq'), ('lsq', 'n2uq'),
    ('pact', 'n2uq'), ('uniform', 'n2uq'), ('n2uq', 'dorefa'), ('n2uq', 'lsq'),
    ('none', 'n2uq'), ('n2uq', 'none')])
def test_nnx_mlp_equals_quantizers_composed_with_dot(act_method, weight_method):
  x = _input((5, 6))
  model = MLP(nnx.Rngs(0))
  model(x)                 # jnp.dot traced and cached in float before quantization
  rules = [N2UQRule('fc.', weight_bits=3, act_bits=3, act_method=act_method,
                    weight_method=weight_method)]
  quantized = qwix.quantize_model(model, N2UQProvider(rules), x)
  np.testing.assert_allclose(quantized(x), _mlp_reference(quantized, x, act_method,
                                                          weight_method, 3), rtol=1e-6, atol=1e-6)
  _perturb(quantized)
  np.testing.assert_allclose(quantized(x), _mlp_reference(quantized, x, act_method,
                                                          weight_method, 3), rtol=1e-6, atol=1e-6)
  float_output = model(x)   # the original model stays in float
  np.testing.assert_allclose(float_output, _mlp_reference(model, x, 'none', 'none', 3),
                             rtol=1e-6, atol=1e-6)
  assert np.abs(quantized(x) - float_output).max() > 1e-3


def test_quantizer_params_are_created_on_the_intercepted_modules():
  x = _input((5, 6))
  rules = [N2UQRule('fc2', weight_bits=2, act_bits=2, weight_method='lsq'),
           N2UQRule('fc1', weight_bits=2, act_bits=2, act_method='pact')]
  quantized = qwix.quantize_model(MLP(nnx.Rngs(0)), N2UQProvider(rules), x)
  names = sorted('/'.join(map(str, p)) for p, _ in
                 nnx.to_flat_state(nnx.state(quantized, nn.QuantizerParam)))
  assert names == sorted(['fc1/dot_general0_act_alpha', 'fc2/dot_general0_weight_step_size']
                         + [f'fc2/dot_general0_act_{f}' for f in N2UQ_FIELDS])
  # the model's own parameters are untouched, and only they are plain Params
  plain = [p for p, v in nnx.to_flat_state(nnx.state(quantized, nnx.Param))
           if not isinstance(v, nn.QuantizerParam)]
  assert len(plain) == 6
  # so the recipe's optimizer groups put exactly them at a tenth of the learning rate
  labels = optimizer.labels_by_name(optimizer.param_labels(quantized))
  assert sorted(k for k, v in labels.items() if v == optimizer.QUANTIZER) == [
      n.replace('/', '.') for n in names]


def test_gradients_equal_those_of_the_composed_quantizers():
  x = _input((64, 6)) * 2
  rules = [N2UQRule('fc.', weight_bits=2, act_bits=2)]
  quantized = qwix.quantize_model(MLP(nnx.Rngs(0)), N2UQProvider(rules), x)
  quantized.fc1.kernel[...] *= 3                   # fc2's inputs cover every segment
  _perturb(quantized)
  every_param = nnx.DiffState(0, nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2), argnums=every_param)(quantized)
  want = nnx.grad(lambda m: jnp.sum(_mlp_reference(m, x, 'n2uq', 'n2uq', 2) ** 2),
                  argnums=every_param)(quantized)
  got_leaves, want_leaves = nnx.to_flat_state(grads), dict(nnx.to_flat_state(want))
  assert len(got_leaves) == len(want_leaves) == 6 + 8
  for path, value in got_leaves:
    np.testing.assert_allclose(np.asarray(value[...]), np.asarray(want_leaves[path][...]),
                               rtol=1e-5, atol=1e-6, err_msg=str(path))
    if path[-1].endswith(N2UQ_FIELDS):                  # and none of them is trivial
      assert np.all(np.asarray(value[...]) != 0), path


def test_jax_jit_and_nnx_jit():
  x = _input((5, 6))
  quantized = qwix.quantize_model(MLP(nnx.Rngs(0)), N2UQProvider(
      [N2UQRule('fc.', weight_bits=2, act_bits=2)]), x)
  _perturb(quantized)
  want = _mlp_reference(quantized, x, 'n2uq', 'n2uq', 2)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(quantized, x), want,
                             rtol=1e-6, atol=1e-6)
  graphdef, state = nnx.split(quantized)
  np.testing.assert_allclose(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x), want,
                             rtol=1e-6, atol=1e-6)
  grad = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x))))(quantized)
  np.testing.assert_allclose(grad.fc1.dot_general0_act_offset[...],
                             nnx.grad(lambda m: jnp.sum(m(x)))(quantized).fc1
                             .dot_general0_act_offset[...], rtol=1e-5)


def _conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_linen_cnn_equals_quantizers_composed_with_conv():
  x = _input((2, 7, 7, 3))
  model = qwix.quantize_model(LinenCNN(), N2UQProvider(
      [N2UQRule('conv.', weight_bits=2, act_bits=2)]))
  variables = model.init(jax.random.key(0), x)
  params = variables['params']
  assert sorted(params['conv2']) == sorted(
      ['kernel', 'bias'] + [f'conv_general_dilated0_act_{f}' for f in N2UQ_FIELDS])
  assert sorted(params['head']) == ['bias', 'kernel']
  params = jax.tree.map(lambda v: v * 1.1 - 0.02, params)     # quantizers off their init

  def reference(params, x):
    h = x
    for name, strides, padding in (('conv1', (1, 1), 'SAME'), ('conv2', (2, 2), 'VALID')):
      p = params[name]
      act = quant.ActivationParams(*(p[f'conv_general_dilated0_act_{f}'] for f in N2UQ_FIELDS))
      h = _conv(quant.n2uq_activation(h, *act, bits=2), quant.n2uq_weight(p['kernel'], bits=2),
                strides, padding) + p['bias']
      if name == 'conv1':
        h = jax.nn.relu(h)
    return jnp.dot(jnp.mean(h, axis=(1, 2)), params['head']['kernel']) + params['head']['bias']

  got = model.apply({'params': params}, x)
  np.testing.assert_allclose(got, reference(params, x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(model.apply)({'params': params}, x), got,
                             rtol=1e-6, atol=1e-6)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x) ** 2)))(params)
  want = jax.jit(jax.grad(lambda p: jnp.sum(reference(p, x) ** 2)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    w = want
    for key in path:
      w = w[key.key]
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  threshold_grads = grads['conv1']['conv_general_dilated0_act_intervals']
  assert np.all(np.asarray(threshold_grads) != 0)


class Attention(nnx.Module):
  """A projection einsum with a (d, heads, head_dim) weight, then an
  activation-by-activation einsum, which stays in float."""

  def __init__(self, rngs):
    self.qkv = nnx.Param(jax.random.normal(rngs.params(), (8, 2, 4)) * 0.3)

  def __call__(self, x):
    q = jnp.einsum('btd,dhk->bthk', x, self.qkv[...])
    return jnp.einsum('bthk,bshk->bhts', q, q)


def test_einsum_weight_per_output_channel_and_activation_products_in_float():
  x = _input((2, 3, 8))
  quantized = qwix.quantize_model(Attention(nnx.Rngs(0)), N2UQProvider(
      [N2UQRule(weight_bits=2, act_bits=2, act_method='n2uq_signed')]), x)
  _perturb(quantized)
  w = quantized.qkv[...]
  w_q = quant.n2uq_weight(w.reshape(8, 8), bits=2).reshape(8, 2, 4)   # a scale per (h, k)
  act = quant.ActivationParams(*(getattr(quantized, f'einsum0_act_{f}')[...]
                                 for f in N2UQ_FIELDS))
  q = jnp.einsum('btd,dhk->bthk', quant.n2uq_activation_signed(x, *act, bits=2), w_q)
  np.testing.assert_allclose(quantized(x), jnp.einsum('bthk,bshk->bhts', q, q),
                             rtol=1e-5, atol=1e-5)
  assert not hasattr(quantized, 'einsum1_act_offset')


class Operator(nnx.Module):
  """A product written with the ``@`` operator, weight on the right."""

  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (6, 4)))

  def __call__(self, x):
    return x @ self.w[...]


def test_matmul_operator_is_quantized_even_when_traced_in_float_before():
  x = _input((5, 6))
  model = Operator(nnx.Rngs(0))
  float_output = x @ model.w[...]             # jnp.matmul's jit cache now holds a float trace
  quantized = qwix.quantize_model(model, N2UQProvider([N2UQRule(weight_bits=2, act_bits=2)]), x)
  want = (quant.n2uq_activation(x, *quant.init_n2uq_activation(2), bits=2)
          @ quant.n2uq_weight(model.w[...], bits=2))
  np.testing.assert_allclose(quantized(x), want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(quantized, x), want, rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(model(x), float_output, rtol=1e-6)   # and back in float


def test_rule_errors():
  with pytest.raises(ValueError, match='act_method'):
    N2UQRule(weight_bits=2, act_bits=2, act_method='relu')
  with pytest.raises(ValueError, match='weight_method'):
    N2UQRule(weight_bits=2, act_bits=2, weight_method='pact')
  with pytest.raises(ValueError, match='bits'):
    N2UQRule(weight_bits=0, act_bits=2)
  with pytest.raises(ValueError, match='op_names'):
    N2UQRule(weight_bits=2, act_bits=2, op_names=('ragged_dot',))
  with pytest.raises(ValueError, match='regex'):
    N2UQRule('(', weight_bits=2, act_bits=2)
  with pytest.raises(ValueError, match='N2UQRule'):
    N2UQProvider([qwix.QtRule(weight_qtype=jnp.int8)])
  with pytest.raises(ValueError, match='sequence'):
    N2UQProvider(N2UQRule(weight_bits=2, act_bits=2))


def test_first_matching_rule_wins():
  x = _input((5, 6))
  rules = [N2UQRule('fc1', weight_bits=2, act_bits=2, act_method='pact'),
           N2UQRule('.*', weight_bits=2, act_bits=2, op_names=('dot_general',))]
  quantized = qwix.quantize_model(MLP(nnx.Rngs(0)), N2UQProvider(rules), x)
  names = {'/'.join(map(str, p)) for p, _ in
           nnx.to_flat_state(nnx.state(quantized, nn.QuantizerParam))}
  assert names == ({'fc1/dot_general0_act_alpha'}
                   | {f'{m}/dot_general0_act_{f}' for m in ('fc2', 'head') for f in N2UQ_FIELDS})
