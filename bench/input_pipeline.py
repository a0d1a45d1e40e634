"""Images/s of the ImageNet training transform: grain pipeline vs tf.data (anchor).

Writes ImageNet-sized JPEGs (500x375, quality 90, about 95 KB each, photo-like content)
into a temporary image folder, then measures the normalised 224 px training batches of

  - the transform and normalisation alone in this process (one core, no pipeline),
  - `n2uq_jax.data` (folder source, transform "imagenet") with 1 and 2 grain worker
    processes (one transform thread each; normalisation in a thread of this process),
    and with no worker process but 2 transform threads (decoding and resizing release
    the GIL), which ships nothing between processes,
  - when TensorFlow is importable: the same transform in tf.data (sample_distorted_bounding_box
    + decode_and_crop_jpeg + bicubic resize + flip + normalise) with 1 and 2 threads.

Besides images/s (wall clock) the table gives images per CPU-second, counting every
process and thread involved: the work per image, which other load on the machine hardly
changes. This is the per-core comparison. Each round builds every pipeline afresh,
discards its first batches (worker start-up, full prefetch buffers) and times the next
ones; rounds interleave the pipelines so that machine noise hits all of them alike, and
the table reports medians over rounds.

With ``--cifar-dir DIR`` (a folder holding train/<class>/<image>.jpg, CIFAR-10's 32x32
JPEGs) it measures the CIFAR training batches instead (transform "cifar", batch 128, no
worker process): the "folder" source, which decodes every JPEG of every batch, against
the "memory" source, which decodes the folder once (that time is printed apart) and then
crops and flips uint8 arrays.

Run from the repository root: python bench/input_pipeline.py [--rounds 7]
                              python bench/input_pipeline.py --cifar-dir /data/cifar10
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

import numpy as np
import PIL.Image

from n2uq_jax import data
from n2uq_jax.data import memory
from n2uq_jax.data import transforms

IMAGE_SIZE = 224


def _photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """Smooth colour regions plus texture and grain: compresses and decodes like a photo."""
  coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
  regions = np.asarray(PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.BICUBIC))
  fine = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
  texture = np.asarray(PIL.Image.fromarray(fine).resize((width, height), PIL.Image.BILINEAR))
  pixels = 0.5 * regions + 0.4 * texture + rng.normal(0, 14, (height, width, 3))
  return np.clip(pixels, 0, 255).astype(np.uint8)


def write_images(root: str, count: int, classes: int = 4) -> list[str]:
  """Writes `count` 500x375 JPEGs as root/train/<class>/<n>.jpg; returns their paths."""
  rng = np.random.default_rng(0)
  paths = []
  for index in range(count):
    class_dir = os.path.join(root, "train", f"class{index % classes}")
    os.makedirs(class_dir, exist_ok=True)
    path = os.path.join(class_dir, f"{index:05d}.jpg")
    PIL.Image.fromarray(_photo_like(rng, 500, 375)).save(path, quality=90)
    paths.append(path)
  return paths


def grain_iterator(root: str, workers: int, threads: int, batch_size: int):
  config = data.default_config()
  config.source, config.data_dir = "folder", root
  config.validation_fraction = 0.1
  config.image_size, config.transform = IMAGE_SIZE, "imagenet"
  config.mean, config.std = data.IMAGENET_MEAN, data.IMAGENET_STD
  config.worker_count, config.read_threads, config.prefetch_buffer_size = workers, threads, 2
  pipeline = data.create_pipeline(
      config, per_host_batch_size=batch_size, seed=0, process_index=0, process_count=1
  )
  return pipeline.train_iterator()


def cifar_iterator(root: str, source: str, threads: int, batch_size: int):
  """Normalised CIFAR training batches of `source` ("folder" or "memory") over root."""
  config = data.default_config()
  config.source, config.data_dir, config.validation_fraction = source, root, 0.1
  config.image_size, config.transform = 32, "cifar"
  config.mean, config.std = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
  config.worker_count, config.read_threads = 0, threads
  config.prefetch_buffer_size = max(2, threads)
  pipeline = data.create_pipeline(
      config, per_host_batch_size=batch_size, seed=0, process_index=0, process_count=1
  )
  return pipeline.train_iterator()


def transform_alone_iterator(paths: list[str], batch_size: int):
  """Batches made in this process by the bare transform and normalisation: the cost on
  one core without a pipeline."""
  transform = transforms.ImageNetTrain(IMAGE_SIZE, 3)
  normalize = transforms.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
  rng = np.random.default_rng(0)
  position = 0
  while True:
    images = []
    for _ in range(batch_size):
      with open(paths[position % len(paths)], "rb") as file:
        images.append(transform({"image": file.read(), "label": 0}, rng)["image"])
      position += 1
    yield normalize(np.stack(images))


def tf_data_iterator(paths: list[str], threads: int, batch_size: int):
  """The same training transform in tf.data, after the recipe of the Flax ImageNet example."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  mean = tf.constant(transforms.IMAGENET_MEAN, tf.float32)
  std = tf.constant(transforms.IMAGENET_STD, tf.float32)

  def train_transform(path):
    encoded = tf.io.read_file(path)
    shape = tf.io.extract_jpeg_shape(encoded)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    top, left, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    window = tf.stack([top, left, height, width])
    image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize([image], [IMAGE_SIZE, IMAGE_SIZE], method="bicubic")[0]
    image = tf.image.random_flip_left_right(image)
    return (image - mean) / std

  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  dataset = (
      tf.data.Dataset.from_tensor_slices(paths)
      .shuffle(len(paths), seed=0)
      .repeat()
      .map(train_transform, num_parallel_calls=threads)
      .batch(batch_size, drop_remainder=True)
      .prefetch(2)
      .with_options(options)
  )
  return dataset.as_numpy_iterator()


def _cpu_seconds() -> float:
  """CPU time used so far by this process (all threads) and its live worker processes.

  Images per CPU-second measure the work per image whatever else the machine runs;
  read from /proc, so Linux only.
  """
  total = time.process_time()
  ticks_per_second = os.sysconf("SC_CLK_TCK")
  for child in multiprocessing.active_children():
    try:
      with open(f"/proc/{child.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # exited meanwhile
      continue
    total += (int(fields[11]) + int(fields[12])) / ticks_per_second  # utime + stime
  return total


def _tensorflow_importable() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def time_rounds(candidates: dict, args: argparse.Namespace) -> None:
  """Times every candidate's batches in interleaved rounds and prints the table."""
  rates = {name: [] for name in candidates}
  per_cpu_second = {name: [] for name in candidates}
  for _ in range(args.rounds):
    for name, make_iterator in candidates.items():
      iterator = make_iterator()
      for _ in range(args.warmup):  # start-up, tracing, and drain every prefetch buffer
        next(iterator)
      start, start_cpu = time.perf_counter(), _cpu_seconds()
      for _ in range(args.batches):
        next(iterator)
      images = args.batches * args.batch
      rates[name].append(images / (time.perf_counter() - start))
      per_cpu_second[name].append(images / (_cpu_seconds() - start_cpu))
      if hasattr(iterator, "close"):
        iterator.close()

  print(f"{'pipeline':38s} {'img/s':>6s} {'img/CPU-s':>9s}  img/s of each round")
  for name, values in rates.items():
    rounds = " ".join(f"{v:.0f}" for v in values)
    print(f"{name:38s} {statistics.median(values):6.0f} "
          f"{statistics.median(per_cpu_second[name]):9.0f}  {rounds}")


def compare_cifar_sources(args: argparse.Namespace) -> None:
  """The folder source against the memory source on the CIFAR JPEGs of args.cifar_dir."""
  start = time.perf_counter()
  decoded = memory.MemoryFolderSource(args.cifar_dir, "train")
  print(f"{len(decoded)} images {decoded.images.shape[1:]} decoded into memory once in "
        f"{time.perf_counter() - start:.1f} s; batch {args.batch}; {os.cpu_count()} cores")
  candidates = {
      f"folder, {threads} thread{'s' * (threads > 1)}": (
          lambda threads=threads: cifar_iterator(args.cifar_dir, "folder", threads, args.batch))
      for threads in (1, 2)
  }
  candidates.update({
      f"memory, {threads} thread{'s' * (threads > 1)}": (
          lambda threads=threads: cifar_iterator(args.cifar_dir, "memory", threads, args.batch))
      for threads in (1, 2)
  })
  time_rounds(candidates, args)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=256, help="JPEGs to write")
  parser.add_argument("--batch", type=int, default=32, help="per-host batch size")
  parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
  parser.add_argument("--warmup", type=int, default=8,
                      help="untimed batches per round, at least the prefetch buffers")
  parser.add_argument("--batches", type=int, default=8, help="batches timed per round")
  parser.add_argument("--cifar-dir", default="",
                      help="compare the folder and memory sources on these CIFAR JPEGs")
  args = parser.parse_args()
  if args.cifar_dir:
    compare_cifar_sources(args)
    return

  with tempfile.TemporaryDirectory() as root:
    paths = write_images(root, args.images)
    mean_kb = statistics.mean(os.path.getsize(p) for p in paths) / 1024
    print(f"{len(paths)} JPEGs 500x375, mean {mean_kb:.0f} KB; batch {args.batch}, "
          f"{IMAGE_SIZE} px; {os.cpu_count()} cores")
    candidates = {
        "transform alone (1 core, no pipeline)": lambda: transform_alone_iterator(
            paths, args.batch
        ),
        "grain, 1 worker": lambda: grain_iterator(root, 1, 1, args.batch),
        "grain, 2 workers": lambda: grain_iterator(root, 2, 1, args.batch),
        "grain, no worker, 2 threads": lambda: grain_iterator(root, 0, 2, args.batch),
    }
    if _tensorflow_importable():
      candidates["tf.data, 1 thread"] = lambda: tf_data_iterator(paths, 1, args.batch)
      candidates["tf.data, 2 threads"] = lambda: tf_data_iterator(paths, 2, args.batch)
    time_rounds(candidates, args)


if __name__ == "__main__":
  main()
