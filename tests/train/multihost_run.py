"""One process of a multi-process (or a one-process) run of the quantized small CNN on
mock data, for tests/train/test_multihost.py. XLA_FLAGS must give the device count:

    python -m tests.train.multihost_run WORKDIR OUT.json --processes P --process-id I
        --port PORT [--steps 6] [--stop-after 3] [--cache DIR] [--variant w2a2]
        [--hold-at BATCH]

``--hold-at`` prints ``BATCH <n>`` as batch n is taken and, after announcing that
batch, waits for a line on stdin before the loop gets it (so that a test can signal
this process while it is at a known step, then let it go on).

Prints nothing unusual; writes OUT.json (process 0) with the logged training losses and
the devices, and the final checkpoint's parameters to OUT.json.npz.
"""

import argparse
import json
import os
import sys


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('workdir')
  parser.add_argument('out')
  parser.add_argument('--processes', type=int, default=1)
  parser.add_argument('--process-id', type=int, default=0)
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--steps', type=int, default=6)
  parser.add_argument('--stop-after', type=int, default=0)
  parser.add_argument('--variant', default='w2a2')
  parser.add_argument('--cache', default='')
  parser.add_argument('--hold-at', type=int, default=0)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from n2uq_jax.train import config_lib, loop, metrics  # pylint: disable=g-import-not-at-top
  from tests.train.mock_data import MockPipeline  # pylint: disable=g-import-not-at-top

  config = config_lib.default_config(args.variant)
  config.update(dict(
      loss='ce', num_train_steps=args.steps, global_batch_size=16, progress_bar=False,
      tensorboard=False, compilation_cache_dir='', checkpoint_every_steps=3,
      eval_every_steps=3, log_every_steps=1, learning_rate=0.01, schedule='constant',
      warmup_epochs=0.0))
  if args.processes > 1:
    config.distributed.update(dict(
        enabled=True, coordinator_address=f'127.0.0.1:{args.port}',
        num_processes=args.processes, process_id=args.process_id))
  loop.initialize_distributed(config)
  loop.configure_compilation_cache(args.cache)

  class AnnouncingPipeline(MockPipeline):

    def train_batch(self, index):
      if args.hold_at:
        print(f'BATCH {index + 1}', flush=True)
        if index + 1 == args.hold_at:
          sys.stdin.readline()
      return super().train_batch(index)

  pipeline = AnnouncingPipeline(per_host_batch_size=16 // args.processes, image_shape=(8, 8, 1),
                          num_classes=10, process_index=jax.process_index(),
                          process_count=jax.process_count())
  summary = loop.train_and_evaluate(config, args.workdir, pipeline=pipeline,
                                    stop_after_step=args.stop_after or None)
  manager = ocp.CheckpointManager(os.path.join(args.workdir, 'checkpoints'))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  manager.close()
  if jax.process_index() == 0:
    # the parameters are replicated: every process holds all of them
    flat = jax.tree_util.tree_leaves_with_path(restored['model'])
    np.savez(args.out + '.npz', **{jax.tree_util.keystr(p): np.asarray(v.addressable_data(0))
                                   for p, v in flat})
    losses = {r['step']: r['loss'] for r in metrics.read_metrics(args.workdir) if 'loss' in r}
    with open(args.out, 'w') as f:
      json.dump({'losses': losses, 'step': summary['step'], 'preempted': summary['preempted'], 'checkpoint_step': step,
                 'processes': jax.process_count(), 'devices': jax.device_count(),
                 'eval_accuracy': summary['final_eval_accuracy']}, f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
