"""Runs a few training steps of the small CNN on a mock batch stream and writes the
final parameters to an .npz file. Run as a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX is imported:

    python -m tests.train.sharded_run OUT.npz WORKDIR [--variant fp|w2a2] [--steps 3]
        [--optimizer adam|sgd] [--fsdp F] [--check-bad-batch]

Why the test compares the full-precision model: the quantized (W2A2) model agrees
across device counts in its forward pass (logits to ~1e-7), but its conv outputs lie on
a lattice of products of weight and activation levels, so some BatchNorm outputs sit
within rounding error of zero. There a kink (the sign test of an RPReLU) resolves one
way with one device's summation order and the other way with eight devices' (seen: a
pre-activation of -3.1e-8 on 1 device and +3.1e-8 on 8), the slope of that element
switches between 1 and 0.25, and the difference spreads through the backward pass and
is amplified by the 1/sigma weight STE. Every piece of the quantized model (each
quantizer, each block with a fixed cotangent) agrees across device counts to float
tolerance on its own; the divergence is a property of piecewise-linear quantized
networks, not of the sharding.
"""

import argparse
import os
import sys


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('out')
  parser.add_argument('workdir')
  parser.add_argument('--fsdp', type=int, default=1)
  parser.add_argument('--check-bad-batch', action='store_true')
  parser.add_argument('--cache', default='')
  parser.add_argument('--variant', default='w2a2')
  parser.add_argument('--optimizer', default='adam')
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from n2uq_jax.train import config_lib, loop, sharding  # pylint: disable=g-import-not-at-top
  from tests.train.mock_data import MockPipeline  # pylint: disable=g-import-not-at-top

  loop.configure_compilation_cache(args.cache)
  config = config_lib.default_config(args.variant)
  config.update(dict(optimizer=args.optimizer, loss='ce', num_train_steps=args.steps, global_batch_size=16, progress_bar=False,
                     tensorboard=False, compilation_cache_dir='', checkpoint_every_steps=args.steps,
                     eval_every_steps=args.steps, learning_rate=0.01, schedule='constant',
                     warmup_epochs=0.0))
  config.mesh.fsdp = args.fsdp
  config.mesh.fsdp_min_size = 256  # shard the 3x3 kernels and the classifier when fsdp > 1
  pipeline = MockPipeline(per_host_batch_size=16, image_shape=(8, 8, 1), num_classes=10)

  if args.check_bad_batch:
    bad = config_lib.default_config('w2a2')
    bad.global_batch_size = 12
    try:
      sharding.check_batch_size(bad.global_batch_size, sharding.create_mesh(args.fsdp))
    except ValueError as e:
      print('BAD_BATCH_ERROR:', e)
    else:
      print('BAD_BATCH_ACCEPTED')

  summary = loop.train_and_evaluate(config, args.workdir, pipeline=pipeline)
  manager = ocp.CheckpointManager(os.path.join(args.workdir, 'checkpoints'))
  restored = manager.restore(manager.latest_step(),
                             args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  manager.close()
  flat = jax.tree_util.tree_leaves_with_path(restored['model'])
  np.savez(args.out, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat},
           __devices=np.int64(jax.device_count()),
           __accuracy=np.float64(summary['final_eval_accuracy']))
  return 0


if __name__ == '__main__':
  sys.exit(main())
