"""The grain pipeline: batches interface for all sources, host sharding, exact resume."""

import json

import numpy as np
import pytest

from n2uq_jax import data
from n2uq_jax.data import pipeline as pipeline_lib
from n2uq_jax.data import source as source_lib
from n2uq_jax.data import transforms


def _indexed_pipeline(num_examples, batch, process_index=0, process_count=1, seed=0, **kwargs):
  """A pipeline whose labels are the example indices, to identify what each host sees."""
  images = np.zeros((num_examples, 2, 2, 1), np.uint8)
  train = source_lib.ArraySource(images, np.arange(num_examples), num_classes=num_examples)
  identity = transforms.Unchanged(2, 1)
  return pipeline_lib.Pipeline(
      train, train, identity, identity, transforms.Normalize((0.0,), (1.0,)),
      image_size=2, per_host_batch_size=batch, seed=seed,
      process_index=process_index, process_count=process_count, **kwargs,
  )


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for one, other in zip(first, second):
    assert one.keys() == other.keys()
    for key in one:
      np.testing.assert_array_equal(one[key], other[key])


def test_default_config_is_the_embedded_digits():
  pipeline = data.create_pipeline(data.default_config(), per_host_batch_size=32, seed=0)
  assert (pipeline.process_index, pipeline.process_count) == (0, 1)  # from jax
  assert pipeline.num_classes == 10 and pipeline.image_shape == (8, 8, 1)
  assert (pipeline.num_train_examples, pipeline.num_eval_examples) == (1438, 359)
  assert pipeline.steps_per_epoch == 1438 // 32 and pipeline.num_eval_batches == 12
  batches = list(pipeline.train_iterator(num_epochs=1))
  assert len(batches) == pipeline.steps_per_epoch
  batch = batches[0]
  assert batch.keys() == {"image", "label"}
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  images = np.concatenate([b["image"] for b in batches])
  assert abs(images.mean()) < 0.1 and abs(images.std() - 1) < 0.1  # normalised
  evaluation = list(pipeline.eval_batches())
  assert len(evaluation) == 12
  assert sum(int(b["mask"].sum()) for b in evaluation) == 359
  assert evaluation[-1]["mask"].dtype == np.bool_ and not evaluation[-1]["mask"][-1]


def test_two_processes_share_every_epoch_exactly_once():
  hosts = [_indexed_pipeline(103, 5, process_index=h, process_count=2) for h in (0, 1)]
  assert hosts[0].steps_per_epoch == 10 and hosts[0].global_batch_size == 10
  epochs = [
      [b["label"] for b in host.train_iterator(num_epochs=2)] for host in hosts
  ]
  assert [len(e) for e in epochs] == [20, 20]
  seen_per_epoch = []
  for epoch in range(2):
    shares = [set(np.concatenate(e[epoch * 10 : (epoch + 1) * 10])) for e in epochs]
    assert len(shares[0]) == len(shares[1]) == 50
    assert not shares[0] & shares[1]
    seen_per_epoch.append(shares[0] | shares[1])
    for step in range(10):  # one global batch = the hosts' batches of the same step
      assert not set(epochs[0][epoch * 10 + step]) & set(epochs[1][epoch * 10 + step])
  # 3 examples are dropped per epoch, and not the same ones each epoch (new permutation).
  assert seen_per_epoch[0] != seen_per_epoch[1]
  single = _indexed_pipeline(103, 10)
  assert single.steps_per_epoch == 10


def test_eval_covers_every_example_once_across_processes():
  for process_count in (1, 2, 3):
    seen, batch_counts = [], []
    for host in range(process_count):
      pipeline = _indexed_pipeline(23, 4, process_index=host, process_count=process_count)
      batches = list(pipeline.eval_batches())
      batch_counts.append(len(batches))
      assert len(batches) == pipeline.num_eval_batches
      for batch in batches:
        assert batch["image"].shape == (4, 2, 2, 1)
        seen.extend(batch["label"][batch["mask"]])
        assert (batch["label"][~batch["mask"]] == 0).all()
        assert batch["image"].dtype == np.float32
    assert len(set(batch_counts)) == 1  # collectives line up
    assert sorted(seen) == list(range(23))


def test_same_seed_same_batches_other_seed_other_batches():
  config = data.default_config()
  first = _take(data.create_pipeline(config, per_host_batch_size=16, seed=5).train_iterator(), 3)
  again = _take(data.create_pipeline(config, per_host_batch_size=16, seed=5).train_iterator(), 3)
  _assert_same_batches(first, again)
  other = _take(data.create_pipeline(config, per_host_batch_size=16, seed=6).train_iterator(), 1)
  assert not np.array_equal(first[0]["label"], other[0]["label"])


def test_resume_gives_exactly_the_uninterrupted_batches():
  pipeline = _indexed_pipeline(40, 6)  # 6 steps per epoch: batches 4..9 cross an epoch
  uninterrupted = _take(pipeline.train_iterator(), 10)
  interrupted = pipeline.train_iterator()
  _take(interrupted, 4)
  state = json.loads(json.dumps(interrupted.get_state()))  # as a checkpoint stores it
  restarted = _indexed_pipeline(40, 6).train_iterator()
  restarted.set_state(state)
  _assert_same_batches(_take(restarted, 6), uninterrupted[4:])


def test_resume_with_augmentation_on_real_jpegs(cifar_folder):
  config = _cifar_config(cifar_folder, transform="imagenet", image_size=16)
  make = lambda: data.create_pipeline(config, per_host_batch_size=8, seed=1).train_iterator()
  uninterrupted = _take(make(), 5)
  interrupted = make()
  _take(interrupted, 2)
  restarted = make()
  restarted.set_state(json.loads(json.dumps(interrupted.get_state())))
  _assert_same_batches(_take(restarted, 3), uninterrupted[2:])


def _cifar_config(root, **overrides):
  config = data.default_config()
  config.source, config.data_dir = "folder", root
  config.validation_fraction = 0.25
  config.image_size, config.transform = 32, "cifar"
  config.mean, config.std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
  config.update(overrides)
  return config


@pytest.mark.parametrize("transform, size", [("cifar", 32), ("imagenet", 24)])
def test_image_folder_pipeline_with_validation_fraction(cifar_folder, transform, size):
  config = _cifar_config(cifar_folder, transform=transform, image_size=size)
  pipeline = data.create_pipeline(config, per_host_batch_size=10, seed=0)
  assert (pipeline.num_train_examples, pipeline.num_eval_examples) == (90, 30)
  assert pipeline.image_shape == (size, size, 3) and pipeline.num_classes == 10
  batch = next(pipeline.train_iterator())
  assert batch["image"].shape == (10, size, size, 3) and batch["label"].max() < 10
  pixels = batch["image"] * np.float32(transforms.IMAGENET_STD) + np.float32(transforms.IMAGENET_MEAN)
  assert pixels.min() > -0.01 and pixels.max() < 255.01
  labels = np.concatenate([b["label"][b["mask"]] for b in pipeline.eval_batches()])
  assert len(labels) == 30


def test_tfds_pipeline(tfds_cifar):
  name, data_dir, splits = tfds_cifar
  config = data.default_config()
  config.source, config.name, config.data_dir = "tfds", name, data_dir
  config.train_split, config.eval_split = "train", "test"
  config.image_size, config.transform = 32, "cifar"
  config.mean, config.std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
  pipeline = data.create_pipeline(config, per_host_batch_size=16, seed=0)
  assert (pipeline.num_train_examples, pipeline.num_eval_examples) == (80, 40)
  assert pipeline.steps_per_epoch == 5
  batch = next(pipeline.train_iterator())
  assert batch["image"].shape == (16, 32, 32, 3)
  labels = np.concatenate([b["label"][b["mask"]] for b in pipeline.eval_batches()])
  assert sorted(labels) == sorted(label for _, label in splits["test"])


def test_worker_processes_give_the_same_batches_and_resume(cifar_folder):
  """The one test with worker processes: 2 workers reproduce the in-process batches,
  and a worker iterator resumes exactly from its saved state."""
  config = _cifar_config(cifar_folder, transform="imagenet", image_size=16)
  in_process = _take(data.create_pipeline(config, per_host_batch_size=6, seed=2).train_iterator(), 5)
  config.worker_count = 2
  pipeline = data.create_pipeline(config, per_host_batch_size=6, seed=2)
  iterator = pipeline.train_iterator()
  first = _take(iterator, 2)
  state = json.loads(json.dumps(iterator.get_state()))
  _assert_same_batches(first + _take(iterator, 3), in_process)
  iterator.close()
  restarted = pipeline.train_iterator()
  restarted.set_state(state)
  _assert_same_batches(_take(restarted, 3), in_process[2:])
  restarted.close()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("source", "hdf5", r"source='hdf5' must be one of \('embedded', 'tfds', 'folder', 'memory'\)"),
        ("name", "cifar", r"name='cifar' must be one of \('digits', 'mnist'\)"),
        ("transform", "randaugment", r"transform='randaugment' must be one of"),
        ("validation_fraction", 1.0, r"validation_fraction=1.0 must be a number in \[0, 1\)"),
        ("image_size", 0, r"image_size=0 must be an integer >= 1"),
        ("worker_count", -1, r"worker_count=-1 must be an integer >= 0"),
        ("mean", (1.0, 2.0, 3.0), r"mean=\(1.0, 2.0, 3.0\) needs 1 value\(s\)"),
        ("std", (0.0,), r"std=\(0.0,\) must be positive"),
        ("image_size", 16, r"image_size=16 with transform='none', but the images are 8x8"),
        ("eval_split", "validation", r"has the splits \('train', 'test'\), not 'validation'"),
    ],
)
def test_bad_config_values_raise_value_errors(field, value, message):
  config = data.default_config()
  setattr(config, field, value)
  with pytest.raises(ValueError, match=message):
    data.create_pipeline(config, per_host_batch_size=8, seed=0)


def test_bad_pipeline_arguments_raise_value_errors():
  config = data.default_config()
  with pytest.raises(ValueError, match="per_host_batch_size=0 must be an integer >= 1"):
    data.create_pipeline(config, per_host_batch_size=0, seed=0)
  with pytest.raises(ValueError, match=r"global batch 800 x 2 processes = 1600 exceeds the 1438"):
    data.create_pipeline(config, per_host_batch_size=800, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="process_index 2 must lie in"):
    data.create_pipeline(config, per_host_batch_size=8, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="seed=-1 must be a non-negative integer"):
    data.create_pipeline(config, per_host_batch_size=8, seed=-1)
  config.source, config.data_dir = "folder", ""
  with pytest.raises(ValueError, match="source 'folder' needs data_dir"):
    data.create_pipeline(config, per_host_batch_size=8, seed=0)
  pipeline = data.create_pipeline(data.default_config(), per_host_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="num_epochs=0 must be None or an integer >= 1"):
    pipeline.train_iterator(num_epochs=0)


def test_orbax_checkpoint_of_the_iterator_resumes_exactly(tmp_path):
  """The iterator state travels through orbax with grain's checkpoint handler."""
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  config = data.default_config()
  make = lambda: data.create_pipeline(config, per_host_batch_size=16, seed=3).train_iterator()
  uninterrupted = _take(make(), 7)
  iterator = make()
  _take(iterator, 4)
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  restored = make()
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same_batches(_take(restored, 3), uninterrupted[4:])


def test_batches_form_global_arrays_on_the_mesh():
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top

  pipeline = data.create_pipeline(data.default_config(), per_host_batch_size=8, seed=0)
  batch = next(pipeline.train_iterator())
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  images = jax.make_array_from_process_local_data(sharding, batch["image"])
  assert images.shape == (pipeline.global_batch_size, 8, 8, 1)
  np.testing.assert_array_equal(np.asarray(images), batch["image"])
