"""The grain input pipeline: sharded per host, deterministic, exactly resumable.

`create_pipeline(config, per_host_batch_size=B, seed=s)` opens the sources a data config
names and returns a `Pipeline`, whose batches are dicts of numpy arrays:

  train: {"image": float32 [B, S, S, C] normalised NHWC, "label": int32 [B]}
  eval:  the same plus "mask": bool [B], False on padding examples.

Each host (process) builds its own pipeline and yields only its share (see
`n2uq_jax.data.sharding`); on the training mesh the global batch is

  jax.make_array_from_process_local_data(sharding, batch["image"])  # [B x P, S, S, C]

Training is a grain MapDataset chain, so every batch is a pure function of its step:
source -> shuffle (a new global permutation each epoch, the same on every host) ->
random_map (augmentation seeded by the example's epoch and position, so it does not depend
on the number of hosts or workers) -> this host's positions -> batch -> repeat. Worker
processes (`worker_count`) each compute whole uint8 batches and grain interleaves them back
in step order, so the batches are the same with any number of workers; a thread of the
training process then normalises them to float32 ahead of use. The iterator's state is
the number of batches consumed: after `set_state`, the next batch is exactly the one an
uninterrupted run would have produced.
"""

from __future__ import annotations

import gc
from typing import Any, Iterator

from absl import flags
import grain
import numpy as np

from n2uq_jax.data import config as config_lib
from n2uq_jax.data import decode
from n2uq_jax.data import folder
from n2uq_jax.data import sharding
from n2uq_jax.data import source as source_lib
from n2uq_jax.data import sources
from n2uq_jax.data import transforms


def _derived_seeds(seed: int, count: int) -> list[int]:
  """`count` independent 32-bit seeds (grain's shuffle needs seeds below 2**32)."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative integer")
  return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(count)]


class _NameBadImages:
  """Wraps a transform: an image that does not decode raises a ValueError naming the
  record's file (image folders; other sources name the record's label)."""

  def __init__(self, transform):
    self.transform = transform

  def __call__(self, record, *rng):
    try:
      return self.transform(record, *rng)
    except folder.DECODE_ERRORS as error:
      where = record.get("path") or f"a record with label {record.get('label')}"
      raise ValueError(
          f"cannot decode the image {where}: {type(error).__name__}: {error}. Replace or "
          "remove the file, or set the data config's bad_images='skip'"
      ) from error


class _NormalizeImages:
  """Batch map: uint8 "image" [B, H, W, C] -> normalised float32; other keys copied.

  The copies hold the same values in process-local memory: a batch from worker processes
  arrives in shared memory, which is then freed here, while the user still holds the
  batch (say, the last one of an evaluation pass when the pass frees the rest).
  """

  def __init__(self, normalize: transforms.Normalize):
    self.normalize = normalize

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: self.normalize(value) if key == "image" else np.array(value)
            for key, value in batch.items()}


class _PaddedEvalExample:
  """Maps a position of this host's padded eval share to a transformed example.

  Positions below the share's length hold the host's examples (mask True); the positions
  after them hold black images with label 0 and mask False.
  """

  def __init__(self, source, indices: range, transform, image_shape: tuple[int, int, int]):
    self.source = source
    self.indices = indices
    self.transform = transform
    self.image_shape = image_shape

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    if position < len(self.indices):
      example = self.transform(self.source[self.indices[position]])
      example["mask"] = np.bool_(True)
      return example
    return {
        "image": np.zeros(self.image_shape, np.uint8),
        "label": np.int32(0),
        "mask": np.bool_(False),
    }


class Pipeline:
  """Training and evaluation batches of one host. Build it with `create_pipeline`.

  Attributes:
    num_classes: labels lie in 0..num_classes-1.
    image_shape: (H, W, C) of one image.
    num_train_examples, num_eval_examples: examples in the whole splits (all hosts).
    per_host_batch_size: B, the leading dimension of every batch of this host.
    global_batch_size: B x process_count.
    steps_per_epoch: global training steps per epoch (drop remainder).
    num_eval_batches: batches of one eval pass, the same on every host.
    process_index, process_count: this host and the number of hosts.
  """

  def __init__(
      self,
      train_source: source_lib.ImageSource,
      eval_source: source_lib.ImageSource,
      train_transform,
      eval_transform,
      normalize: transforms.Normalize,
      *,
      image_size: int,
      per_host_batch_size: int,
      seed: int,
      process_index: int,
      process_count: int,
      worker_count: int = 0,
      read_threads: int = 1,
      prefetch_buffer_size: int = 2,
  ):
    if isinstance(per_host_batch_size, bool) or not isinstance(per_host_batch_size, int) or (
        per_host_batch_size < 1
    ):
      raise ValueError(f"per_host_batch_size={per_host_batch_size!r} must be an integer >= 1")
    sharding.check_process(process_index, process_count)
    self._shuffle_seed, self._augment_seed = _derived_seeds(seed, 2)
    self._train_source, self._eval_source = train_source, eval_source
    self._train_transform = _NameBadImages(train_transform)
    self._eval_transform = _NameBadImages(eval_transform)
    self._normalize = _NormalizeImages(normalize)
    self._prefetch_buffer_size = prefetch_buffer_size
    self.num_classes = train_source.num_classes
    self.image_shape = (image_size, image_size, train_source.channels)
    self.num_train_examples = len(train_source)
    self.num_eval_examples = len(eval_source)
    self.per_host_batch_size = per_host_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.global_batch_size = per_host_batch_size * process_count
    self.steps_per_epoch = sharding.train_steps_per_epoch(
        self.num_train_examples, per_host_batch_size, process_count
    )
    if self.global_batch_size > self.num_eval_examples:
      raise ValueError(
          f"the global batch ({per_host_batch_size} per host x {process_count} hosts = "
          f"{self.global_batch_size}) is larger than the eval split ({self.num_eval_examples} "
          "examples): lower global_batch_size or use a larger eval split"
      )
    self.num_eval_batches = sharding.eval_batches_per_host(
        self.num_eval_examples, per_host_batch_size, process_count
    )
    # grain's read buffer bounds how many threads work at once: hold at least one batch
    # per thread (0 keeps prefetching off).
    read_buffer = max(prefetch_buffer_size, read_threads) if prefetch_buffer_size else 0
    self._read_options = grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=read_buffer
    )
    self._multiprocessing = grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=max(1, prefetch_buffer_size)
    )

  def train_dataset(self, num_epochs: int | None = None) -> grain.MapDataset:
    """This host's training batches as a grain MapDataset (element k = step k), with
    uint8 images [B, H, W, C] before normalisation.

    Args:
      num_epochs: epochs to cover; None repeats without end.
    """
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
      raise ValueError(f"num_epochs={num_epochs!r} must be None or an integer >= 1")
    positions = sharding.host_train_positions(
        self.process_index, self.process_count, self.steps_per_epoch, self.per_host_batch_size
    )
    dataset = (
        grain.MapDataset.source(self._train_source)
        .shuffle(seed=self._shuffle_seed)
        .random_map(self._train_transform, seed=self._augment_seed)
        .slice(positions)
        .batch(self.per_host_batch_size, drop_remainder=True)
    )
    return dataset.repeat(num_epochs)

  def _iterate(self, dataset: grain.MapDataset) -> grain.DatasetIterator:
    iterable = dataset.to_iter_dataset(self._read_options)
    if self._multiprocessing.num_workers > 0:
      if not flags.FLAGS.is_parsed():
        # grain reads its absl flags when it starts workers; a program that never parses
        # absl flags (no absl.app.run) runs them with their defaults.
        flags.FLAGS.mark_as_parsed()
      iterable = iterable.mp_prefetch(self._multiprocessing)
    iterable = iterable.map(self._normalize)
    if self._prefetch_buffer_size > 0:
      iterable = grain.experimental.ThreadPrefetchIterDataset(
          iterable, prefetch_buffer_size=self._prefetch_buffer_size
      )
    return iter(iterable)

  def train_iterator(self, num_epochs: int | None = None) -> grain.DatasetIterator:
    """Iterates this host's training batches; endless when num_epochs is None.

    Yields:
      {"image": float32 [B, H, W, C], "label": int32 [B]}.

    The iterator is a grain DatasetIterator: `get_state()` returns a JSON-serialisable
    dict and `set_state(state)` resumes exactly after the last batch yielded before
    `get_state()`, on an iterator built from the same config, seed, batch size, host
    layout and worker_count. With orbax, save and restore it as
    `grain.checkpoint.CheckpointSave(it)` / `grain.checkpoint.CheckpointRestore(it)`
    (one file per process). Call `it.close()` to stop worker processes early, then
    `release_worker_batches()` to free their batches' shared memory before the process exits.
    """
    return self._iterate(self.train_dataset(num_epochs))

  def eval_dataset(self) -> grain.MapDataset:
    """This host's padded evaluation batches as a grain MapDataset (uint8 images)."""
    indices = sharding.host_eval_indices(
        self.num_eval_examples, self.process_index, self.process_count
    )
    example = _PaddedEvalExample(
        self._eval_source, indices, self._eval_transform, self.image_shape
    )
    return (
        grain.MapDataset.range(self.num_eval_batches * self.per_host_batch_size)
        .map(example)
        .batch(self.per_host_batch_size)
    )

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the eval split: every example exactly once across all hosts.

    Yields `num_eval_batches` batches on every host (the same count everywhere):
      {"image": float32 [B, H, W, C], "label": int32 [B], "mask": bool [B]};
    padding examples (to fill the last batches) have mask False, black images, label 0.
    """
    iterator = self._iterate(self.eval_dataset())
    try:
      yield from iterator
    finally:
      iterator.close()
      if self._multiprocessing.num_workers > 0:
        release_worker_batches()


def release_worker_batches() -> None:
  """Frees, before returning, the shared memory of worker batches no longer referenced.

  Batches from grain's worker processes live in shared memory, freed when their arrays
  are deleted. Two things delay that past the end of a pass: after the last batch grain
  keeps some arrays in a reference cycle (the end-of-data exception's traceback), which
  only the cycle collector frees; and grain unlinks freed arrays on a background thread
  (`SharedMemoryArray.enable_async_del`). A process that exits before either has run
  leaves the segments to the resource tracker, which reports them as leaked. Call it
  after closing an iterator that used workers; without workers it costs one collection.
  """
  gc.collect()
  # grain 0.2.18 exposes no public way to wait for its deletion thread; its pool has one
  # thread that takes requests in order, so a no-op run through it returns once every
  # earlier deletion is done.
  deletion_pool = getattr(grain.multiprocessing.SharedMemoryArray, "_del_thread_pool", None)
  if deletion_pool is not None:
    deletion_pool.apply(int)


def _check_native_size(train_source: source_lib.ImageSource, config: Any) -> None:
  """For transforms that do not resize, the images must already be image_size."""
  if config.transform == "imagenet":
    return
  record = train_source[0]
  try:
    height, width = decode.to_array(record["image"], train_source.channels).shape[:2]
  except folder.DECODE_ERRORS as error:
    raise ValueError(f"cannot decode the image {record.get('path', 'of record 0')}: "
                     f"{type(error).__name__}: {error}") from error
  if (height, width) != (config.image_size, config.image_size):
    raise ValueError(
        f"image_size={config.image_size} with transform={config.transform!r}, but the "
        f"images are {height}x{width}: set image_size={height} or use transform='imagenet'"
    )


def create_pipeline(
    config: Any,
    *,
    per_host_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Pipeline:
  """Opens the data of `config` and builds this host's pipeline.

  Args:
    config: a data config (fields in `n2uq_jax.data.config`; `default_config()` gives
      the embedded default).
    per_host_batch_size: B, examples per batch on this host; the global batch is
      B x process_count.
    seed: the run's data seed (shuffling and augmentation); hosts must share it.
    process_index, process_count: this host and the number of hosts; None takes
      jax.process_index() / jax.process_count().

  Raises:
    ValueError: a bad config value (naming it and the valid values), a dataset that is not
      prepared (`DatasetNotPreparedError`, with the command that prepares it), or a
      batch that does not fit the training split.
  """
  config_lib.validate(config)
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  train_source, eval_source = sources.open_splits(config)
  channels = train_source.channels
  for field in ("mean", "std"):
    if len(getattr(config, field)) != channels:
      raise ValueError(
          f"{field}={tuple(getattr(config, field))} needs {channels} value(s), one per "
          f"channel of {config.name or config.data_dir!r}"
      )
  _check_native_size(train_source, config)
  train_transform, eval_transform = transforms.make_transforms(
      config.transform, config.image_size, channels
  )
  return Pipeline(
      train_source,
      eval_source,
      train_transform,
      eval_transform,
      transforms.Normalize(config.mean, config.std),
      image_size=config.image_size,
      per_host_batch_size=per_host_batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      worker_count=config.worker_count,
      read_threads=config.read_threads,
      prefetch_buffer_size=config.prefetch_buffer_size,
  )
