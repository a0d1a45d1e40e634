"""Benchmark: the integer engines of an export (NumPy, JAX twin, onnxruntime) against
the fake-quantized JAX evaluation of the same model, and the export's size.

The model is the N2UQ ResNet-18 (1000 classes, downsample quantized) at ``--bits``,
at its initialisation (sizes and speeds do not depend on the values). Each engine
runs ``--batch`` images of ``--image-size`` pixels; the reported time is the median
of ``--repeats`` interleaved rounds after one warm-up run (which holds the JAX
compilations).

Usage::

  python bench/export_engine.py                          # batch 8, 64 px
  python bench/export_engine.py --batch 32 --image-size 224 --repeats 3

Prints the size report's totals (quantized conv kernels and whole model against
float32) and images per second per engine. Not run by the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from n2uq_jax import export, models
from n2uq_jax.train import config_lib, step as step_lib


def _interleaved_medians(runs: dict, repeats: int) -> dict[str, float]:
  """Median seconds per run over ``repeats`` rounds that call every run once, in turn
  (so that load from other processes hits every engine alike), after one warm-up."""
  for fn in runs.values():
    fn()
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--image-size', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--bits', type=int, default=2)
  parser.add_argument('--threads', type=int, default=0,
                      help='onnxruntime intra-op threads (0: its default)')
  args = parser.parse_args()

  policy = config_lib.quant_policy(config_lib.parse_variant(f'w{args.bits}a{args.bits}'))
  model = models.create_model('resnet18', num_classes=1000, policy=policy, rngs=nnx.Rngs(0))
  model.eval()
  out_dir = tempfile.mkdtemp(prefix='n2uq_export_bench_')
  start = time.perf_counter()
  report = export.export_model(model, out_dir, model_name='resnet18')
  export_seconds = time.perf_counter() - start
  k, t = report['quantized_kernels'], report['total']
  print(f'resnet18 W{args.bits}A{args.bits}: export {export_seconds:.1f} s')
  print(f'  quantized conv kernels: {k["export_bytes"]:,} B vs {k["float32_bytes"]:,} B float32 '
        f'= {k["ratio"]:.2f}x smaller')
  print(f'  whole model: {t["export_bytes"]:,} B vs {t["float32_bytes"]:,} B float32 '
        f'= {t["ratio"]:.2f}x smaller')
  files = {name: os.path.getsize(os.path.join(out_dir, name)) for name in sorted(os.listdir(out_dir))}
  print('  files: ' + ', '.join(f'{name} {size:,} B' for name, size in files.items()))

  images = np.random.default_rng(0).normal(
      size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  model_def, params, model_state = step_lib.split_model(model)
  fake = jax.jit(lambda p, s, x: model_def.merge(p, s, train=False)(x))
  engine = export.IntegerModel.load(out_dir)
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  if args.threads:
    options.intra_op_num_threads = args.threads
  session = ort.InferenceSession(os.path.join(out_dir, 'model.onnx'), options,
                                 providers=['CPUExecutionProvider'])
  runs = {
      'fake-quantized JAX eval (jit)': lambda: fake(params, model_state, images).block_until_ready(),
      'integer engine, JAX twin (jit)': lambda: engine.jax_run(images)[0].block_until_ready(),
      'integer engine, onnxruntime CPU': lambda: session.run(None, {'image': images}),
      'integer engine, NumPy': lambda: engine.logits(images),
  }
  print(f'batch {args.batch}, {args.image_size}x{args.image_size}, median of {args.repeats} '
        'interleaved rounds:')
  base = None
  for name, seconds in _interleaved_medians(runs, args.repeats).items():
    rate = args.batch / seconds
    base = base or rate
    print(f'  {name:<34} {seconds * 1e3:9.1f} ms  {rate:9.1f} img/s  ({rate / base:.2f}x)')


if __name__ == '__main__':
  main()
