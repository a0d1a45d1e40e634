"""A small in-memory input pipeline with the interface of `n2uq_jax.data.Pipeline`:
deterministic random images whose label is recoverable from the pixels (so a few steps
of training already move the accuracy), a resumable train iterator and padded eval
batches. With several processes each takes its rows of the same global batches, so the
global batches do not depend on the number of processes."""

from __future__ import annotations

import numpy as np


class _TrainIterator:

  def __init__(self, pipeline, next_index: int = 0):
    self._pipeline = pipeline
    self._next = next_index

  def __iter__(self):
    return self

  def __next__(self):
    batch = self._pipeline.train_batch(self._next)
    self._next += 1
    return batch

  def get_state(self):
    return {'next_index': self._next}

  def set_state(self, state):
    self._next = int(state['next_index'])


class MockPipeline:
  """Per-host batches of `per_host_batch_size` images `image_shape` with
  `num_classes` labels; `steps_per_epoch` global steps per epoch."""

  def __init__(self, *, per_host_batch_size=8, image_shape=(8, 8, 1), num_classes=10,
               steps_per_epoch=4, num_eval_batches=2, seed=0, process_index=0,
               process_count=1):
    self.per_host_batch_size = per_host_batch_size
    self.global_batch_size = per_host_batch_size * process_count
    self._rows = slice(process_index * per_host_batch_size,
                       (process_index + 1) * per_host_batch_size)
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self.steps_per_epoch = steps_per_epoch
    self.num_train_examples = steps_per_epoch * self.global_batch_size
    self.num_eval_batches = num_eval_batches
    self.num_eval_examples = num_eval_batches * self.global_batch_size - 1  # one padded row
    self._seed = seed
    rng = np.random.default_rng(seed + 1)
    self._prototypes = rng.normal(size=(num_classes, *self.image_shape)).astype(np.float32)

  def _examples(self, key: int, size: int):
    rng = np.random.default_rng([self._seed, key])
    labels = rng.integers(0, self.num_classes, size=size).astype(np.int32)
    noise = rng.normal(size=(size, *self.image_shape)).astype(np.float32)
    return self._prototypes[labels] + 0.5 * noise, labels

  def train_batch(self, index: int):
    images, labels = self._examples(index, self.global_batch_size)
    return {'image': images[self._rows], 'label': labels[self._rows]}

  def train_iterator(self, num_epochs=None):
    del num_epochs
    return _TrainIterator(self)

  def eval_batches(self):
    remaining = self.num_eval_examples
    for i in range(self.num_eval_batches):
      images, labels = self._examples(10_000 + i, self.global_batch_size)
      mask = np.arange(self.global_batch_size) < remaining
      remaining -= self.global_batch_size
      images, labels, mask = images[self._rows], labels[self._rows], mask[self._rows]
      yield {'image': images * mask[:, None, None, None], 'label': labels * mask,
             'mask': mask}
