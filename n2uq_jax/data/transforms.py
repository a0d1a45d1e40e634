"""Per-example image transforms of the training recipe (SPEC section 5), and normalisation.

Each transform maps a source record {"image": encoded bytes or uint8 array, "label": int}
to an example {"image": uint8 [S, S, C], "label": int32 []}, S = image_size.

- "imagenet" (SPEC 5, "train augmentation" and "eval"): training takes a random-resized
  crop (area 0.08-1 of the image, aspect ratio 3/4-4/3, log-uniform), resizes it to S x S
  and flips it horizontally with probability 1/2; evaluation resizes the short side to
  S / 0.875 and takes the central S x S crop (224 px from 256 px for ImageNet).
- "cifar": the small-image recipe: zero-pad 4 pixels, random S x S crop, horizontal flip
  for training; the image as it is for evaluation. Images must already be S x S.
- "none": the image as it is, for the tiny embedded images. Images must be S x S.

`Normalize` then maps uint8 pixels, one example or a whole batch, to float32
(pixel - mean) / std per channel, with mean and std in 0..255 pixel units (ImageNet:
`IMAGENET_MEAN`, `IMAGENET_STD`). The pipeline normalises whole batches after they leave
the worker processes, so that workers ship uint8 (a quarter of the bytes).

Training transforms are functions of (record, rng) and draw every random number from
`rng` (a numpy Generator), so the pipeline makes them deterministic by seeding `rng` per
example.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from n2uq_jax.data import decode

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # (0.485, 0.456, 0.406) x 255
IMAGENET_STD = (58.395, 57.12, 57.375)  # (0.229, 0.224, 0.225) x 255
EVAL_CROP_FRACTION = 0.875  # resize to S / 0.875, then centre-crop S
TRANSFORMS = ("imagenet", "cifar", "none")

Record = dict[str, Any]
Example = dict[str, np.ndarray]


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> decode.Box:
  """Samples the crop of the random-resized-crop augmentation (SPEC 5).

  The crop covers a fraction of the image area drawn uniformly from `area_range`, with
  an aspect ratio (width / height) drawn log-uniformly from `aspect_range`, at a uniform
  position. Draws that do not fit are retried `attempts` times; after that the largest
  centred crop with an aspect ratio inside `aspect_range` is used.

  Returns:
    (left, top, right, bottom) in integer pixels, inside the image.
  """
  log_aspect_low, log_aspect_high = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(attempts):
    area = width * height * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(log_aspect_low, log_aspect_high))
    crop_width = round(math.sqrt(area * aspect))
    crop_height = round(math.sqrt(area / aspect))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      left = int(rng.integers(0, width - crop_width + 1))
      top = int(rng.integers(0, height - crop_height + 1))
      return (left, top, left + crop_width, top + crop_height)
  aspect = width / height
  crop_width, crop_height = width, height
  if aspect < aspect_range[0]:
    crop_height = round(width / aspect_range[0])
  elif aspect > aspect_range[1]:
    crop_width = round(height * aspect_range[1])
  left, top = (width - crop_width) // 2, (height - crop_height) // 2
  return (left, top, left + crop_width, top + crop_height)


def central_crop_box(
    width: int, height: int, crop_fraction: float = EVAL_CROP_FRACTION
) -> decode.Box:
  """The square centre crop of side crop_fraction x the short side (SPEC 5, eval).

  Resizing this box to S x S equals resizing the short side to S / crop_fraction and
  cropping the central S x S, without rounding the intermediate size.

  Returns:
    (left, top, right, bottom) in (fractional) pixels.
  """
  side = crop_fraction * min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  return (left, top, left + side, top + side)


class Normalize:
  """(pixels - mean) / std per channel: uint8 [..., W, C] -> float32 [..., W, C].

  Args:
    mean, std: C values in 0..255 pixel units.
  """

  def __init__(self, mean: Sequence[float], std: Sequence[float]):
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.shape != std.shape or mean.ndim != 1:
      raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need one value per channel")
    if np.any(std <= 0):
      raise ValueError(f"std must be positive, got {tuple(std)}")
    self.scale = 1.0 / std
    self.offset = -mean / std

  def __call__(self, pixels: np.ndarray) -> np.ndarray:
    # Broadcasting [C] over [..., W, C] would make numpy loop over C values at a time;
    # per-row constants [W * C] let it stream whole rows (about 10x faster).
    width = pixels.shape[-2]
    rows = pixels.astype(np.float32).reshape(-1, width * len(self.scale))
    rows *= np.tile(self.scale, width)
    rows += np.tile(self.offset, width)
    return rows.reshape(pixels.shape)


class _Transform:
  """Shared state: output size and channel count."""

  def __init__(self, image_size: int, channels: int):
    self.image_size = image_size
    self.channels = channels

  def _full_image(self, record: Record) -> np.ndarray:
    """Decodes the whole image and checks that it is image_size x image_size."""
    pixels = decode.to_array(record["image"], self.channels)
    if pixels.shape[:2] != (self.image_size, self.image_size):
      raise ValueError(
          f"{type(self).__name__} expects {self.image_size}x{self.image_size} images, got "
          f"{pixels.shape[0]}x{pixels.shape[1]}; set image_size to the dataset's size or "
          "use transform='imagenet', which crops and resizes"
      )
    return pixels


def _example(pixels: np.ndarray, label: Any) -> Example:
  return {"image": np.ascontiguousarray(pixels), "label": np.int32(label)}


class ImageNetTrain(_Transform):
  """Random-resized crop to S x S and horizontal flip (SPEC 5, train)."""

  def __call__(self, record: Record, rng: np.random.Generator) -> Example:
    image = decode.open_image(record["image"])
    box = random_resized_crop_box(image.size[0], image.size[1], rng)
    flip = rng.random() < 0.5
    pixels = decode.crop_resize(image, box, self.image_size, self.channels, flip=flip)
    return _example(pixels, record["label"])


class ImageNetEval(_Transform):
  """Short side to S / 0.875, central S x S crop (SPEC 5, eval)."""

  def __call__(self, record: Record) -> Example:
    image = decode.open_image(record["image"])
    box = central_crop_box(image.size[0], image.size[1])
    return _example(decode.crop_resize(image, box, self.image_size, self.channels), record["label"])


class CifarTrain(_Transform):
  """Zero-pad by `padding`, random S x S crop, horizontal flip."""

  def __init__(self, image_size: int, channels: int, padding: int = 4):
    super().__init__(image_size, channels)
    self.padding = padding

  def __call__(self, record: Record, rng: np.random.Generator) -> Example:
    pixels = self._full_image(record)
    size, pad = self.image_size, self.padding
    padded = np.zeros((size + 2 * pad, size + 2 * pad, self.channels), np.uint8)
    padded[pad : pad + size, pad : pad + size] = pixels
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    pixels = padded[top : top + size, left : left + size]
    if rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return _example(pixels, record["label"])


class Unchanged(_Transform):
  """The image as it is (must be S x S): CIFAR eval, and transform 'none'."""

  def __call__(self, record: Record, rng: np.random.Generator | None = None) -> Example:
    del rng  # deterministic; accepts an rng so that it can serve as a training transform
    return _example(self._full_image(record), record["label"])


def make_transforms(name: str, image_size: int, channels: int) -> tuple[_Transform, _Transform]:
  """Returns (train_transform, eval_transform) for the transform `name`.

  The training transform is called as f(record, rng), the evaluation one as f(record).
  """
  if name == "imagenet":
    return ImageNetTrain(image_size, channels), ImageNetEval(image_size, channels)
  if name == "cifar":
    return CifarTrain(image_size, channels), Unchanged(image_size, channels)
  if name == "none":
    return Unchanged(image_size, channels), Unchanged(image_size, channels)
  raise ValueError(f"transform {name!r} is not one of {TRANSFORMS}")
