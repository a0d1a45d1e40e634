"""The generated stand-in for the CIFAR-10 tarball (used where the real one is
absent) has the real one's layout and gives distinct, decodable 32x32 JPEGs."""

import tarfile

import numpy as np

from n2uq_jax.data import folder
from tests.data import generated_cifar
from tests.data.conftest import decoded


def test_generated_tarball_is_an_image_folder_of_cifar_classes(tmp_path):
  path = generated_cifar.write_tarball(str(tmp_path / "train.tar.gz"), files_per_class=2)
  with tarfile.open(path, "r:gz") as archive:
    names = archive.getnames()
    archive.extractall(tmp_path / "out", filter="data")
  assert names[:2] == ["cifar10/train/airplane/0000.jpg", "cifar10/train/airplane/0001.jpg"]
  source = folder.ImageFolderSource(str(tmp_path / "out" / "cifar10"), "train")
  assert source.classes == list(generated_cifar.CLASSES) and len(source) == 20
  pixels = [decoded(source[i]["image"]) for i in range(len(source))]
  assert all(p.shape == (32, 32, 3) for p in pixels)
  assert [source[i]["label"] for i in range(4)] == [0, 0, 1, 1]
  # JPEG is lossy, but an image is far closer to its own generated pixels than to others
  original = generated_cifar.generated_image(0, 1).astype(np.float64)
  own = np.mean(np.abs(pixels[1] - original))
  assert own < 15
  assert all(np.mean(np.abs(pixels[i] - original)) > 2 * own for i in range(20) if i != 1)
  distinct = {p.tobytes() for p in pixels}
  assert len(distinct) == 20
  assert np.mean(np.abs(pixels[0].astype(float) - pixels[2].astype(float))) > 10
