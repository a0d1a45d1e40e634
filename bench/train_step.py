"""Benchmark: the N2UQ ResNet-18 W2A2 train step against full-precision ResNet-18 steps,
all through the same code path (``n2uq_jax.train.step.make_train_step``: forward,
cross-entropy, backward, Adam with the quantizer group), in one process on the
default device.

Baselines:
  * ``fp_twin``: ``resnet18_fp``, the torchvision-layout float ResNet-18;
  * ``fp_same_arch``: ``resnet18`` under a full-precision policy (the N2UQ architecture
    with RPReLUs, without quantizers), which isolates the cost of the quantizers.

Usage::

  python bench/train_step.py                          # batch 32, 224 px
  python bench/train_step.py --batch 8 --image-size 112 --repeats 5

Prints per model the compile time and the median step time over ``--repeats``
measurements of ``--steps`` steps each (models interleaved), and the ratios. Not run
by the tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from n2uq_jax import models, nn
from n2uq_jax.train import config_lib, optimizer, step as step_lib


def _build(name: str, policy, *, num_classes: int, batch: int, image_size: int):
  model = models.create_model(name, num_classes=num_classes, policy=policy, rngs=nnx.Rngs(0))
  config = config_lib.base_config()
  labels = optimizer.param_labels(model, model_name=name)
  schedule = optax.constant_schedule(1e-3)
  tx = optimizer.make_optimizer(config, labels, schedule)
  model_def, params, model_state = step_lib.split_model(model)
  state = step_lib.init_state(params, model_state, tx)
  rng = np.random.default_rng(0)
  batch_data = {
      'image': jnp.asarray(rng.normal(size=(batch, image_size, image_size, 3)), jnp.float32),
      'label': jnp.asarray(rng.integers(0, num_classes, size=batch), jnp.int32),
  }
  train_step = step_lib.make_train_step(model_def, tx, schedule, loss='ce')
  return train_step, state, batch_data


def _compile(train_step, state, batch):
  fn = jax.jit(train_step, donate_argnums=(0,))
  start = time.perf_counter()
  compiled = fn.lower(state, batch, None).compile()
  return compiled, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=3, help='steps per measurement')
  parser.add_argument('--repeats', type=int, default=5, help='measurements per model')
  parser.add_argument('--compile-repeats', type=int, default=1)
  parser.add_argument('--bits', type=int, default=2)
  args = parser.parse_args()

  w2a2 = config_lib.quant_policy(config_lib.parse_variant(f'w{args.bits}a{args.bits}'))
  cases = {
      f'n2uq_w{args.bits}a{args.bits}': ('resnet18', w2a2),
      'fp_twin': ('resnet18_fp', None),
      'fp_same_arch': ('resnet18', nn.QuantPolicy.full_precision()),
  }
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, batch {args.batch}, '
        f'{args.image_size} px, {args.steps} steps x {args.repeats} repeats', flush=True)
  runs = {}
  for key, (name, policy) in cases.items():
    train_step, state, batch = _build(name, policy, num_classes=1000, batch=args.batch,
                                      image_size=args.image_size)
    compile_times = []
    for _ in range(args.compile_repeats):
      compiled, seconds = _compile(train_step, state, batch)
      compile_times.append(seconds)
    state, metrics = compiled(state, batch, None)  # warm-up
    jax.block_until_ready(metrics)
    runs[key] = {'compiled': compiled, 'state': state, 'batch': batch, 'times': [],
                 'compile': statistics.median(compile_times)}
    print(f'{key:>14}: compiled in {runs[key]["compile"]:.2f} s', flush=True)

  for _ in range(args.repeats):
    for key, run in runs.items():  # interleaved, so drifts hit every model alike
      start = time.perf_counter()
      for _ in range(args.steps):
        run['state'], metrics = run['compiled'](run['state'], run['batch'], None)
      jax.block_until_ready((run['state'].params, metrics))
      run['times'].append((time.perf_counter() - start) / args.steps)

  medians = {key: statistics.median(run['times']) for key, run in runs.items()}
  quant_key = next(iter(cases))
  for key, value in medians.items():
    print(f'{key:>14}: step {value * 1e3:9.1f} ms (median), '
          f'{args.batch / value:8.1f} images/s, compile {runs[key]["compile"]:.2f} s')
  for base in ('fp_twin', 'fp_same_arch'):
    print(f'ratio {quant_key} / {base}: {medians[quant_key] / medians[base]:.3f}x step, '
          f'{runs[quant_key]["compile"] / runs[base]["compile"]:.2f}x compile')


if __name__ == '__main__':
  main()
