"""The ViT of ``examples/qwix_vit.py``, quantized by its W4A4 rules: which layers
get which quantizer, and one jitted training step that moves every threshold."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from n2uq_jax import nn
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

  params, opt_state, train_step, _, _, _ = example.make_steps(quantized, 1e-2)
  labels = jnp.arange(4) % 10
  new_params, _, loss = train_step(params, opt_state, x, labels)
  assert np.isfinite(float(loss))
  for layer in ('qkv', 'fc2'):
    before = params['blocks'][0][layer]['dot_general0_act_intervals']
    after = new_params['blocks'][0][layer]['dot_general0_act_intervals']
    assert np.all(np.asarray(before) != np.asarray(after)), layer
