"""``model.onnx`` (n2uq_jax.export.onnx_graph): its codes equal the integer engine's on
each of its conv paths (windowed QLinearConv, exact float Conv, ConvInteger), the
thresholds it moves onto the float stream decide like the float32 chain tie for tie,
and the file is strict, minimal in version and stores no float copy of a quantized
kernel.

The integer sums are exact on every path; the float stream (the stem, and the convs with
their dequantization and BatchNorm folded) rounds in onnxruntime's order, not the
engine's, so a code whose float input lies within float32 rounding of a threshold could
differ. None does in these cases (fixed seeds); tests/export/test_registry_export.py
counts such near-ties on deeper models.
"""

import numpy as np
import pytest
from flax import nnx

from n2uq_jax import export, models
from n2uq_jax.export import folding, onnx_graph
from n2uq_jax.export import graph as graph_lib
from n2uq_jax.train import config_lib
from tests.export.helpers import randomize

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

# (name, bits, image size, in channels, random parameters, the conv op of the folded layers)
CASES = [
    # at initialisation every folded channel is one-sided with thresholds close together
    ('cifar_resnet20', 2, 16, 3, False, 'QLinearConv'),
    # 3 bits at initialisation: thresholds up to 576 apart, more than a uint8 window holds
    ('cifar_resnet20', 3, 16, 3, False, 'Conv'),
    # random parameters: two-sided rules (negative PReLU slopes), exact float sums
    ('cifar_resnet20', 2, 16, 3, True, 'Conv'),
    # 8-bit codes and weights over a large fan-in: float32 sums could round
    ('small_cnn', 8, 8, 1, True, 'ConvInteger'),
]


def _model(name, bits, channels, random_parameters):
  policy = config_lib.quant_policy(config_lib.parse_variant(f'w{bits}a{bits}'))
  model = models.create_model(name, num_classes=10, policy=policy, rngs=nnx.Rngs(0),
                              in_channels=channels)
  if random_parameters:
    model = randomize(model, seed=3)
  model.eval()
  return model


@pytest.mark.parametrize('name,bits,size,channels,random_parameters,conv_op', CASES)
def test_codes_equal_the_integer_engine(tmp_path, name, bits, size, channels,
                                        random_parameters, conv_op):
  model = _model(name, bits, channels, random_parameters)
  export.export_model(model, str(tmp_path), model_name=name, write_onnx=False)
  engine = export.IntegerModel.load(str(tmp_path))
  proto = onnx_graph.build_onnx(engine.graph, in_channels=channels, code_outputs=True)
  ops = [node.op_type for node in proto.graph.node]
  assert conv_op in ops, sorted(set(ops))
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  images = np.random.default_rng(4).normal(size=(3, size, size, channels)).astype(np.float32)
  outputs = dict(zip([o.name for o in session.get_outputs()],
                     session.run(None, {'image': images})))
  logits, codes = engine.run(images)
  assert sorted(outputs) == sorted(['logits'] + [f'codes:{layer}' for layer in codes])
  for layer, expected in codes.items():
    np.testing.assert_array_equal(outputs[f'codes:{layer}'], np.transpose(expected, (0, 3, 1, 2)),
                                  err_msg=layer)
  np.testing.assert_allclose(outputs['logits'], logits, rtol=0,
                             atol=1e-5 * np.abs(logits).max())


def _chain(x, bias_in, slope, bias_out, beta1, thresholds):
  """The float32 decisions the models make: ``beta1 * RPReLU(x) > T_i``, shape (N, C, K)."""
  z = x + bias_in
  u = beta1 * (np.where(z > 0, z, slope * z) + bias_out)
  return u[..., None] > thresholds


@pytest.mark.parametrize('beta1', [1.0, 0.7, -0.8, 0.0, -1.3])
def test_float_intervals_decide_like_the_float32_chain_at_every_tie(beta1):
  rng = np.random.default_rng(5)
  channels = 48
  bias_in = (0.3 * rng.normal(size=channels)).astype(np.float32)
  slope = (0.5 * rng.normal(size=channels)).astype(np.float32)  # both signs
  slope[:4] = 0
  slope[4:8] = 1
  bias_out = (0.3 * rng.normal(size=channels)).astype(np.float32)
  thresholds = np.sort(rng.normal(size=7)).astype(np.float32)
  beta1 = np.float32(beta1)
  above, below, invert = folding.float_count_intervals(bias_in, slope, bias_out, beta1,
                                                      thresholds)
  x = (2 * rng.normal(size=(5000, channels))).astype(np.float32)
  finite_ends = [np.where(np.isfinite(v), v, np.float32(0)) for v in (above, below)]
  ties = np.concatenate([v for end in finite_ends for v in (
      end, np.nextafter(end, np.inf), np.nextafter(end, -np.inf))], axis=1).T
  x = np.concatenate([x, ties]).astype(np.float32)  # every interval end and its neighbours
  with np.errstate(over='ignore', invalid='ignore'):
    expected = _chain(x, bias_in, slope, bias_out, beta1, thresholds)
  got = ((x[..., None] > above) | (x[..., None] < below)) != invert
  np.testing.assert_array_equal(got, expected)


def test_the_file_is_strict_minimal_and_stores_integer_kernels(tmp_path):
  model = _model('cifar_resnet20', 2, 3, True)
  export.export_model(model, str(tmp_path), model_name='cifar_resnet20')
  proto = onnx.load(str(tmp_path / 'model.onnx'))
  onnx.checker.check_model(proto, full_check=True)
  assert [(o.domain, o.version) for o in proto.opset_import] == [('', onnx_graph.OPSET)]
  assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import)) == 7
  graph = graph_lib.fold(graph_lib.trace_model(model))
  quantized = {int(np.prod(graph.packed[n.tensors['weight_codes']]['shape']))
               for n in graph.nodes if n.op == 'qconv'}
  float_parts = {graph.tensors[n.tensors['kernel']].size for n in graph.nodes
                 if n.op in ('conv', 'dense')}
  sizes = {}
  for tensor in proto.graph.initializer:
    array = onnx.numpy_helper.to_array(tensor)
    sizes.setdefault(array.size, set()).add(array.dtype)
  for size in quantized - float_parts:
    assert sizes[size] == {np.dtype(np.int8)}, (size, sizes[size])
