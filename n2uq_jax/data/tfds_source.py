"""tfds image-classification datasets prepared as array_record, read without TensorFlow.

`TfdsSource` reads a prepared dataset (imagenet2012, cifar10, imagenette, ...) through
`tfds.data_source` by name and data_dir. It never downloads or prepares anything: when
the data is missing it raises `DatasetNotPreparedError` with the command that prepares
it. Preparing needs TensorFlow once (`pip install tensorflow-cpu`); reading does not.
Images stay encoded (tfds stores JPEG/PNG bytes) and are decoded by the transforms.
"""

from __future__ import annotations

import shlex

import tensorflow_datasets as tfds

_ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


class DatasetNotPreparedError(ValueError):
  """A tfds dataset is absent from data_dir or stored in a non-random-access format."""


def prepare_command(builder: tfds.core.DatasetBuilder) -> str:
  """The shell command that prepares `builder`'s dataset as array_record.

  For datasets that need a manual download (imagenet2012), the message names the
  directory the downloaded archives must be placed in first.
  """
  data_dir = str(builder.data_dir_root)
  command = ["tfds", "build", builder.name, f"--data_dir={data_dir}"]
  if builder.builder_config is not None:
    command.append(f"--config={builder.builder_config.name}")
  steps = []
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    manual_dir = f"{data_dir}/downloads/manual"
    command.append(f"--manual_dir={manual_dir}")
    instructions = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    steps.append(f"download the source files by hand into {manual_dir} ({instructions})")
  else:
    steps.append("have network access while building: tfds build downloads the source files")
  command.append("--file_format=array_record")
  steps.append("pip install tensorflow-cpu  (needed once, only to prepare)")
  steps.append(shlex.join(command))
  return "\n".join(f"  {number}. {step}" for number, step in enumerate(steps, 1))


def _open_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The prepared, array_record builder of `name`, or an error saying how to get it."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(
        f"tfds dataset {name!r} is neither a registered tfds dataset nor prepared in "
        f"data_dir={data_dir!r}"
    ) from error
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"tfds dataset {name!r} is not prepared in {builder.data_dir_root} (nothing at "
        f"{builder.data_dir}), and it is never downloaded at run time. Prepare it once:\n"
        + prepare_command(builder)
    )
  if _ARRAY_RECORD not in builder.info.available_file_formats():
    raise DatasetNotPreparedError(
        f"tfds dataset {name!r} in {builder.data_dir} is stored as "
        f"{builder.info.file_format.value}, which has no random access; prepare it again "
        "as array_record (into another data_dir, or after deleting this copy):\n"
        + prepare_command(builder)
    )
  return builder


class TfdsSource:
  """Records {"image": encoded bytes, "label": int} of one split of a tfds dataset.

  Args:
    name: tfds name, optionally with config and version ("imagenet2012",
      "cifar10:3.0.2", ...).
    data_dir: the tfds data directory (None: tfds's default, $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    split: a split of the dataset, optionally sliced ("train", "validation",
      "train[:10%]").

  Raises:
    DatasetNotPreparedError: the data is not in data_dir as array_record.
    ValueError: unknown dataset, unknown split, or no image/label features.
  """

  def __init__(self, name: str, data_dir: str | None, split: str):
    builder = _open_builder(name, data_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
      raise ValueError(
          f"tfds dataset {name!r} has the features {sorted(features.keys())}; an image "
          "classification dataset with 'image' and 'label' features is needed"
      )
    split_name = split.split("[", 1)[0]
    if split_name not in builder.info.splits:
      raise ValueError(
          f"tfds dataset {name!r} has no split {split!r}; its splits are "
          f"{sorted(builder.info.splits.keys())}"
      )
    self.num_classes = int(features["label"].num_classes)
    self.channels = int(features["image"].shape[-1] or 3)
    self._records = builder.as_data_source(
        split,
        decoders={"image": tfds.decode.SkipDecoding()},
        file_format=_ARRAY_RECORD,
    )

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    record = self._records[index]
    return {"image": record["image"], "label": int(record["label"])}
