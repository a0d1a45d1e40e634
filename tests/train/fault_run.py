"""A short quantized run of the small CNN on mock data through ``n2uq_jax.train.run``
(the path of ``train.py``), for the fault tests. Prints ``BATCH <n>`` as the loop takes
its n-th batch and the summaries as JSON lines:

    python -m tests.train.fault_run WORKDIR [--steps 12] [--hold-at BATCH]
        [--nan-at BATCH] [--policy stop|skip] [--cache DIR]

``--hold-at`` waits, after announcing that batch, for a line on stdin before the loop
gets it (so that a test can signal the run while it is at a known step, then let it
go on); ``--nan-at`` puts a NaN into the images of that batch (counted from 1).
"""

import argparse
import json
import sys


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('workdir')
  parser.add_argument('--steps', type=int, default=12)
  parser.add_argument('--hold-at', type=int, default=0)
  parser.add_argument('--nan-at', type=int, default=0)
  parser.add_argument('--policy', default='stop')
  parser.add_argument('--cache', default='')
  args = parser.parse_args()

  import numpy as np  # pylint: disable=g-import-not-at-top
  from n2uq_jax import train  # pylint: disable=g-import-not-at-top
  from tests.train.mock_data import MockPipeline  # pylint: disable=g-import-not-at-top

  class FaultyPipeline(MockPipeline):
    """Announces each batch, optionally holds one, optionally with a NaN pixel."""

    def train_batch(self, index):
      batch = super().train_batch(index)
      if index + 1 == args.nan_at:
        batch['image'][0, 0, 0, 0] = np.nan
      print(f'BATCH {index + 1}', flush=True)
      if index + 1 == args.hold_at:
        sys.stdin.readline()
      return batch

  config = train.config_lib.default_config('w2a2')
  config.update(dict(
      loss='ce', num_train_steps=args.steps, global_batch_size=16, progress_bar=False,
      tensorboard=False, compilation_cache_dir=args.cache, checkpoint_every_steps=5,
      eval_every_steps=-1, log_every_steps=3, learning_rate=0.01, schedule='constant',
      warmup_epochs=0.0, nonfinite_policy=args.policy))
  pipeline = FaultyPipeline(per_host_batch_size=16, image_shape=(8, 8, 1), num_classes=10)
  for summary in train.run(config, args.workdir, pipeline=pipeline):
    print(json.dumps(summary), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
