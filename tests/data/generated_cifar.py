"""A stand-in for the CIFAR-10 training tarball: generated 32x32 colour JPEGs in the
tarball's layout ``cifar10/train/<class>/<NNNN>.jpg``, so that the data tests run
where the real tarball is absent.

Each class has its own colour gradient and stripe orientation, every image adds
random blobs and noise, so images differ in content and JPEG encoding is lossy as on
photographs."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import PIL.Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
"""CIFAR-10's class names (sorted, as the image folders list them)."""

SIZE = 32


def generated_image(label: int, index: int) -> np.ndarray:
  """uint8 ``(32, 32, 3)`` pixels of image ``index`` of class ``label``."""
  rng = np.random.default_rng([label, index])
  y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
  angle = np.pi * label / len(CLASSES)
  stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + label % 4) * (x * np.cos(angle) + y * np.sin(angle)))
  base = np.stack([x, y, 1 - x], axis=-1) * (0.3 + 0.07 * label)
  image = 0.6 * base + 0.3 * stripes[..., None] * rng.uniform(0.3, 1.0, 3)
  for _ in range(3):
    cy, cx = rng.uniform(0, 1, 2)
    radius = rng.uniform(0.08, 0.25)
    blob = ((y - cy) ** 2 + (x - cx) ** 2) < radius ** 2
    image[blob] = rng.uniform(0, 1, 3)
  image += rng.normal(0, 0.04, image.shape)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def write_tarball(path: str, files_per_class: int) -> str:
  """Writes ``files_per_class`` generated JPEGs of each class to the gzipped tar
  ``path`` (layout ``cifar10/train/<class>/<NNNN>.jpg``); returns ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with tarfile.open(path, "w:gz") as archive:
    for label, name in enumerate(CLASSES):
      for index in range(files_per_class):
        data = jpeg_bytes(generated_image(label, index))
        member = tarfile.TarInfo(f"cifar10/train/{name}/{index:04d}.jpg")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
  return path
