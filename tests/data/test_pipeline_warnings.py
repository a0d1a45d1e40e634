"""An image-folder pipeline with more reading threads than prefetched batches (the
ImageNet configs read with 16 threads and prefetch 2) sizes grain's read buffer to
its threads, so grain does not warn that the buffer limits them."""

import logging

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
