"""Image-folder pipelines run quietly: with more reading threads than prefetched batches
(the ImageNet configs read with 16 threads and prefetch 2) grain's read buffer is sized
to its threads, so grain does not warn that the buffer limits them; and an evaluation
pass or a closed training iterator with worker processes frees the shared memory of its
batches before it returns, so nothing is reported leaked at exit."""

import logging
import os
import subprocess
import sys

import pytest

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


# The parent process of each run slows grain's shared-memory deletion thread to 0.2 s
# per array, so a pass that returns before that thread has drained leaks every time,
# not only when the machine is loaded.
_WORKER_PASSES = """
import time
from grain._src.python.ipc import shared_memory_array

def slow_close(cls, shm, unlink, _close=shared_memory_array.SharedMemoryArray.close_shm_async):
  time.sleep(0.2)
  _close(shm, unlink)

def main():
  shared_memory_array.SharedMemoryArray.close_shm_async = classmethod(slow_close)
  from n2uq_jax import data
  from n2uq_jax.train import setup
  config = data.default_config()
  config.update(source='folder', name='cifar10', data_dir={data_dir!r},
                validation_fraction=0.5, image_size=32, transform='cifar', worker_count=2,
                mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7))
  pipeline = data.create_pipeline(config, per_host_batch_size=8, seed=0)
  if {train!r}:
    iterator = pipeline.train_iterator()
    print('batches', sum(1 for _, _ in zip(range(4), iterator)))
    setup.close_iterator(iterator)
  else:
    print('batches', sum(1 for _ in pipeline.eval_batches()))

if __name__ == '__main__':  # worker processes are spawned: they import this module
  main()
"""


@pytest.mark.parametrize('train,batches', [(False, 8), (True, 4)], ids=['eval', 'train'])
def test_a_pass_with_workers_leaks_no_shared_memory(cifar_folder, tmp_path, train, batches):
  script = tmp_path / 'worker_pass.py'
  script.write_text(_WORKER_PASSES.format(data_dir=cifar_folder, train=train))
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=root),
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['batches', str(batches)]  # eval: 60 images, padded
  assert 'leaked shared_memory' not in result.stderr, result.stderr[-3000:]
