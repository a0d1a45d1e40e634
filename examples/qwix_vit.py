"""A tiny Vision Transformer, written here in Flax NNX with no knowledge of
quantization, trained in full precision and then quantized to W4A4 N2UQ
through Qwix (``n2uq_jax.qwix``), initialised from the full-precision weights.

Data: the 8x8 digits embedded in the package (the default data pipeline), or
CIFAR-10 image folders with ``--data_dir=DIR`` (``DIR/train/<class>/*.jpg`` and
``DIR/test/...``, or ``--validation_fraction=0.1`` to evaluate on a held-out part
of ``train/``). Prints the two test accuracies and the ratio of the
quantized to the float training-step time.

    python examples/qwix_vit.py                       # digits, a few minutes on 2 cores

Quantization: every dense layer inside the two transformer blocks. Their
inputs are LayerNorm outputs or attention outputs (signed), so they use the
signed extension ``n2uq_signed`` (levels ``beta2 * (Delta * k - 1)``), except
``fc2``, whose input follows a GELU and uses the paper's unsigned ``n2uq``.
The patch embedding and the classifier stay in float, as the paper keeps the
first and last layers; attention's activation-by-activation products have no
weight operand and stay in float too.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import qwix
from flax import nnx

from n2uq_jax import data, nn
from n2uq_jax.qwix import N2UQProvider, N2UQRule
from n2uq_jax.train import optimizer as optimizer_lib


class Block(nnx.Module):
  """Pre-norm transformer block: multi-head self-attention and a GELU MLP."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = nnx.Linear(dim, mlp_dim, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, dim = x.shape
    qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = jnp.einsum('bthd,bshd->bhts', q, k) / np.sqrt(dim // self.heads)
    attended = jnp.einsum('bhts,bshd->bthd', jax.nn.softmax(scores, axis=-1), v)
    x = x + self.proj(attended.reshape(batch, tokens, dim))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


class TinyViT(nnx.Module):
  """Patch embedding (a strided conv), learned position embeddings, transformer
  blocks, mean pooling over tokens, LayerNorm and a linear classifier.

  Input ``(N, H, W, C)``; output float32 logits ``(N, num_classes)``.
  """

  def __init__(self, *, image_size: int, channels: int, num_classes: int, patch: int = 2,
               dim: int = 48, depth: int = 2, heads: int = 3, mlp_dim: int = 96,
               rngs: nnx.Rngs):
    self.patch_embed = nnx.Conv(channels, dim, (patch, patch), strides=patch, padding='VALID',
                                rngs=rngs)
    tokens = (image_size // patch) ** 2
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, dim)))
    self.blocks = nnx.List([Block(dim, heads, mlp_dim, rngs=rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = self.patch_embed(images)
    x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.position[...]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(jnp.mean(x, axis=1))).astype(jnp.float32)


def w4a4_rules(signed: bool = True) -> list[N2UQRule]:
  """The first matching rule wins: fc2 (after a GELU) unsigned, the others signed
  (or, with ``signed=False``, the paper's unsigned quantizer everywhere)."""
  return [
      N2UQRule(r'blocks/\d+/fc2', weight_bits=4, act_bits=4),
      N2UQRule(r'blocks/\d+/(qkv|proj|fc1)', weight_bits=4, act_bits=4,
               act_method='n2uq_signed' if signed else 'n2uq'),
  ]


def make_steps(model: nnx.Module, learning_rate: float):
  """Jitted train and eval steps on pure-dict parameters. Quantizer parameters
  (``QuantizerParam``) train at a tenth of the learning rate, as in the recipe."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  tx = optax.multi_transform(
      {optimizer_lib.DEFAULT: optax.adam(learning_rate),
       optimizer_lib.QUANTIZER: optax.adam(learning_rate / 10)},
      optimizer_lib.param_labels(model))

  @jax.jit
  def train_step(params, opt_state, images, labels):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params, rest)(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def correct(params, images, labels, mask):
    logits = nnx.merge(graphdef, params, rest)(images)
    return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)

  return params, tx.init(params), train_step, correct, graphdef, rest


def train(model, pipeline, *, epochs: int, learning_rate: float, label: str):
  """Trains ``model`` for ``epochs``; returns (trained model, test accuracy,
  median seconds per training step after compilation)."""
  params, opt_state, train_step, correct, graphdef, rest = make_steps(model, learning_rate)
  batches = pipeline.train_iterator()
  step_times = []
  for epoch in range(epochs):
    for _ in range(pipeline.steps_per_epoch):
      batch = next(batches)
      start = time.perf_counter()
      params, opt_state, loss = train_step(params, opt_state, batch['image'], batch['label'])
      loss.block_until_ready()
      step_times.append(time.perf_counter() - start)
    if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
      print(f'{label}: epoch {epoch + 1}/{epochs} loss {float(loss):.4f}', flush=True)
  hits = sum(int(correct(params, b['image'], b['label'], b['mask']))
             for b in pipeline.eval_batches())
  return (nnx.merge(graphdef, params, rest), hits / pipeline.num_eval_examples,
          float(np.median(step_times[1:])))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', default='', help='CIFAR-10 image folders (default: digits)')
  parser.add_argument('--validation_fraction', type=float, default=0.0,
                      help='evaluate on this fraction of the training folder instead of test/')
  parser.add_argument('--fp_epochs', type=int, default=30)
  parser.add_argument('--qat_epochs', type=int, default=15)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--learning_rate', type=float, default=2e-3)
  parser.add_argument('--unsigned', action='store_true',
                      help="the paper's unsigned N2UQ on the LayerNorm outputs too")
  args = parser.parse_args()

  config = data.default_config()
  if args.data_dir:
    config.update(source='folder', name='cifar10', data_dir=args.data_dir, image_size=32,
                  transform='cifar', mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7),
                  validation_fraction=args.validation_fraction)
  pipeline = data.create_pipeline(config, per_host_batch_size=args.batch_size, seed=0)
  height, _, channels = pipeline.image_shape
  patch = 2 if height <= 8 else 4

  fp_model = TinyViT(image_size=height, channels=channels, num_classes=pipeline.num_classes,
                     patch=patch, rngs=nnx.Rngs(0))
  fp_model, fp_accuracy, fp_step = train(fp_model, pipeline, epochs=args.fp_epochs,
                                         learning_rate=args.learning_rate, label='float')

  example = jnp.zeros((1, *pipeline.image_shape), jnp.float32)
  rules = w4a4_rules(signed=not args.unsigned)
  quantized = qwix.quantize_model(fp_model, N2UQProvider(rules), example)
  learned = nnx.state(quantized, nn.QuantizerParam)
  print(f'quantizer parameters: {len(jax.tree.leaves(learned))} arrays in '
        f'{len(nnx.to_flat_state(learned)) // 4} N2UQ activation quantizers')
  _, q_accuracy, q_step = train(quantized, pipeline, epochs=args.qat_epochs,
                                learning_rate=args.learning_rate / 4, label='w4a4')

  print(f'float ViT test accuracy:      {fp_accuracy:.4f}')
  print(f'W4A4 N2UQ ViT test accuracy:  {q_accuracy:.4f}')
  print(f'train step: float {1e3 * fp_step:.2f} ms, W4A4 {1e3 * q_step:.2f} ms, '
        f'ratio quantized/float {q_step / fp_step:.2f}')


if __name__ == '__main__':
  main()
