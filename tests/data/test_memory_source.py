"""The ``memory`` source: image folders decoded once into a uint8 array serve exactly the
batches of the ``folder`` source, from memory and from its .npz cache."""

import os
import types

import numpy as np
import PIL.Image
import pytest

from n2uq_jax import data
from n2uq_jax.data import folder
from n2uq_jax.data import memory
from tests.data.conftest import cifar_files, decoded


def _config(root, source, cache_dir=""):
  config = data.default_config()
  config.update(dict(source=source, data_dir=root, validation_fraction=0.2, split_seed=3,
                     image_size=32, transform="cifar", mean=(125.3, 123.0, 113.9),
                     std=(63.0, 62.1, 66.7), worker_count=0, cache_dir=cache_dir))
  return config


def _batches(config, count):
  pipeline = data.create_pipeline(config, per_host_batch_size=16, seed=5, process_index=0,
                                  process_count=1)
  iterator = pipeline.train_iterator()
  train = [next(iterator) for _ in range(count)]
  return train, list(pipeline.eval_batches())


def test_memory_batches_are_bit_identical_to_folder_batches(cifar_folder, tmp_path):
  # 120 images, 96 kept: 8 batches cover the first epoch and two of the second.
  folder_train, folder_eval = _batches(_config(cifar_folder, "folder"), 8)
  for cache_dir in ("", str(tmp_path / "cache")):
    memory.clear_decoded()  # decode afresh (and write the cache), then read it back
    for _ in range(2):
      memory_train, memory_eval = _batches(_config(cifar_folder, "memory", cache_dir), 8)
      for expected, got in zip(folder_train + folder_eval, memory_train + memory_eval):
        assert expected.keys() == got.keys()
        for key in expected:
          np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
      memory.clear_decoded()
  assert len(os.listdir(tmp_path / "cache")) == 1


def test_decoded_arrays_are_the_images_and_labels_in_folder_order(cifar_folder):
  files = folder.ImageFolderSource(cifar_folder, "train")
  source = memory.MemoryFolderSource(cifar_folder, "train")
  paths = cifar_files(cifar_folder)
  assert source.images.shape == (len(paths), 32, 32, 3) and source.images.dtype == np.uint8
  np.testing.assert_array_equal(source.labels, files.labels)
  assert source.classes == files.classes
  for index in (0, 17, len(paths) - 1):
    with open(paths[index], "rb") as file:
      np.testing.assert_array_equal(source.images[index], decoded(file.read()))


def test_a_changed_folder_is_decoded_afresh(tmp_path):
  cache = tmp_path / "cache"
  image = tmp_path / "root" / "train" / "a" / "0.png"
  image.parent.mkdir(parents=True)
  PIL.Image.new("RGB", (4, 4), (10, 20, 30)).save(image)
  first = memory.MemoryFolderSource(str(tmp_path / "root"), "train", cache_dir=str(cache))
  PIL.Image.new("RGB", (4, 4), (200, 20, 30)).save(image)
  os.utime(image, ns=(1, 1))  # a different modification time, whatever the clock
  second = memory.MemoryFolderSource(str(tmp_path / "root"), "train", cache_dir=str(cache))
  assert first.images[0, 0, 0, 0] == 10 and second.images[0, 0, 0, 0] == 200
  assert len(os.listdir(cache)) == 2


def test_bad_and_mixed_size_images_are_named(tmp_path):
  class_dir = tmp_path / "train" / "a"
  class_dir.mkdir(parents=True)
  PIL.Image.new("RGB", (4, 4)).save(class_dir / "0.png")
  PIL.Image.new("RGB", (5, 4)).save(class_dir / "1.png")
  with pytest.raises(ValueError, match=r"1\.png is 4x5, the split's first image is 4x4"):
    memory.MemoryFolderSource(str(tmp_path), "train")
  (class_dir / "1.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"cannot decode the image .*1\.png"):
    memory.MemoryFolderSource(str(tmp_path), "train")
  skipped = memory.MemoryFolderSource(str(tmp_path), "train", bad_images="skip")
  assert skipped.images.shape == (2, 4, 4, 3)  # the bad file replaced by the next good one


def test_config_checks_cache_dir_and_needs_data_dir():
  config = data.default_config()
  config.source = "memory"
  with pytest.raises(ValueError, match=r"cache_dir=3 must be a directory path"):
    data.validate_config(types.SimpleNamespace(**{**config.to_dict(), "cache_dir": 3}))
  with pytest.raises(ValueError, match=r"source 'memory' needs data_dir"):
    data.create_pipeline(config, per_host_batch_size=4, seed=0)
