"""Image-folder pipelines run quietly: with more reading threads than prefetched batches
(the ImageNet configs read with 16 threads and prefetch 2) grain's read buffer is sized
to its threads, so grain does not warn that the buffer limits them; and an evaluation
pass with worker processes frees the shared memory of its batches, so nothing is
reported leaked at exit."""

import logging
import os
import subprocess
import sys

from n2uq_jax import data


def test_more_read_threads_than_prefetched_batches_is_quiet(cifar_folder, caplog):
  config = data.default_config()
  config.update(source='folder', name='cifar10', data_dir=cifar_folder, validation_fraction=0.2,
                image_size=32, transform='cifar', read_threads=16, prefetch_buffer_size=2,
                mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7))
  with caplog.at_level(logging.WARNING):
    pipeline = data.create_pipeline(config, per_host_batch_size=8, seed=0)
    batch = next(pipeline.train_iterator())
  assert batch['image'].shape == (8, 32, 32, 3)
  assert not [r.getMessage() for r in caplog.records
              if 'is smaller than num_threads' in r.getMessage()]


_EVAL_PASS = """
from n2uq_jax import data
config = data.default_config()
config.update(source='folder', name='cifar10', data_dir={data_dir!r}, validation_fraction=0.5,
              image_size=32, transform='cifar', worker_count=2,
              mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7))
pipeline = data.create_pipeline(config, per_host_batch_size=8, seed=0)
print('batches', sum(1 for _ in pipeline.eval_batches()))
"""


def test_an_evaluation_pass_with_workers_leaks_no_shared_memory(cifar_folder):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, '-c', _EVAL_PASS.format(data_dir=cifar_folder)],
                          cwd=root, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['batches', '8']  # 60 held-out images, padded
  assert 'leaked shared_memory' not in result.stderr, result.stderr[-3000:]

