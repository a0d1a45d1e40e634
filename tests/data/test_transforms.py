"""SPEC 5 transforms on real JPEGs: crop geometry, reduced JPEG decoding, normalisation."""

import io

import numpy as np
import PIL.Image
import pytest

from n2uq_jax.data import decode
from n2uq_jax.data import transforms
from tests.data.conftest import cifar_files
from tests.data.conftest import decoded

MEAN, STD = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD

@pytest.mark.parametrize("width, height", [(500, 375), (400, 400)])
def test_random_resized_crop_box_respects_area_and_aspect_ranges(width, height):
  rng = np.random.default_rng(0)
  areas, aspects = [], []
  for _ in range(2000):
    left, top, right, bottom = transforms.random_resized_crop_box(width, height, rng)
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    crop_width, crop_height = right - left, bottom - top
    areas.append(crop_width * crop_height / (width * height))
    aspects.append(crop_width / crop_height)
  # Rounding the crop to whole pixels moves area and aspect by well under 3%.
  assert 0.08 * 0.97 <= min(areas) < 0.1 and 0.9 < max(areas) <= 1.0
  assert 0.75 * 0.97 <= min(aspects) < 0.8 and 1.25 < max(aspects) <= (4 / 3) * 1.03
  # Draws that do not fit are redrawn, which favours small crops a little: uniform draws
  # alone would average (0.08 + 1) / 2 = 0.54.
  assert 0.38 < np.mean(areas) < 0.54
  if width == height:  # log-uniform aspect ratio: symmetric around 1 in log space
    assert abs(np.mean(np.log(aspects))) < 0.02


def test_random_resized_crop_box_falls_back_to_a_centred_clamped_crop():
  # A crop of a 1000x20 strip with area >= 8% (1600 px) and aspect <= 4/3 would be at
  # least 34 px high: no draw fits, so the fallback is taken.
  rng = np.random.default_rng(1)
  left, top, right, bottom = transforms.random_resized_crop_box(1000, 20, rng)
  assert (top, bottom) == (0, 20)
  assert right - left == round(20 * 4 / 3)
  assert left == (1000 - (right - left)) // 2


def test_random_resized_crop_box_is_a_function_of_the_rng():
  boxes = [transforms.random_resized_crop_box(500, 375, np.random.default_rng(7)) for _ in "ab"]
  assert boxes[0] == boxes[1]
  other = transforms.random_resized_crop_box(500, 375, np.random.default_rng(8))
  assert other != boxes[0]


def test_central_crop_box_is_resize_to_size_over_0875_then_centre_crop():
  left, top, right, bottom = transforms.central_crop_box(500, 375)
  side = 0.875 * 375  # 224 px of a short side resized to 256
  assert (right - left, bottom - top) == (side, side)
  assert (left + right) / 2 == 250 and (top + bottom) / 2 == 187.5


@pytest.mark.parametrize("name", ["landscape", "portrait", "huge"])
def test_imagenet_eval_matches_resize_then_centre_crop(large_jpegs, name):
  jpeg = large_jpegs[name]
  transform = transforms.ImageNetEval(224, 3)
  example = transform({"image": jpeg, "label": 3})
  assert example["image"].shape == (224, 224, 3) and example["image"].dtype == np.uint8
  assert example["label"] == 3 and example["label"].dtype == np.int32
  # Reference: full decode, short side resized to 256, central 224 x 224.
  image = PIL.Image.open(io.BytesIO(jpeg)).convert("RGB")
  scale = 256 / min(image.size)
  resized = image.resize(
      (round(image.size[0] * scale), round(image.size[1] * scale)), PIL.Image.BILINEAR
  )
  left, top = (resized.size[0] - 224) // 2, (resized.size[1] - 224) // 2
  reference = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
  output = example["image"].astype(np.float32)
  error = np.abs(output - reference)
  assert error.mean() < 2.0, error.mean()
  # Negative control: a crop shifted by 16 pixels is clearly different.
  shifted = np.asarray(resized.crop((left + 16, top, left + 240, top + 224)), np.float32)
  assert np.abs(output - shifted).mean() > 4 * error.mean()


def test_reduced_jpeg_decoding_applies_only_when_the_crop_allows_it(large_jpegs):
  huge = decode.open_image(large_jpegs["huge"])  # 1600 x 1200
  box = decode._reduce_while_decoding(huge, (0, 0, 1000, 1000), 224)
  assert huge.size == (400, 300)  # 1000 / 4 = 250 >= 224 > 1000 / 8
  assert box == (0, 0, 250, 250)
  small_crop = decode.open_image(large_jpegs["huge"])
  assert decode._reduce_while_decoding(small_crop, (0, 0, 440, 440), 224) == (0, 0, 440, 440)
  assert small_crop.size == (1600, 1200)
  png = decode.open_image(large_jpegs["png"])
  assert decode._reduce_while_decoding(png, (0, 0, 300, 200), 50) == (0, 0, 300, 200)


def test_reduced_jpeg_decoding_gives_the_full_decode_result(large_jpegs):
  box = (100.0, 50.0, 1300.0, 1150.0)
  fast = decode.crop_resize(decode.open_image(large_jpegs["huge"]), box, 224, 3)
  full = decode.open_image(large_jpegs["huge"])
  full.load()  # decoded already: no reduction possible
  exact = decode.crop_resize(full, box, 224, 3)
  assert fast.shape == exact.shape == (224, 224, 3)
  difference = np.abs(fast.astype(np.float32) - exact)
  assert difference.mean() < 1.5, difference.mean()
  other = decode.crop_resize(decode.open_image(large_jpegs["huge"]), (0, 0, 1200, 1100), 224, 3)
  assert np.abs(other.astype(np.float32) - exact).mean() > 4 * difference.mean()


def test_crop_resize_flip_mirrors_the_output(large_jpegs):
  box = (10, 20, 310, 320)
  plain = decode.crop_resize(decode.open_image(large_jpegs["landscape"]), box, 64, 3)
  flipped = decode.crop_resize(decode.open_image(large_jpegs["landscape"]), box, 64, 3, True)
  np.testing.assert_array_equal(flipped, plain[:, ::-1])


def test_imagenet_train_on_real_cifar_jpegs(cifar_folder):
  transform = transforms.ImageNetTrain(24, 3)
  for path in cifar_files(cifar_folder)[:20]:
    jpeg = open(path, "rb").read()
    example = transform({"image": jpeg, "label": 5}, np.random.default_rng(0))
    assert example["image"].shape == (24, 24, 3) and example["image"].dtype == np.uint8
    assert example["label"] == 5 and example["label"].dtype == np.int32
    again = transform({"image": jpeg, "label": 5}, np.random.default_rng(0))
    np.testing.assert_array_equal(example["image"], again["image"])
  draws = [
      transform({"image": jpeg, "label": 5}, np.random.default_rng(seed))["image"]
      for seed in range(4)
  ]
  assert not all(np.array_equal(draws[0], d) for d in draws[1:])


def test_imagenet_train_crop_is_drawn_from_the_image(large_jpegs):
  """The output equals crop_resize of the box the same rng draws (plus the same flip)."""
  jpeg = large_jpegs["landscape"]
  transform = transforms.ImageNetTrain(112, 3)
  example = transform({"image": jpeg, "label": 0}, np.random.default_rng(3))
  rng = np.random.default_rng(3)
  box = transforms.random_resized_crop_box(500, 375, rng)
  expected = decode.crop_resize(decode.open_image(jpeg), box, 112, 3, rng.random() < 0.5)
  np.testing.assert_array_equal(example["image"], expected)


@pytest.mark.parametrize("name", ["grey", "cmyk", "png"])
def test_imagenet_transforms_convert_other_modes_to_rgb(large_jpegs, name):
  train = transforms.ImageNetTrain(32, 3)
  evaluate = transforms.ImageNetEval(32, 3)
  record = {"image": large_jpegs[name], "label": 1}
  assert train(record, np.random.default_rng(0))["image"].shape == (32, 32, 3)
  output = evaluate(record)["image"].astype(np.float32)
  # Reference: convert to RGB first (PIL), then the same crop and resize.
  rgb = PIL.Image.fromarray(decoded(large_jpegs[name]))
  reference = decode.crop_resize(rgb, transforms.central_crop_box(*rgb.size), 32, 3)
  # The JPEGs are decoded at 1/8 size here (DCT scaling), so details differ a little;
  # a wrong colour conversion (inverted CMYK, grey in one channel) would move the colours.
  assert np.abs(output.mean((0, 1)) - reference.mean((0, 1))).max() < 2.0
  assert np.abs(output - reference).mean() < 6.0


def test_cifar_train_is_a_padded_shifted_crop_of_the_image(cifar_folder):
  jpeg = open(cifar_files(cifar_folder)[7], "rb").read()
  pixels = decoded(jpeg).astype(np.float32)
  padded = np.zeros((40, 40, 3), np.float32)
  padded[4:36, 4:36] = pixels
  candidates = [
      window[:, ::-1] if flip else window
      for top in range(9)
      for left in range(9)
      for window in [padded[top : top + 32, left : left + 32]]
      for flip in (False, True)
  ]
  transform = transforms.CifarTrain(32, 3)
  seen = set()
  for seed in range(12):
    output = transform({"image": jpeg, "label": 0}, np.random.default_rng(seed))["image"]
    matches = [i for i, c in enumerate(candidates) if np.array_equal(output, c)]
    assert matches, "output is not a shifted/flipped crop of the zero-padded image"
    seen.add(matches[0])
  assert len(seen) > 1


def test_unchanged_is_the_decoded_image(cifar_folder):
  jpeg = open(cifar_files(cifar_folder)[0], "rb").read()
  example = transforms.Unchanged(32, 3)({"image": jpeg, "label": 2})
  np.testing.assert_array_equal(example["image"], decoded(jpeg))
  assert example["label"] == 2


@pytest.mark.parametrize("shape", [(32, 32, 3), (5, 32, 32, 3), (7, 9, 1)])
def test_normalize_is_pixel_minus_mean_over_std(shape):
  pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  mean, std = (MEAN, STD) if shape[-1] == 3 else ((77.0,), (95.0,))
  normalised = transforms.Normalize(mean, std)(pixels)
  assert normalised.dtype == np.float32 and normalised.shape == shape
  expected = (pixels.astype(np.float64) - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(normalised, expected, rtol=1e-5, atol=1e-5)


def test_native_size_transforms_reject_other_sizes(large_jpegs):
  record = {"image": large_jpegs["png"], "label": 0}
  with pytest.raises(ValueError, match="expects 32x32 images, got 200x300"):
    transforms.CifarTrain(32, 3)(record, np.random.default_rng(0))


def test_normalize_rejects_bad_statistics():
  with pytest.raises(ValueError, match="std must be positive"):
    transforms.Normalize((1.0, 2.0), (1.0, 0.0))
  with pytest.raises(ValueError, match="one value per channel"):
    transforms.Normalize((1.0, 2.0), (1.0,))


def test_make_transforms_names():
  for name in transforms.TRANSFORMS:
    train, evaluate = transforms.make_transforms(name, 8, 1)
    assert callable(train) and callable(evaluate)
  with pytest.raises(ValueError, match="'autoaugment' is not one of"):
    transforms.make_transforms("autoaugment", 8, 1)


def test_arrays_are_accepted_as_images():
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
  example = transforms.Unchanged(8, 1)({"image": grey, "label": 4})
  np.testing.assert_array_equal(example["image"], grey)
  upscaled = transforms.ImageNetEval(16, 1)({"image": grey, "label": 4})
  assert upscaled["image"].shape == (16, 16, 1)
  with pytest.raises(ValueError, match="must be uint8"):
    decode.open_image(grey.astype(np.float32))
