"""Benchmark: the exported N2UQ ResNet-18 in onnxruntime against what a user would deploy
instead, the float ResNet-18 as ONNX and onnxruntime's own 8-bit quantization of it,
plus the project's other engines and the export's sizes.

Models, all at their initialisation (speeds and sizes do not depend on the values):

* ``model.onnx`` of the N2UQ ResNet-18 (1000 classes, downsample quantized) at ``--bits``;
* the float twin: ``resnet18_fp`` (the torchvision layout) written as ONNX from the
  project's own model (Conv, BatchNormalization, Relu, Add, MaxPool, Gemm: what
  ``torch.onnx.export`` gives for torchvision's ResNet-18), no torch needed;
* onnxruntime's static int8 of that float ONNX (``quantize_static``: QDQ, per-channel
  int8 weights, uint8 activations, calibrated on the benchmark images).

Each engine runs ``--batch`` images of ``--image-size`` pixels; after one warm-up call
each, ``--repeats`` rounds call every engine once in turn (so that load from other
processes hits all alike). Reported: the minimum, p10 and median per engine and the
speed ratio of the minima against the float ONNX. It also counts the codes of
``model.onnx`` that differ from the integer engine's, and the engine's that differ from
the fake-quantized model's (layer by layer and end to end), on the benchmark images.

Usage::

  python bench/export_engine.py                                  # batch 8, 224 px, 7 rounds
  python bench/export_engine.py --batch 8 --image-size 64 --no-jax

Not run by the tests.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from n2uq_jax import export, models
from n2uq_jax.export import onnx_graph
from n2uq_jax.train import config_lib, step as step_lib


def float_resnet18_onnx(model, path: str) -> None:
  """Writes a ``resnet18_fp`` model (evaluation mode) as float32 ONNX, NHWC input."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import helper, numpy_helper  # pylint: disable=g-import-not-at-top
  nodes, inits = [], []

  def value(hint, array):
    inits.append(numpy_helper.from_array(np.ascontiguousarray(array), f'{hint}_{len(inits)}'))
    return inits[-1].name

  def op(op_type, inputs, **attrs):
    out = f'{op_type.lower()}_{len(nodes)}'
    nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
    return out

  def conv_bn(x, conv, bn, relu):
    kernel = np.asarray(conv.kernel.get_value(), np.float32)
    kh, kw = kernel.shape[:2]
    pad = [int(p[0]) for p in conv.padding] + [int(p[1]) for p in conv.padding]
    y = op('Conv', [x, value('w', kernel.transpose(3, 2, 0, 1))], strides=list(conv.strides),
           pads=pad, kernel_shape=[kh, kw])
    y = op('BatchNormalization', [y] + [value(r, np.asarray(getattr(bn, r).get_value(),
                                                            np.float32))
                                        for r in ('scale', 'bias', 'mean', 'var')],
           epsilon=float(bn.epsilon))
    return op('Relu', [y]) if relu else y

  x = op('Transpose', ['image'], perm=[0, 3, 1, 2])
  x = op('MaxPool', [conv_bn(x, model.conv1, model.bn1, True)], kernel_shape=[3, 3],
         strides=[2, 2], pads=[1, 1, 1, 1])
  for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
    for block in stage:
      y = conv_bn(conv_bn(x, block.conv1, block.bn1, True), block.conv2, block.bn2, False)
      shortcut = x if block.downsample is None else conv_bn(
          x, block.downsample.conv, block.downsample.bn, False)
      x = op('Relu', [op('Add', [y, shortcut])])
  x = op('Flatten', [op('GlobalAveragePool', [x])])
  fc = model.fc
  nodes.append(helper.make_node('Gemm', [x, value('fc_w', np.asarray(fc.kernel.get_value())),
                                         value('fc_b', np.asarray(fc.bias.get_value()))],
                                ['logits']))
  graph = helper.make_graph(
      nodes, 'resnet18_fp',
      [helper.make_tensor_value_info('image', onnx.TensorProto.FLOAT, ['batch', None, None, 3])],
      [helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT, ['batch', None])],
      initializer=inits)
  opsets = [helper.make_opsetid('', 17)]
  onnx.save(helper.make_model(graph, opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets)), path)


def onnxruntime_int8(float_path: str, int8_path: str, images: np.ndarray) -> None:
  """onnxruntime's own static quantization of ``float_path`` (QDQ, per channel)."""
  from onnxruntime import quantization  # pylint: disable=g-import-not-at-top

  class Reader(quantization.CalibrationDataReader):

    def __init__(self):
      self._batches = iter([{'image': images}])

    def get_next(self):
      return next(self._batches, None)

  quantization.quantize_static(
      float_path, int8_path, Reader(), quant_format=quantization.QuantFormat.QDQ,
      per_channel=True, activation_type=quantization.QuantType.QUInt8,
      weight_type=quantization.QuantType.QInt8)


def interleaved_times(runs: dict, repeats: int) -> dict[str, np.ndarray]:
  """Seconds per call of each run over ``repeats`` rounds that call every run once, in
  turn, after one warm-up call each."""
  for fn in runs.values():
    fn()
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: np.asarray(values) for name, values in times.items()}


def codes_match(model, out_dir: str, images, in_channels: int) -> dict[str, tuple[int, int]]:
  """``(differing, total)`` activation codes of three comparisons on ``images``:
  ``model.onnx`` against the integer engine end to end, and the engine against the
  fake-quantized model layer by layer (each layer fed the reference's codes, so that one
  near-tie does not change every layer after it) and end to end."""
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  engine = export.IntegerModel.load(out_dir)
  proto = onnx_graph.build_onnx(engine.graph, in_channels=in_channels, code_outputs=True)
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  onnx_codes = {o.name.split(':', 1)[1]: got for o, got in zip(
      session.get_outputs()[1:], session.run(None, {'image': images})[1:])}
  _, reference = export.fake_quantized_codes(model, images)
  _, forced = engine.run(images, forced_codes=reference)
  _, codes = engine.run(images)

  def count(a, b, transpose=False):
    pairs = [(np.transpose(a[k], (0, 3, 1, 2)) if transpose else a[k], np.asarray(b[k]))
             for k in b]
    return sum(int(np.sum(x != y)) for x, y in pairs), sum(y.size for _, y in pairs)

  return {'model.onnx vs integer engine, end to end': count(codes, onnx_codes, True),
          'integer engine vs fake-quantized, layer by layer': count(forced, reference),
          'integer engine vs fake-quantized, end to end': count(codes, reference)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--bits', type=int, default=2)
  parser.add_argument('--threads', type=int, default=0,
                      help='onnxruntime intra-op threads (0: its default)')
  parser.add_argument('--no-jax', action='store_true',
                      help='time only the onnxruntime engines (the JAX and NumPy engines '
                      'take seconds per batch at 224 px on a small CPU)')
  args = parser.parse_args()

  policy = config_lib.quant_policy(config_lib.parse_variant(f'w{args.bits}a{args.bits}'))
  model = models.create_model('resnet18', num_classes=1000, policy=policy, rngs=nnx.Rngs(0))
  model.eval()
  fp_model = models.create_model('resnet18_fp', num_classes=1000, rngs=nnx.Rngs(0))
  fp_model.eval()
  out_dir = tempfile.mkdtemp(prefix='n2uq_export_bench_')
  report = export.export_model(model, out_dir, model_name='resnet18')
  k, t = report['quantized_kernels'], report['total']
  images = np.random.default_rng(0).normal(
      size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  float_path = os.path.join(out_dir, 'resnet18_fp.onnx')
  int8_path = os.path.join(out_dir, 'resnet18_fp_ort_int8.onnx')
  float_resnet18_onnx(fp_model, float_path)
  onnxruntime_int8(float_path, int8_path, images)
  files = {'n2uq model.onnx': os.path.join(out_dir, 'model.onnx'),
           'float ONNX': float_path, 'onnxruntime int8': int8_path}
  print(f'resnet18 W{args.bits}A{args.bits}: quantized conv kernels {k["ratio"]:.2f}x and whole '
        f'model {t["ratio"]:.2f}x smaller than float32 in tables.safetensors')
  print('  files: ' + ', '.join(f'{name} {os.path.getsize(path) / 1e6:.1f} MB'
                                for name, path in files.items()))

  for name, (differing, total) in codes_match(model, out_dir, images, 3).items():
    print(f'  codes, {name}: {differing:,} of {total:,} differ')

  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  if args.threads:
    options.intra_op_num_threads = args.threads

  def session(path):
    s = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return lambda: s.run(None, {'image': images})

  runs = {'float ONNX (resnet18_fp)': session(float_path),
          'onnxruntime static int8 of it': session(int8_path),
          'N2UQ model.onnx': session(files['n2uq model.onnx'])}
  if not args.no_jax:
    model_def, params, model_state = step_lib.split_model(model)
    fake = jax.jit(lambda p, s, x: model_def.merge(p, s, train=False)(x))
    engine = export.IntegerModel.load(out_dir)
    runs.update({
        'fake-quantized JAX eval (jit)': lambda: fake(params, model_state,
                                                      images).block_until_ready(),
        'integer engine, JAX twin (jit)': lambda: engine.jax_run(images)[0].block_until_ready(),
        'integer engine, NumPy': lambda: engine.logits(images),
    })
  print(f'batch {args.batch}, {args.image_size}x{args.image_size}, {args.repeats} interleaved '
        'rounds (ms per batch; speed of the minimum relative to the float ONNX):')
  times = interleaved_times(runs, args.repeats)
  base = times['float ONNX (resnet18_fp)'].min()
  for name, seconds in times.items():
    low, p10, median = seconds.min(), np.percentile(seconds, 10), np.median(seconds)
    print(f'  {name:<32} min {low * 1e3:8.1f}  p10 {p10 * 1e3:8.1f}  median {median * 1e3:8.1f}'
          f'  ({base / low:.2f}x)')


if __name__ == '__main__':
  main()
