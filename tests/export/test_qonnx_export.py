"""``model.qonnx.onnx``: every N2UQ activation quantizer is a QONNX ``MultiThreshold``
(``x >= t``) that reproduces N2UQ's strict ``x > T`` at exact ties, and qonnx's own
executor reproduces the integer engine's codes and logits on every registry model at
random parameters (all four folded rules)."""

import numpy as np
import pytest
from flax import nnx

from n2uq_jax import export, models
from n2uq_jax.export import folding, qonnx_graph
from n2uq_jax.train import config_lib
from tests.export.helpers import randomize, run_qonnx

onnx = pytest.importorskip('onnx')
pytest.importorskip('qonnx')
from qonnx.custom_op.general.multithreshold import multithreshold  # pylint: disable=g-import-not-at-top,wrong-import-position


def _mt(v: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """qonnx's own MultiThreshold on ``(N, C)`` float32 values."""
  return multithreshold(v.astype(np.float32), thresholds.astype(np.float32))


def test_float_thresholds_count_strictly_above_at_exact_ties():
  rng = np.random.default_rng(0)
  thresholds = np.concatenate([[0.0, -0.0, 1.0, -3.5], rng.normal(size=3)]).astype(np.float32)
  ties = np.concatenate([thresholds, np.nextafter(thresholds, np.float32(np.inf)),
                         np.nextafter(thresholds, np.float32(-np.inf)),
                         rng.normal(size=20).astype(np.float32)])
  u = ties.reshape(-1, 1).repeat(3, axis=1)  # (N, C=3)
  strict = np.sum(u[..., None] > thresholds, axis=-1)
  got = _mt(u, qonnx_graph.float_thresholds(thresholds, 3))
  np.testing.assert_array_equal(got, strict)
  # the plain thresholds would count the ties: the test sits on them
  assert np.any(_mt(u, np.broadcast_to(thresholds, (3, thresholds.size))) != strict)


def _rule_reference(acc, direction, lo, hi):
  """docs/EXPORT.md's table of folded rules, level by level: ``(N, C)`` codes."""
  codes = np.zeros(acc.shape, np.int64)
  for c, d in enumerate(direction):
    a = acc[:, c, None]
    count = {1: a >= lo[c], -1: -a >= lo[c], 2: ~((lo[c] <= a) & (a <= hi[c])),
             -2: (lo[c] <= a) & (a <= hi[c])}[int(d)]
    codes[:, c] = count.sum(-1)
  return codes


def test_folded_rules_as_multithresholds_match_the_rule_table_at_every_edge():
  limit = folding.INT32_LIMIT
  levels = 3
  direction = np.array([1, -1, 2, -2, 2, -2, 1, 2], np.int8)
  lo = np.array([[-5, 0, 7], [-4, 2, 9], [-2, -6, -9], [-1, -3, -8],
                 [limit, -6, 4], [limit, 3, 5], [-limit, 0, limit], [-3, -limit, 0]])
  hi = np.array([[limit] * 3, [limit] * 3, [1, 4, 8], [0, 2, 6],
                 [-limit, 5, 3], [-limit, 8, 3], [limit] * 3, [2, limit, 0]])
  # every threshold, its neighbours, and beyond every end
  edges = np.unique(np.concatenate([lo.ravel(), hi.ravel(), -lo.ravel()]))
  edges = edges[np.abs(edges) < 100]
  acc = np.unique(np.concatenate([edges - 1, edges, edges + 1, [-50, 50]]))
  acc = np.repeat(acc[:, None], direction.size, axis=1)
  sign, t_add, t_sub, offset = qonnx_graph.folded_multithresholds(direction, lo, hi, levels)
  v = acc * sign  # the graph negates the weights of int_le channels
  got = _mt(v, t_add) - _mt(v, t_sub) + offset
  np.testing.assert_array_equal(got, _rule_reference(acc, direction, lo, hi))
  assert np.all(np.diff(t_add, axis=1) >= 0) and np.all(np.diff(t_sub, axis=1) >= 0)


def _producer(graph, name):
  return next(n for n in graph.node if name in n.output)


def _initializer(graph, name):
  return next(onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name == name)


def _check_multithreshold(graph, node, bits, channels):
  assert node.op_type == 'MultiThreshold' and node.domain == 'qonnx.custom_op.general'
  attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
  assert attrs['out_dtype'] == f'UINT{bits}'.encode() and attrs['data_layout'] == b'NCHW'
  assert _initializer(graph, node.input[1]).shape == (channels, 2 ** bits - 1)


def _check_structure(path, manifest, engine):
  """Each quantized layer's codes are one MultiThreshold, or (two-sided channels)
  two MultiThresholds whose difference gets a per-channel offset."""
  graph = onnx.load(path).graph
  kinds = {}
  for layer in manifest['layers']:
    bits, name = layer['activation_bits'], layer['name']
    channels = engine.graph.tensors[f'{name}.input_quantizer.direction'].size if (
        layer['threshold_rule'] == 'folded_int') else None
    node = _producer(graph, f'{name}.codes')
    rules = layer['channel_rules'] or {}
    if rules.get('int_outside') or rules.get('int_inside'):
      assert node.op_type == 'Add'
      sub = _producer(graph, node.input[0])
      assert sub.op_type == 'Sub'
      for value in sub.input:
        _check_multithreshold(graph, _producer(graph, value), bits, channels)
      kinds[name] = 'two-sided'
    else:
      if channels is None:  # a float quantizer: its input's channels
        channels = _initializer(graph, node.input[1]).shape[0]
      _check_multithreshold(graph, node, bits, channels)
      kinds[name] = 'one'
  return kinds


CASES = [
    ('small_cnn', {}, 2, 8, 1, 'NCHW', 2),
    ('cifar_resnet20', {}, 2, 16, 3, 'NHWC', 1),
    pytest.param('resnet18', {'quantize_downsample': True}, 2, 16, 3, 'NCHW', 1,
                 marks=pytest.mark.slow),
    pytest.param('resnet34', {'quantize_downsample': False}, 3, 16, 3, 'NCHW', 1,
                 marks=pytest.mark.slow),
    pytest.param('resnet50', {'quantize_downsample': True}, 2, 16, 3, 'NCHW', 1,
                 marks=pytest.mark.slow),
    pytest.param('mobilenet_v2', {}, 4, 16, 3, 'NCHW', 1, marks=pytest.mark.slow),
]


@pytest.mark.parametrize('name,kwargs,bits,size,channels,layout,count', CASES)
def test_qonnx_executor_reproduces_the_integer_engine(tmp_path, name, kwargs, bits, size,
                                                      channels, layout, count):
  policy = config_lib.quant_policy(config_lib.parse_variant(f'w{bits}a{bits}'))
  model = models.create_model(name, num_classes=10, policy=policy, rngs=nnx.Rngs(0),
                              in_channels=channels, **kwargs)
  model = randomize(model, seed=1)
  report = export.export_model(model, str(tmp_path), model_name=name, format='qonnx',
                               image_size=size, layout=layout)
  engine = export.IntegerModel.load(str(tmp_path))
  path = str(tmp_path / 'model.qonnx.onnx')
  kinds = _check_structure(path, report['manifest'], engine)
  print(f'{name}: quantizers {kinds}')
  if name != 'small_cnn':
    assert 'two-sided' in kinds.values() and 'one' in kinds.values()
  images = np.random.default_rng(2).normal(size=(count, size, size, channels)).astype(np.float32)
  logits, codes = run_qonnx(path, images)
  ref_logits, ref_codes = engine.run(images)
  assert sorted(codes) == sorted(ref_codes)
  for layer in ref_codes:
    np.testing.assert_array_equal(codes[layer], ref_codes[layer], err_msg=layer)
  error = float(np.max(np.abs(logits - ref_logits)) / np.max(np.abs(ref_logits)))
  print(f'{name}: max logit difference {error:.2g} of max |logit|')
  assert error < 1e-6


def test_a_layer_beyond_float32_exactness_is_refused_before_anything_is_written(tmp_path):
  policy = config_lib.quant_policy(config_lib.parse_variant('w8a8'))
  model = models.create_model('small_cnn', num_classes=10, policy=policy, rngs=nnx.Rngs(0),
                              in_channels=1)
  with pytest.raises(ValueError, match=r'layer1\.0\.conv: \|acc\| can reach 18,727,200.*2\^24'):
    export.export_model(model, str(tmp_path / 'out'), model_name='small_cnn', format='qonnx',
                        image_size=8)
  assert not (tmp_path / 'out').exists()
