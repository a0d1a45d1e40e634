"""Image folders small enough to hold in memory, decoded once: the ``memory`` source.

``source="memory"`` reads the same ``data_dir/<split>/<class>/<file>`` folders as
``source="folder"`` (the same class order, files, labels and ``bad_images`` policy), but
decodes every image once, when the source is opened, into one uint8 array [N, H, W, C]
with int32 labels [N]. Training then never touches a JPEG again: the ``cifar`` and
``none`` transforms take the decoded array as it is, so a run sees bit-identical batches
to a ``folder`` run at the same seed, with the same held-out split (the split only
permutes record indices). The ``imagenet`` transform agrees too, except where the folder
source lets the JPEG decoder reduce an image at least twice the output size (SPEC 5
draft decoding); the memory source always resizes from the full decode.

All images of a split must have one size (CIFAR-10: 32 x 32 x 3, 50,000 images =
154 MB). Decoding CIFAR-10 costs about 16 s of CPU time (0.32 ms per image, file read
included), so:

- within one process the decoded arrays are kept, keyed by the folder's contents, and a
  second opening (another run of a study, the evaluation split) reuses them;
- with ``cache_dir`` set, they are also written there as ``<split>-<key>.npz`` (written
  to a temporary name, then renamed) and read back by later processes. The key hashes the
  split, the class names, every file's name, size and modification time, the channel
  count and the ``bad_images`` policy, so a changed folder is decoded afresh and a stale
  file is never read.

With ``worker_count > 0`` grain pickles the source, arrays included, to every worker
process; with the transforms this cheap, ``worker_count=0`` is the faster setting.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Sequence

import numpy as np

from n2uq_jax.data import decode
from n2uq_jax.data import folder
from n2uq_jax.data import source as source_lib

_DECODED: dict[str, tuple[np.ndarray, np.ndarray]] = {}
"""Arrays decoded in this process, by `contents_key`."""


class MemoryFolderSource(source_lib.ArraySource):
  """The records of an image folder's split, decoded: {"image": uint8 [H, W, C], "label"}.

  Args:
    root, split, classes, bad_images: as `n2uq_jax.data.folder.ImageFolderSource`.
    cache_dir: a directory for the decoded arrays ("" keeps them in this process only).

  Raises:
    ValueError: as the folder source; an image that does not decode (``bad_images="fail"``)
      or whose size differs from the split's first image, naming the file.
  """

  def __init__(self, root: str, split: str, classes: Sequence[str] | None = None,
               bad_images: str = "fail", cache_dir: str = ""):
    files = folder.ImageFolderSource(root, split, classes, bad_images=bad_images)
    key = contents_key(files)
    if key not in _DECODED:
      _DECODED[key] = _load_or_decode(files, split, key, cache_dir)
    images, labels = _DECODED[key]
    super().__init__(images, labels, files.num_classes)
    self.classes = files.classes


def clear_decoded() -> None:
  """Forgets the arrays decoded in this process (frees their memory once no source holds
  them; the next opening decodes again or reads the cache)."""
  _DECODED.clear()


def contents_key(files: folder.ImageFolderSource) -> str:
  """A hex digest of what the decoded arrays depend on (see the module docstring)."""
  digest = hashlib.sha256()
  digest.update(repr((files.classes, files.channels, files.bad_images)).encode())
  for index in range(len(files)):
    stat = os.stat(files.path(index))
    digest.update(b"%s\0%d\0%d\0%d\n" % (files.file_names[index], files.labels[index],
                                         stat.st_size, stat.st_mtime_ns))
  return digest.hexdigest()[:20]


def decode_all(files: folder.ImageFolderSource) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, H, W, C], int32 labels [N]) of every record of `files`, decoded as
  the transforms decode a record (`n2uq_jax.data.decode.to_array`)."""
  images = None
  labels = np.empty(len(files), np.int32)
  for index in range(len(files)):
    record = files[index]  # with bad_images="skip", already the next good image
    try:
      pixels = decode.to_array(record["image"], files.channels)
    except folder.DECODE_ERRORS as error:
      raise ValueError(
          f"cannot decode the image {record['path']}: {type(error).__name__}: {error}. "
          "Replace or remove the file, or set the data config's bad_images='skip'") from error
    if images is None:
      images = np.empty((len(files),) + pixels.shape, np.uint8)
    elif pixels.shape != images.shape[1:]:
      raise ValueError(
          f"{record['path']} is {pixels.shape[0]}x{pixels.shape[1]}, the split's first image "
          f"is {images.shape[1]}x{images.shape[2]}: source 'memory' needs one image size; "
          "use source 'folder' for images of mixed sizes")
    images[index] = pixels
    labels[index] = record["label"]
  return images, labels


def _load_or_decode(files: folder.ImageFolderSource, split: str, key: str,
                    cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
  if not cache_dir:
    return decode_all(files)
  cache_dir = os.path.expanduser(cache_dir)
  path = os.path.join(cache_dir, f"{split}-{key}.npz")
  if os.path.exists(path):
    with np.load(path) as stored:
      return stored["images"], stored["labels"]
  images, labels = decode_all(files)
  os.makedirs(cache_dir, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npz.partial", delete=False) as file:
    np.savez(file, images=images, labels=labels)
  os.replace(file.name, path)
  return images, labels
