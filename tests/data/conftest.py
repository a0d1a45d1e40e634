"""Fixtures of the data tests: CIFAR-10 JPEGs unpacked from the shared tarball (or,
where it is absent, from a tarball of generated JPEGs in the same layout), larger JPEGs
written from them, and a tfds dataset prepared from them as array_record."""

import io
import os
import tarfile

import numpy as np
import PIL.Image
import pytest

from tests.data import generated_cifar

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR_TARBALL = os.path.join(
    os.path.dirname(REPOSITORY), "shared", "datasets", "cifar10", "train.tar.gz"
)
FILES_PER_CLASS = 12  # 120 JPEGs: enough for every test, quick to unpack


GENERATED = "generated"
"""``N2UQ_CIFAR10_TARBALL=generated`` uses the generated JPEGs even where the real
tarball exists."""


@pytest.fixture(scope="session")
def cifar_tarball(tmp_path_factory):
  """The CIFAR-10 training tarball (cifar10/train/<class>/<NNNN>.jpg) at
  N2UQ_CIFAR10_TARBALL or ../shared/datasets/cifar10/train.tar.gz; where there is
  none, a tarball of generated JPEGs with the same layout and class names."""
  path = os.environ.get("N2UQ_CIFAR10_TARBALL", CIFAR_TARBALL)
  if path != GENERATED and os.path.isfile(path):
    return path
  return generated_cifar.write_tarball(
      str(tmp_path_factory.mktemp("generated_cifar10") / "train.tar.gz"), FILES_PER_CLASS)


@pytest.fixture(scope="session")
def cifar_folder(cifar_tarball, tmp_path_factory):
  """An image folder root/train/<class>/<file>.jpg with the first FILES_PER_CLASS
  CIFAR-10 JPEGs (32x32) of each of the 10 classes."""
  root = tmp_path_factory.mktemp("cifar10")
  taken = {}
  with tarfile.open(cifar_tarball, "r:gz") as archive:
    for member in archive:
      parts = member.name.split("/")
      if not member.isfile() or len(parts) != 4 or parts[1] != "train":
        continue
      class_name, file_name = parts[2], parts[3]
      if taken.get(class_name, 0) >= FILES_PER_CLASS:
        continue
      taken[class_name] = taken.get(class_name, 0) + 1
      class_dir = root / "train" / class_name
      class_dir.mkdir(parents=True, exist_ok=True)
      (class_dir / file_name).write_bytes(archive.extractfile(member).read())
  assert len(taken) == 10 and set(taken.values()) == {FILES_PER_CLASS}, taken
  return str(root)


def cifar_files(root):
  """All JPEG paths of the cifar_folder fixture, in class then file order."""
  train = os.path.join(root, "train")
  return [
      os.path.join(train, name, file)
      for name in sorted(os.listdir(train))
      for file in sorted(os.listdir(os.path.join(train, name)))
  ]


@pytest.fixture(scope="session")
def large_jpegs(cifar_folder, tmp_path_factory):
  """ImageNet-sized and larger JPEGs upscaled from CIFAR-10 images:
  {name: encoded bytes} with 500x375, 375x500 and 1600x1200 colour images, a grey
  640x480 JPEG, a CMYK 400x300 JPEG and a 300x200 PNG."""
  files = cifar_files(cifar_folder)

  def upscaled(index, size, mode="RGB", image_format="JPEG"):
    image = PIL.Image.open(files[index]).convert("RGB").resize(size, PIL.Image.BICUBIC)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=image_format, quality=90)
    return buffer.getvalue()

  return {
      "landscape": upscaled(0, (500, 375)),
      "portrait": upscaled(20, (375, 500)),
      "huge": upscaled(40, (1600, 1200)),
      "grey": upscaled(60, (640, 480), mode="L"),
      "cmyk": upscaled(80, (400, 300), mode="CMYK"),
      "png": upscaled(100, (300, 200), image_format="PNG"),
  }


@pytest.fixture(scope="session")
def tfds_cifar(cifar_folder, tmp_path_factory):
  """A tfds dataset prepared inside the test as array_record from the CIFAR JPEGs:
  (name, data_dir, {split: [(jpeg bytes, label), ...]}) with 80 train and 40 test
  examples. Building it needs no TensorFlow and no network."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  files = cifar_files(cifar_folder)
  classes = sorted(os.listdir(os.path.join(cifar_folder, "train")))
  examples = [
      (open(path, "rb").read(), classes.index(os.path.basename(os.path.dirname(path))))
      for path in files
  ]
  splits = {"train": examples[0::3] + examples[1::3], "test": examples[2::3]}

  class N2uqTestCifar(tfds.core.GeneratorBasedBuilder):
    """CIFAR-10 JPEGs stored through tfds (test fixture)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(names=classes),
          }),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return {name: self._generate_examples(split) for name, split in splits.items()}

    def _generate_examples(self, split):
      for key, (image, label) in enumerate(split):
        yield key, {"image": image, "label": label}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = N2uqTestCifar(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder.name, data_dir, splits


def decoded(jpeg_bytes):
  """uint8 [H, W, 3] pixels of encoded image bytes (reference decoding)."""
  return np.asarray(PIL.Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"))
