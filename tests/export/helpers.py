"""Shared pieces of the export tests: non-trivial random parameters for a model."""

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
