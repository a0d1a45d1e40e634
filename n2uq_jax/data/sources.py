"""Opens the training and evaluation sources a data config names.

The four kinds of source ("embedded", "tfds", "folder", "memory": image folders decoded
once into memory) yield the same records (see
`n2uq_jax.data.source`), so everything downstream is shared.
"""

from __future__ import annotations

from typing import Any

from n2uq_jax.data import embedded
from n2uq_jax.data import folder
from n2uq_jax.data import memory
from n2uq_jax.data import source as source_lib
from n2uq_jax.data import tfds_source

SOURCES = ("embedded", "tfds", "folder", "memory")


def open_source(
    config: Any, split: str, classes: list[str] | None = None
) -> source_lib.ImageSource:
  """The source of `split` for config.source / config.name / config.data_dir.

  Args:
    config: a data config (see `n2uq_jax.data.config.default_config`).
    split: the split's name (a sub-directory for image folders).
    classes: for image folders (also "memory"), the class names in label order (default: the split's
      own class directories).

  Raises:
    ValueError: unknown source kind, dataset, split or folder.
  """
  if config.source == "embedded":
    return embedded.load_embedded(config.name, split)
  if config.source == "tfds":
    return tfds_source.TfdsSource(config.name, config.data_dir or None, split)
  if config.source in ("folder", "memory"):
    if not config.data_dir:
      raise ValueError(f"source {config.source!r} needs data_dir, the folder holding "
                       "<split>/<class>/")
    bad_images = getattr(config, "bad_images", "fail")
    if config.source == "memory":
      return memory.MemoryFolderSource(config.data_dir, split, classes, bad_images=bad_images,
                                       cache_dir=getattr(config, "cache_dir", ""))
    return folder.ImageFolderSource(config.data_dir, split, classes, bad_images=bad_images)
  raise ValueError(f"source {config.source!r} is not one of {SOURCES}")


def open_splits(config: Any) -> tuple[source_lib.ImageSource, source_lib.ImageSource]:
  """(train, eval) sources of a data config.

  With config.validation_fraction > 0 the eval examples are carved deterministically
  (seeded by config.split_seed) out of config.train_split and config.eval_split is not
  used; otherwise eval reads config.eval_split.

  Raises:
    ValueError: as `open_source`, or when the two splits disagree on classes or channels.
  """
  train = open_source(config, config.train_split)
  if config.validation_fraction > 0:
    return source_lib.holdout_split(train, config.validation_fraction, config.split_seed)
  evaluation = open_source(config, config.eval_split, getattr(train, "classes", None))
  if (evaluation.num_classes, evaluation.channels) != (train.num_classes, train.channels):
    raise ValueError(
        f"eval split {config.eval_split!r} has {evaluation.num_classes} classes and "
        f"{evaluation.channels} channels, train split {config.train_split!r} has "
        f"{train.num_classes} and {train.channels}"
    )
  return train, evaluation
