"""Data and config errors raise one clear ValueError each, naming the file, folder,
split or field: an unreadable or truncated JPEG (or skipped with a counted warning by
``bad_images='skip'``), an empty class folder, a missing split, an eval split smaller
than one global batch, a global batch that does not divide over the devices and hosts."""

import logging
import os
import shutil

import jax
import pytest

from n2uq_jax import data
from n2uq_jax.train import sharding


def _folder_config(root, **overrides):
  config = data.default_config()
  config.update(dict(source="folder", data_dir=str(root), train_split="train",
                     eval_split="train", image_size=32, transform="cifar", mean=(0.0,) * 3,
                     std=(1.0,) * 3, read_threads=0, prefetch_buffer_size=0))
  config.update(overrides)
  return config


@pytest.fixture
def folder_copy(cifar_folder, tmp_path):
  root = tmp_path / "images"
  shutil.copytree(cifar_folder, root)
  return root


def _epoch(pipeline):
  it = pipeline.train_iterator()
  return [next(it) for _ in range(pipeline.steps_per_epoch)]


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_a_bad_jpeg_fails_naming_the_file(folder_copy, damage):
  bad = folder_copy / "train" / "cat" / sorted(os.listdir(folder_copy / "train" / "cat"))[3]
  content = bad.read_bytes()
  bad.write_bytes(content[: len(content) // 3] if damage == "truncated" else b"GIF89a junk")
  pipeline = data.create_pipeline(_folder_config(folder_copy), per_host_batch_size=8, seed=0)
  with pytest.raises(ValueError, match=f"cannot decode the image {bad}.*bad_images='skip'"):
    _epoch(pipeline)


def test_bad_jpegs_are_skipped_with_a_counted_warning(folder_copy, caplog):
  cat = folder_copy / "train" / "cat"
  bad = [cat / name for name in sorted(os.listdir(cat))[2:4]]
  for path in bad:
    path.write_bytes(path.read_bytes()[:200])
  config = _folder_config(folder_copy, bad_images="skip")
  pipeline = data.create_pipeline(config, per_host_batch_size=8, seed=0)
  with caplog.at_level(logging.WARNING):
    batches = _epoch(pipeline)
    evaluation = list(pipeline.eval_batches())
  assert len(batches) == pipeline.steps_per_epoch == 120 // 8
  assert sum(int(b["mask"].sum()) for b in evaluation) == 120
  messages = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
  assert {str(path) for path in bad} <= {m.split()[3] for m in messages}
  # one counter per opened split (train and eval here), counting up in each
  counts = [int(m.split("; ")[-1].split()[0]) for m in messages]
  assert max(counts) >= len(bad) and sorted(set(counts)) == list(range(1, max(counts) + 1))


def test_bad_images_value_is_checked(folder_copy):
  with pytest.raises(ValueError, match=r"bad_images='ignore' must be one of \('fail', 'skip'\)"):
    data.create_pipeline(_folder_config(folder_copy, bad_images="ignore"),
                         per_host_batch_size=8, seed=0)


def test_empty_class_folder_is_named(folder_copy):
  os.makedirs(folder_copy / "train" / "zebra")
  with pytest.raises(ValueError, match=f"class directory {folder_copy / 'train' / 'zebra'} "
                     "holds no .jpg/.jpeg/.png file"):
    data.create_pipeline(_folder_config(folder_copy), per_host_batch_size=8, seed=0)


def test_missing_split_is_named_with_the_splits_there(folder_copy):
  with pytest.raises(ValueError, match=r"split 'val' not found: .*images.val is not a "
                     r"directory \(splits under .*: \['train'\]\)"):
    data.create_pipeline(_folder_config(folder_copy, eval_split="val"),
                         per_host_batch_size=8, seed=0)


def test_eval_split_smaller_than_a_global_batch():
  config = data.default_config()
  config.validation_fraction = 0.01  # 14 of the digits of the train split
  with pytest.raises(ValueError, match=r"global batch \(16 per host x 2 hosts = 32\) is larger "
                     r"than the eval split \(14 examples\)"):
    data.create_pipeline(config, per_host_batch_size=16, seed=0, process_index=0,
                         process_count=2)
  data.create_pipeline(config, per_host_batch_size=7, seed=0, process_index=0, process_count=2)


def test_global_batch_must_divide_over_devices_and_hosts(monkeypatch):
  mesh = sharding.create_mesh(1)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match=r"global_batch_size=3 does not divide over the 2 "
                     r"processes \(hosts\); use a multiple of 2"):
    sharding.check_batch_size(3, mesh)
  sharding.check_batch_size(4, mesh)
