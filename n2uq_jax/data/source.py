"""The interface shared by every image source, plus in-memory and subset sources.

An image source is a random-access sequence of records (grain's RandomAccessDataSource
protocol: `__len__` and `__getitem__`), each record a dict

    {"image": encoded JPEG/PNG bytes or a uint8 array [H, W, C], "label": int},

with two attributes the pipeline needs: `num_classes` (labels lie in 0..num_classes-1)
and `channels` (1 or 3: the channel count of the decoded images). Sources are picklable,
so that grain can send them to its worker processes.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

Record = dict[str, Any]


class ImageSource(Protocol):
  """Random access to labelled images: see the module docstring."""

  num_classes: int
  channels: int

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> Record:
    ...


class ArraySource:
  """Images held in memory as uint8 [N, H, W, C] with int labels [N]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(
          f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}"
      )
    if labels.shape != images.shape[:1]:
      raise ValueError(f"labels {labels.shape} do not match images {images.shape}")
    self.images = images
    self.labels = labels.astype(np.int32)
    self.num_classes = num_classes
    self.channels = images.shape[-1]

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> Record:
    return {"image": self.images[index], "label": int(self.labels[index])}


class SubsetSource:
  """The records of `parent` at `indices`, in that order."""

  def __init__(self, parent: ImageSource, indices: Sequence[int]):
    self.parent = parent
    self.indices = np.asarray(indices, np.int64)
    self.num_classes = parent.num_classes
    self.channels = parent.channels

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Record:
    return self.parent[int(self.indices[index])]


def holdout_split(
    source: ImageSource, fraction: float, seed: int
) -> tuple[SubsetSource, SubsetSource]:
  """Splits `source` deterministically into (kept, held_out) parts.

  `round(fraction * len(source))` records, at least one, chosen by a permutation seeded
  with `seed` alone, form the held-out part; the rest is kept. Both parts keep the source
  order, so sequential storage is read in order. The same (source, fraction, seed) always
  gives the same split, whatever the training seed or process count.

  Raises:
    ValueError: if `fraction` is not in (0, 1) or leaves either part empty.
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction}")
  total = len(source)
  held_out_count = max(1, round(fraction * total))
  if held_out_count >= total:
    raise ValueError(
        f"holding out {fraction} of {total} examples leaves no training examples"
    )
  order = np.random.default_rng(seed).permutation(total)
  held_out = np.sort(order[:held_out_count])
  kept = np.sort(order[held_out_count:])
  return SubsetSource(source, kept), SubsetSource(source, held_out)
