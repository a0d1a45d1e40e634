"""Shared pieces of the export tests: non-trivial random parameters for a model, the
comparison of an engine's codes with the fake-quantized model's, and a QONNX runner."""

import numpy as np
from flax import nnx

from n2uq_jax import nn, quant


def randomize(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """Gives BatchNorm, RPReLU and the quantizers random values that exercise every
  folding rule: about a fifth of the BatchNorm scales and a tenth of the PReLU
  slopes negative, about a third of the quantizer input scales negative, uneven
  quantizer intervals."""
  rng = np.random.default_rng(seed)

  def put(variable, value):
    variable.set_value(np.asarray(value, np.float32).reshape(variable.get_value().shape))

  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      c = node.num_features
      sign = np.where(rng.random(c) < 0.2, -1.0, 1.0)
      put(node.scale, sign * rng.uniform(0.5, 1.5, c))
      put(node.bias, rng.normal(0, 0.3, c))
      put(node.mean, rng.normal(0, 0.2, c))
      put(node.var, rng.uniform(0.5, 2.0, c))
    elif isinstance(node, nn.RPReLU):
      c = node.num_features
      put(node.bias_in, rng.normal(0, 0.1, c))
      put(node.slope, np.where(rng.random(c) < 0.1, -0.2, rng.uniform(0.0, 0.5, c)))
      put(node.bias_out, rng.normal(0, 0.1, c))
    elif isinstance(node, nn.N2UQActivation):
      k = 2 ** node.bits - 1
      put(node.offset, rng.normal(0, 0.1))
      put(node.intervals, quant.level_spacing(node.bits) * rng.uniform(0.4, 1.6, k))
      put(node.input_scale, rng.uniform(0.8, 1.25) * (-1 if rng.random() < 0.3 else 1))
      put(node.output_scale, rng.uniform(0.8, 1.25))
    elif isinstance(node, nn.PACTActivation):
      put(node.alpha, rng.uniform(1.5, 3.0))
  return model


def check_mismatches_are_at_thresholds(engine, codes, ref_codes, ref_inputs):
  """Every code of ``codes`` (``{layer: codes}``, any subset of the layers) that differs
  from ``ref_codes`` has its quantizer input within float32 rounding of a threshold,
  ``|beta1 x - T_i| <= 1e-5 (|T_i| + |beta1 x|)`` for some ``i``, and is one level off."""
  tensors = engine.graph.tensors
  for node in engine.graph.nodes:
    if node.op not in ('quantize', 'threshold') or node.name not in codes:
      continue
    where = codes[node.name] != ref_codes[node.name]
    if not where.any():
      continue
    u = (tensors[node.tensors['input_scale']] * ref_inputs[node.name][where]).astype(np.float64)
    t = tensors[node.tensors['thresholds']].astype(np.float64)
    gap = np.min(np.abs(u[:, None] - t[None]) / (np.abs(t[None]) + np.abs(u[:, None])), -1)
    print(f'{node.name}: {where.sum()} codes differ, relative distance to a threshold '
          f'at most {gap.max():.2g}')
    assert np.all(gap <= 1e-5), (node.name, gap)
    diff = codes[node.name][where].astype(int) - ref_codes[node.name][where]
    assert np.all(np.abs(diff) == 1), node.name


def check_codes_end_to_end(engine, codes, ref_codes, ref_inputs, what):
  """An engine run on its own codes against the reference's: counts the differing
  codes; in each image the first layer (in execution order) where they differ holds
  only near-ties one level off (a difference there changes the layers after it), at
  most 1e-4 of that layer's codes. Returns the per-image mask of images none of whose
  codes differ."""
  per_layer = {k: int(np.sum(np.asarray(codes[k]) != ref_codes[k])) for k in ref_codes}
  order = [n.name for n in engine.graph.nodes if n.op in ('quantize', 'threshold')]
  n = next(iter(ref_codes.values())).shape[0]
  clean = ~np.any([(np.asarray(codes[k]) != ref_codes[k]).reshape(n, -1).any(-1)
                   for k in ref_codes], 0)
  print(f'{what}: {sum(per_layer.values())} of {sum(v.size for v in ref_codes.values())} '
        f'codes differ end to end; {int(clean.sum())} of {n} images with every code equal')
  for i in np.flatnonzero(~clean):
    first = next(k for k in order if np.any(np.asarray(codes[k])[i] != ref_codes[k][i]))
    one = lambda d, k=first, i=i: {k: np.asarray(d[k])[i:i + 1]}
    count = int(np.sum(one(codes)[first] != one(ref_codes)[first]))
    print(f'{what}: image {i} first differs in {first} ({count} codes)')
    assert count <= max(1, 1e-4 * ref_codes[first][0].size), (what, i, first, count)
    check_mismatches_are_at_thresholds(engine, one(codes), one(ref_codes), one(ref_inputs))
  return clean


def onnx_run_codes(engine, images: np.ndarray, channels: int) -> dict[str, np.ndarray]:
  """``model.onnx``'s graph with its code outputs (``onnx_graph.build_onnx(...,
  code_outputs=True)``) run in onnxruntime: ``{layer: uint8 codes NHWC}`` plus
  ``"logits"``."""
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  from n2uq_jax.export import onnx_graph  # pylint: disable=g-import-not-at-top
  proto = onnx_graph.build_onnx(engine.graph, in_channels=channels, code_outputs=True)
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  outputs = session.run(None, {'image': images})
  result = {'logits': outputs[0]}
  for output, codes in zip(session.get_outputs()[1:], outputs[1:]):
    result[output.name.split(':', 1)[1]] = np.transpose(codes, (0, 2, 3, 1))
  return result


def run_qonnx(path: str, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """``(logits, {layer: codes NHWC})`` of ``model.qonnx.onnx`` on NHWC ``images``,
  one image at a time (the file's batch is 1) through qonnx's own executor; a
  value off its integer datatype annotation is an error, not a silent rounding."""
  import warnings  # pylint: disable=g-import-not-at-top
  from qonnx.core.modelwrapper import ModelWrapper  # pylint: disable=g-import-not-at-top
  from qonnx.core.onnx_exec import execute_onnx  # pylint: disable=g-import-not-at-top
  from qonnx.transformation.infer_shapes import InferShapes  # pylint: disable=g-import-not-at-top
  model = ModelWrapper(path).transform(InferShapes())
  nchw = list(model.get_tensor_shape('image')) == [1, images.shape[3], *images.shape[1:3]]
  names = [o for n in model.graph.node for o in n.output if o.endswith('.codes')]
  logits, codes = [], {name[:-len('.codes')]: [] for name in names}
  for image in images:
    x = image[None].transpose(0, 3, 1, 2) if nchw else image[None]
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      context = execute_onnx(model, {'image': np.ascontiguousarray(x)},
                             return_full_exec_context=True)
    logits.append(context['logits'])
    for layer in codes:
      codes[layer].append(context[layer + '.codes'].transpose(0, 2, 3, 1))
  return np.concatenate(logits), {k: np.concatenate(v) for k, v in codes.items()}
