"""Image folders in the ImageNet layout: root/<split>/<class>/<file>, JPEG or PNG.

Classes are the sub-directories of the training split in sorted (code point) order, so
the label of a class never depends on the file system's listing order; files within a
class are sorted the same way. Records hold the file's encoded bytes, decoded later by the
transform (which lets JPEG decoding skip what the crop does not need), and its path, so
that a file that does not decode is named in the error.

Unreadable or truncated images: by default (``bad_images="fail"``) decoding one raises a
``ValueError`` naming the file. With ``bad_images="skip"`` every record is decoded once
more when read, to check it (slower: use it to get past a few bad files), and a bad one
is replaced by the next good record of the split, with a warning that counts the files
skipped so far in this process.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

from absl import logging
import numpy as np
import PIL.Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BAD_IMAGE_POLICIES = ("fail", "skip")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)
"""What PIL raises for a file that is not a readable image (truncated, corrupt, empty)."""


def class_names(root: str, split: str) -> list[str]:
  """The sorted class sub-directory names of root/split.

  Raises:
    ValueError: if root/split is not a directory or has no class sub-directories.
  """
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    available = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir()
    ) if os.path.isdir(root) else []
    raise ValueError(
        f"image folder split {split!r} not found: {split_dir} is not a directory "
        f"(splits under {root}: {available})"
    )
  names = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
  if not names:
    raise ValueError(f"{split_dir} has no class sub-directories (expected <class>/<file>)")
  return names


class ImageFolderSource:
  """Records {"image": file bytes, "label": class index} of root/split.

  Args:
    root: the folder holding one directory per split.
    split: the split directory's name, e.g. "train" or "val".
    classes: class names in label order; defaults to this split's own sorted class
      directories. Pass the training split's classes when opening an evaluation split,
      so that labels agree even when the evaluation split lacks a class.
    bad_images: "fail" or "skip" (see the module docstring).

  Raises:
    ValueError: a missing split, a class directory without images, no images at all,
      or an unknown ``bad_images``.
  """

  channels = 3

  def __init__(self, root: str, split: str, classes: Sequence[str] | None = None,
               bad_images: str = "fail"):
    if bad_images not in BAD_IMAGE_POLICIES:
      raise ValueError(f"bad_images={bad_images!r} must be one of {BAD_IMAGE_POLICIES}")
    self.bad_images = bad_images
    self.skipped = 0
    own_classes = class_names(root, split)
    self.classes = list(classes) if classes is not None else own_classes
    unknown = sorted(set(own_classes) - set(self.classes))
    if unknown:
      raise ValueError(
          f"classes {unknown[:5]} of split {split!r} are not among the "
          f"{len(self.classes)} training classes"
      )
    self.num_classes = len(self.classes)
    self.class_dirs = [os.path.join(root, split, name) for name in self.classes]
    names, labels = [], []
    for label, class_dir in enumerate(self.class_dirs):
      if not os.path.isdir(class_dir):
        continue
      files = sorted(
          entry.name
          for entry in os.scandir(class_dir)
          if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)
      )
      if not files:
        raise ValueError(
            f"class directory {class_dir} holds no {'/'.join(IMAGE_SUFFIXES)} file; remove "
            "it or put its images in it"
        )
      names.extend(os.fsencode(file) for file in files)
      labels.extend([label] * len(files))
    if not names:
      raise ValueError(
          f"no {'/'.join(IMAGE_SUFFIXES)} files under {os.path.join(root, split)}/<class>/"
      )
    # One fixed-width byte array instead of a million Python strings: compact, and quick
    # to pickle when grain sends the source to its worker processes.
    self.file_names = np.asarray(names, dtype=bytes)
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def path(self, index: int) -> str:
    """The file of record `index`."""
    label = int(self.labels[index])
    return os.path.join(self.class_dirs[label], os.fsdecode(self.file_names[index]))

  def _read(self, index: int) -> dict:
    path = self.path(index)
    with open(path, "rb") as file:
      image = file.read()
    return {"image": image, "label": int(self.labels[index]), "path": path}

  def __getitem__(self, index: int) -> dict:
    record = self._read(index)
    if self.bad_images == "fail":
      return record
    for offset in range(len(self)):
      candidate = record if offset == 0 else self._read((index + offset) % len(self))
      try:
        PIL.Image.open(io.BytesIO(candidate["image"])).load()
        return candidate
      except DECODE_ERRORS as error:
        self.skipped += 1
        logging.warning("skipping unreadable image %s (%s); %d skipped so far in this process",
                        candidate["path"], error, self.skipped)
    raise ValueError(f"no image of {os.path.dirname(os.path.dirname(record['path']))} decodes")
