"""Decoding of dataset images into uint8 pixel arrays, cropping and resizing on the way.

A record's image is either encoded bytes (JPEG or PNG, as stored by image folders and by
tfds) or a uint8 array [H, W] / [H, W, C] (the embedded datasets). Every function here
returns uint8 arrays of shape [H, W, channels] with channels 1 (grey) or 3 (RGB).

JPEG decoding bounds ImageNet input throughput. `crop_resize` therefore asks the JPEG
decoder for a reduced decode (DCT-domain scaling by 1/2, 1/4 or 1/8, PIL's draft mode)
whenever the crop, reduced by that factor, still holds at least as many pixels as the
output in both directions; the remaining reduction is done by the antialiased resize.
"""

from __future__ import annotations

import io
from typing import Union

import numpy as np
import PIL.Image

EncodedOrArray = Union[bytes, np.ndarray]
Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels

_MODES = {1: "L", 3: "RGB"}
_MAX_DRAFT_FACTOR = 8  # libjpeg scales by 1/2, 1/4 or 1/8 during decoding


def open_image(image: EncodedOrArray) -> PIL.Image.Image:
  """Wraps a record's image in a PIL image without decoding encoded bytes yet.

  Args:
    image: encoded JPEG/PNG bytes, or a uint8 array [H, W] or [H, W, C] with C in {1, 3}.

  Returns:
    A PIL image; for encoded bytes only the header has been read, so `size` is known and
    the decoder can still be asked for a reduced decode.
  """
  if isinstance(image, (bytes, bytearray, memoryview)):
    return PIL.Image.open(io.BytesIO(image))
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f"image arrays must be uint8, got dtype {array.dtype}")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
    raise ValueError(
        f"image arrays must have shape [H, W], [H, W, 1] or [H, W, 3], got {array.shape}"
    )
  return PIL.Image.fromarray(array)


def _as_array(image: PIL.Image.Image, channels: int) -> np.ndarray:
  """Converts to the colour mode of `channels` and returns uint8 [H, W, channels]."""
  mode = _MODES[channels]
  if image.mode != mode:
    image = image.convert(mode)
  array = np.asarray(image)
  return array[..., None] if channels == 1 else array


def to_array(image: EncodedOrArray, channels: int) -> np.ndarray:
  """Fully decodes a record's image.

  Args:
    image: encoded bytes or a uint8 array, as accepted by `open_image`.
    channels: 1 (grey) or 3 (RGB); colour images are converted accordingly.

  Returns:
    uint8 array [H, W, channels].
  """
  if isinstance(image, np.ndarray) and image.dtype == np.uint8:
    array = image if image.ndim == 3 else image[..., None]
    if array.shape[-1] == channels:
      return array
  return _as_array(open_image(image), channels)


def _reduce_while_decoding(image: PIL.Image.Image, box: Box, size: int) -> Box:
  """Asks a not yet decoded JPEG for the largest DCT reduction the crop allows.

  Returns the crop box in the coordinates of the reduced image (unchanged when no
  reduction applies: not a JPEG, already decoded, or a crop smaller than 2 * size).
  """
  if image.format != "JPEG":
    return box
  left, top, right, bottom = box
  crop_side = min(right - left, bottom - top)
  factor = 1
  while factor < _MAX_DRAFT_FACTOR and crop_side / (2 * factor) >= size:
    factor *= 2
  if factor == 1:
    return box
  full_width, full_height = image.size
  drafted = image.draft(image.mode, (full_width // factor, full_height // factor))
  if drafted is None:  # the decoder cannot reduce this image (e.g. already loaded)
    return box
  scale = full_width / drafted[1][2]  # draft reports the full image in reduced pixels
  return (left / scale, top / scale, right / scale, bottom / scale)


def crop_resize(
    image: PIL.Image.Image, box: Box, size: int, channels: int, flip: bool = False
) -> np.ndarray:
  """Crops `box` out of `image`, resizes it to size x size (bilinear, antialiased), flips.

  Args:
    image: from `open_image`, not yet decoded when it is a JPEG (so that the decoder can
      skip detail the output cannot show).
    box: (left, top, right, bottom) in pixels of the full-size image; fractional values
      are allowed.
    size: output height and width.
    channels: 1 (grey) or 3 (RGB).
    flip: mirror the result horizontally (in PIL, so that the array stays contiguous).

  Returns:
    uint8 array [size, size, channels].
  """
  box = _reduce_while_decoding(image, box, size)
  mode = _MODES[channels]
  if image.mode != mode:
    image = image.convert(mode)
  resized = image.resize((size, size), PIL.Image.Resampling.BILINEAR, box=box)
  if flip:
    resized = resized.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
  array = np.asarray(resized)
  return array[..., None] if channels == 1 else array
