"""The ViT of ``examples/qwix_vit.py``, quantized by its W4A4 rules: which layers
get which quantizer; its gradients equal jax.grad of the same ViT written with the
pure quantizers, and one jitted training step moves every threshold by Adam's first
step of that gradient."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import qwix
from flax import nnx

from n2uq_jax import nn, quant
from n2uq_jax.qwix import N2UQProvider

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _example():
  spec = importlib.util.spec_from_file_location(
      'qwix_vit', os.path.join(ROOT, 'examples', 'qwix_vit.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_w4a4_rules_quantize_the_block_layers_signed_except_after_gelu():
  example = _example()
  model = example.TinyViT(image_size=8, channels=1, num_classes=10, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  quantized = qwix.quantize_model(model, N2UQProvider(example.w4a4_rules()), x)
  offsets = {'/'.join(map(str, p[:-1])): float(v[...]) for p, v in
             nnx.to_flat_state(nnx.state(quantized, nn.QuantizerParam))
             if p[-1] == 'dot_general0_act_offset'}
  assert offsets == {f'blocks/{b}/{layer}': (0.0 if layer == 'fc2' else -1.0)
                     for b in (0, 1) for layer in ('qkv', 'proj', 'fc1', 'fc2')}
  assert len(jax.tree.leaves(nnx.state(quantized, nn.QuantizerParam))) == 32

  _check_gradients_and_step(example, quantized, x)


N2UQ_FIELDS = ('offset', 'intervals', 'input_scale', 'output_scale')


def _quantized_dense(layer, x, signed):
  """One quantized block layer by hand: the pure 4-bit quantizers composed with jnp.dot."""
  act = quant.ActivationParams(*(getattr(layer, f'dot_general0_act_{f}')[...]
                                 for f in N2UQ_FIELDS))
  quantize = quant.n2uq_activation_signed if signed else quant.n2uq_activation
  w = quant.n2uq_weight(layer.kernel[...], bits=4, channel_axis=-1)
  return jnp.dot(quantize(x, *act, bits=4), w) + layer.bias[...]


def _reference(model, images):
  """TinyViT's forward written again, its block layers through :func:`_quantized_dense`
  (fc2 unsigned, the others signed); embedding, norms and head are the model's own."""
  x = model.patch_embed(images)
  x = x.reshape(x.shape[0], -1, x.shape[-1]) + model.position[...]
  for block in model.blocks:
    batch, tokens, dim = x.shape
    heads = block.heads
    qkv = _quantized_dense(block.qkv, block.norm1(x), True).reshape(
        batch, tokens, 3, heads, dim // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = jnp.einsum('bthd,bshd->bhts', q, k) / np.sqrt(dim // heads)
    attended = jnp.einsum('bhts,bshd->bthd', jax.nn.softmax(scores, axis=-1), v)
    x = x + _quantized_dense(block.proj, attended.reshape(batch, tokens, dim), True)
    hidden = jax.nn.gelu(_quantized_dense(block.fc1, block.norm2(x), True))
    x = x + _quantized_dense(block.fc2, hidden, False)
  return model.head(model.norm(jnp.mean(x, axis=1))).astype(jnp.float32)


def _check_gradients_and_step(example, quantized, x):
  """The gradients of every parameter equal jax.grad of the composition written in
  :func:`_reference`, and the example's first Adam step moves each quantizer parameter
  by ``lr / 10 * g / (|g| + eps)`` of that gradient (Adam's first step)."""
  labels = jnp.arange(x.shape[0]) % 10
  loss = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  forward = nnx.jit(lambda m, x: (m(x), _reference(m, x)))
  np.testing.assert_allclose(*forward(quantized, x), rtol=1e-5, atol=1e-5)
  grads = nnx.jit(nnx.grad(lambda m: loss(m(x))))(quantized)
  want = dict(nnx.to_flat_state(nnx.jit(nnx.grad(lambda m: loss(_reference(m, x))))(quantized)))
  leaves = nnx.to_flat_state(grads)
  assert len(leaves) == len(want)
  for path, value in leaves:
    np.testing.assert_allclose(np.asarray(value[...]), np.asarray(want[path][...]),
                               rtol=1e-4, atol=1e-7, err_msg=str(path))

  learning_rate = 1e-2
  params, opt_state, train_step, _, _, _ = example.make_steps(quantized, learning_rate)
  new_params, _, step_loss = train_step(params, opt_state, x, labels)
  np.testing.assert_allclose(float(step_loss), float(loss(forward(quantized, x)[1])), rtol=1e-5)
  for b in (0, 1):
    for layer in ('qkv', 'proj', 'fc1', 'fc2'):
      for field in N2UQ_FIELDS:
        name = f'dot_general0_act_{field}'
        g = np.asarray(want[('blocks', b, layer, name)][...], np.float64)
        moved = (np.asarray(new_params['blocks'][b][layer][name], np.float64)
                 - np.asarray(params['blocks'][b][layer][name], np.float64))
        np.testing.assert_allclose(moved, -learning_rate / 10 * g / (np.abs(g) + 1e-8),
                                   rtol=1e-3, atol=1e-7, err_msg=f'{b} {layer} {field}')
