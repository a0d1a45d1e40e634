"""``model.onnx``: the export graph in standard ONNX ops, NCHW inside, chosen for speed in
onnxruntime's CPU provider with the integer codes unchanged (measured in
bench/export_engine.py, numbers in bench/BENCHMARKS.md).

Input ``image`` (NHWC float32, dynamic batch), output ``logits``. Activation codes are
uint8, and a quantized conv runs one of three ways:

* **windowed** ``QLinearConv``, where the conv's only reader is a folded quantizer (a
  ``threshold`` node, SPEC 8) and every channel's integer thresholds lie within 254 of
  each other: uint8 codes times int8 odd weights ``2q - K`` (scales 1, zero points 0),
  plus a per-channel int32 bias that moves the channel's lowest threshold to 1, give
  ``clip(acc + bias, 0, 255)`` in uint8. Clipping keeps every comparison with a
  threshold in 1..255, so the codes are counts of ``>=`` on that uint8 window, exact.
  Channels whose rule is ``acc <= -tau`` get negated weights, so every comparison is
  ``>=``.
* **exact float** ``Conv``: the codes and the integer weights as float32. Every product
  and partial sum is an integer below ``2**24`` (checked from the bits and the fan-in),
  so the float32 sum is the integer accumulator, whatever the summation order. Used for
  the other folded quantizers (compared in float32 against their integer thresholds),
  and, with the dequantization and the BatchNorm that follows folded into its weights
  and bias, for the convs that feed the float stream.
* ``ConvInteger`` only where the float sum could be inexact (8-bit codes and weights
  over a large fan-in): ``2 sum(k q) - K sum(k)`` on uint8 operands.

Quantized weights are stored as int8 (uint8 codes for 8 bits) and widened inside the
graph, where onnxruntime folds the constants once when it loads the model. A quantizer
on the float stream reads ``beta1 * RPReLU(x)``: its thresholds are moved onto ``x``
itself as exact float32 intervals (:func:`.folding.float_count_intervals`), so the
RPReLU is not computed. Float parts (stem, BatchNorm, RPReLU, pooling, classifier) are
float32; stem convs absorb their BatchNorm.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from n2uq_jax.export import folding, packing
from n2uq_jax.export.onnx_builder import OnnxBuilder, channel, conv_attrs
from n2uq_jax.export.graph import Graph, Node, acc_scale

OPSET = 14
"""The lowest opset with uint8 ``Add`` (the code counts); the IR version written is the
lowest that opset needs."""

_EXACT_FLOAT_LIMIT = 2 ** 24
_WINDOW = 254  # largest threshold span a uint8 window holds (thresholds map into 1..255)


def _oihw(kernel: np.ndarray) -> np.ndarray:
  """HWIO -> ONNX's OIHW."""
  return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def _float_sum_is_exact(node: Node) -> bool:
  """Whether every partial sum of the qconv's integer products stays below ``2**24``."""
  a = node.attrs
  kh, kw, cin_per_group, _ = a['kernel_shape']
  largest = (2 ** a['activation_bits'] - 1) * (2 ** a['weight_bits'] - 1)
  return largest * kh * kw * cin_per_group < _EXACT_FLOAT_LIMIT


@dataclasses.dataclass
class _Accumulator:
  """How a qconv's accumulator reaches its folded quantizer: a uint8 ``window``
  (``clip(acc' + bias, 0, 255)``, thresholds moved by ``bias``) or the exact sum
  (``float32`` or ``int32``)."""
  value: str
  kind: str  # 'window', 'float32' or 'int32'
  shift: np.ndarray | None = None  # window: (C,) int64 bias


class _Builder(OnnxBuilder):
  """:class:`.OnnxBuilder` plus the integer parts of ``model.onnx``: codes widened to
  float32 once, weights widened inside the graph, and code counting."""

  def __init__(self):
    super().__init__()
    self._float_codes: dict[str, str] = {}

  def float_codes(self, codes: str) -> str:
    """The uint8 codes as float32 (one Cast per codes tensor, shared by its readers)."""
    if codes not in self._float_codes:
      self._float_codes[codes] = self.cast(codes, 'FLOAT', f'{codes}_f')
    return self._float_codes[codes]

  def float_weights(self, integers: np.ndarray, scale: np.ndarray | None, hint: str) -> str:
    """OIHW float32 weights computed in the graph from integers stored as int8/uint8
    (times a per-output-channel ``scale``)."""
    w = self.cast(self.const(integers, f'{hint}_wq'), 'FLOAT', f'{hint}_w')
    if scale is not None:
      w = self.op('Mul', [w, self.const(scale.astype(np.float32).reshape(-1, 1, 1, 1),
                                          f'{hint}_ws')], f'{hint}_w')
    return w

  def count(self, x: str, above: np.ndarray, below: np.ndarray | None = None,
            invert: np.ndarray | None = None, *, inclusive: bool, hint: str) -> str:
    """uint8 ``sum_i ((x > above_i or x < below_i) != invert_i)`` with per-channel
    ``(C, K)`` tables (``>=`` and ``<=`` when ``inclusive``); ``below`` and ``invert``
    are only emitted where some channel needs them."""
    greater, less = ('GreaterOrEqual', 'LessOrEqual') if inclusive else ('Greater', 'Less')
    use_below = below is not None and np.any(np.isfinite(below))
    use_invert = invert is not None and np.any(invert)
    total = None
    for i in range(above.shape[-1]):
      bit = self.op(greater, [x, self.const(channel(above[:, i]), f'{hint}_t{i}')], hint)
      if use_below:
        low = self.op(less, [x, self.const(channel(below[:, i]), f'{hint}_b{i}')], hint)
        bit = self.op('Or', [bit, low], hint)
      if use_invert:
        bit = self.op('Xor', [bit, self.const(channel(invert[:, i]), f'{hint}_inv{i}')], hint)
      bit = self.cast(bit, 'UINT8', f'{hint}_bit')
      total = bit if total is None else self.op('Add', [total, bit], f'{hint}_codes')
    return total


def _bn_affine(t: dict, ts: dict, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
  """``(mul, shift)`` float64 ``(C,)`` of an evaluation-mode BatchNorm."""
  mul = t[ts['scale']].astype(np.float64) / np.sqrt(t[ts['var']].astype(np.float64) + epsilon)
  return mul, t[ts['bias']].astype(np.float64) - t[ts['mean']].astype(np.float64) * mul


class _Translator:
  """Walks a folded export graph in order and emits its ONNX form."""

  def __init__(self, graph: Graph):
    self.graph, self.t, self.b = graph, graph.tensors, _Builder()
    self.values: dict[str, str] = {}
    self.accumulators: dict[str, _Accumulator] = {}
    self.codes: dict[str, str] = {}  # layer name -> uint8 codes
    self.readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
      for value in node.inputs:
        self.readers.setdefault(value, []).append(node)
    self.producers = {node.output: node for node in graph.nodes}
    self.absorbed: dict[int, Node] = {}  # nodes computed as part of an earlier one
    self.deferred: set[str] = set()  # RPReLU outputs folded into their quantizer

  def _only_reader(self, node: Node, op: str) -> Node | None:
    readers = self.readers.get(node.output, [])
    return readers[0] if len(readers) == 1 and readers[0].op == op else None

  def run(self) -> None:
    b = self.b
    self.values[self.graph.input] = b.op('Transpose', [self.graph.input], 'nchw',
                                         perm=[0, 3, 1, 2])
    for node in self.graph.nodes:
      if id(node) in self.absorbed:
        continue
      hint = node.name.replace('.', '_') + '_' + node.op
      absorbed_before = set(self.absorbed)
      if hasattr(self, f'_{node.op}'):
        output = getattr(self, f'_{node.op}')(node, hint)
      else:
        output = b.float_op(node, [self.values[v] for v in node.inputs], self.t, hint)
        if output is None:
          raise ValueError(f'unknown op {node.op!r} in node {node.name!r}')
      self.values[node.output] = output
      for key in set(self.absorbed) - absorbed_before:  # their values are this node's
        self.values[self.absorbed[key].output] = output

  def _x(self, node: Node, index: int = 0) -> str:
    return self.values[node.inputs[index]]

  def _conv(self, node, hint):
    """A float conv; a BatchNorm that is its only reader is folded into it."""
    ts, a = node.tensors, node.attrs
    kernel = self.t[ts['kernel']].astype(np.float64)
    bias = self.t[ts['bias']].astype(np.float64) if 'bias' in ts else np.zeros(kernel.shape[-1])
    bn = self._only_reader(node, 'batch_norm')
    if bn is not None:
      mul, shift = _bn_affine(self.t, bn.tensors, bn.attrs['epsilon'])
      kernel, bias = kernel * mul, bias * mul + shift
      self.absorbed[id(bn)] = bn
    inputs = [self._x(node), self.b.const(_oihw(kernel.astype(np.float32)), f'{hint}_w'),
              self.b.const(bias.astype(np.float32), f'{hint}_b')]
    return self.b.op('Conv', inputs, hint, **conv_attrs(a))

  def _batch_norm(self, node, hint):
    mul, shift = _bn_affine(self.t, node.tensors, node.attrs['epsilon'])
    y = self.b.op('Mul', [self._x(node), self.b.const(channel(mul.astype(np.float32)),
                                                      f'{hint}_mul')], hint)
    return self.b.op('Add', [y, self.b.const(channel(shift.astype(np.float32)),
                                             f'{hint}_shift')], hint)

  def _rprelu(self, node, hint):
    if self._only_reader(node, 'quantize') is not None:
      self.deferred.add(node.output)  # folded into the quantizer's thresholds
      return None
    ts = node.tensors
    return self.b.rprelu(self._x(node), *(self.t[ts[r]] for r in
                                          ('bias_in', 'slope', 'bias_out')), hint)

  def _quantize(self, node, hint):
    """Codes of a quantizer on the float stream, as exact float32 intervals on the
    RPReLU's input when it reads an RPReLU that nothing else reads."""
    ts = node.tensors
    source = self.producers.get(node.inputs[0])
    thresholds, beta1 = self.t[ts['thresholds']], self.t[ts['input_scale']]
    if node.inputs[0] in self.deferred:
      x = self._x(source)
      rprelu = [self.t[source.tensors[r]] for r in ('bias_in', 'slope', 'bias_out')]
    else:  # the identity RPReLU computes x exactly
      x = self._x(node)
      conv = self.readers[node.output][0]
      channels = conv.attrs['kernel_shape'][2] * conv.attrs['groups']
      rprelu = [np.zeros(channels, np.float32), np.ones(channels, np.float32),
                np.zeros(channels, np.float32)]
    above, below, invert = folding.float_count_intervals(*rprelu, beta1, thresholds)
    codes = self.b.count(x, above, below, invert, inclusive=False, hint=hint)
    self.codes[node.name] = codes
    return codes

  def _qconv(self, node, hint):
    info = self.graph.packed[node.tensors['weight_codes']]
    q = packing.unpack(self.t[node.tensors['weight_codes']], info['bits'], info['shape'])
    odd = 2 * q.astype(np.int32) - (2 ** info['bits'] - 1)  # HWIO
    threshold = self._only_reader(node, 'threshold')
    if threshold is not None:
      return self._qconv_for_threshold(node, threshold, odd, hint)
    deq = self._only_reader(node, 'dequantize')
    if deq is None:
      raise ValueError(f'{node.name}: a quantized conv is read by {self.readers[node.output]}; '
                       'expected a dequantize or a folded threshold')
    scale = acc_scale(self.t, deq).astype(np.float64)
    shift = np.zeros_like(scale)
    self.absorbed[id(deq)] = deq
    bn = self._only_reader(deq, 'batch_norm')
    if bn is not None:  # dequantization and BatchNorm in the conv's weights and bias
      mul, bn_shift = _bn_affine(self.t, bn.tensors, bn.attrs['epsilon'])
      scale, shift = scale * mul, bn_shift
      self.absorbed[id(bn)] = bn
    weights = self.b.float_weights(_oihw(odd.astype(np.int8 if info['bits'] < 8 else np.int16)),
                                   scale, hint)
    return self.b.op('Conv', [self.b.float_codes(self._x(node)), weights,
                              self.b.const(shift.astype(np.float32), f'{hint}_b')], hint,
                     **conv_attrs(node.attrs))

  def _qconv_for_threshold(self, node, threshold, odd, hint):
    ts = threshold.tensors
    direction = self.t[ts['direction']].astype(np.int64)
    lo = self.t[ts['int_thresholds']].astype(np.int64)
    codes, attrs = self._x(node), conv_attrs(node.attrs)
    one_sided = np.all(np.abs(direction) == 1)
    span_ok = np.all(np.abs(lo) < folding.INT32_LIMIT) and np.all(
        lo.max(axis=1) - lo.min(axis=1) <= _WINDOW)
    if one_sided and span_ok and node.attrs['weight_bits'] < 8:
      # acc' = direction * acc; level i counts when acc' >= tau_i (int_ge / int_le)
      shift = 1 - lo.min(axis=1)
      weights = _oihw((odd * direction).astype(np.int8))
      b = self.b
      one, zero_u8 = b.const(np.float32(1), f'{hint}_one'), b.const(np.uint8(0), f'{hint}_zu')
      inputs = [codes, one, zero_u8, b.const(weights, f'{hint}_w'), one,
                b.const(np.int8(0), f'{hint}_zw'), one, zero_u8,
                b.const(shift.astype(np.int32), f'{hint}_shift')]
      y = b.op('QLinearConv', inputs, hint, **attrs)
      self.accumulators[node.output] = _Accumulator(y, 'window', shift)
      return y
    if _float_sum_is_exact(node):
      weights = self.b.float_weights(_oihw(odd.astype(np.int8 if node.attrs['weight_bits'] < 8
                                                      else np.int16)), None, hint)
      y = self.b.op('Conv', [self.b.float_codes(codes), weights], hint, **attrs)
      self.accumulators[node.output] = _Accumulator(y, 'float32')
      return y
    # 8-bit operands over a large fan-in: 2 sum(k q) - K sum(k) on uint8 (SPEC 8)
    q = ((odd + 255) // 2).astype(np.uint8)
    b = self.b
    kq = b.op('ConvInteger', [codes, b.const(_oihw(q), f'{hint}_q')], hint, **attrs)
    ks = b.op('ConvInteger', [codes, b.const(np.ones(_oihw(q).shape, np.uint8), f'{hint}_1')],
              hint, **attrs)
    y = b.op('Sub', [b.op('Mul', [kq, b.const(np.int32(2), 'two')], hint),
                     b.op('Mul', [ks, b.const(np.int32(255), 'k8')], hint)], hint)
    self.accumulators[node.output] = _Accumulator(y, 'int32')
    return y

  def _threshold(self, node, hint):
    acc = self.accumulators[node.inputs[0]]
    ts = node.tensors
    lo = self.t[ts['int_thresholds']].astype(np.int64)
    if acc.kind == 'window':
      codes = self.b.count(acc.value, (lo + acc.shift[:, None]).astype(np.uint8),
                           inclusive=True, hint=hint)
    else:
      above, below, invert = _integer_rules(self.t[ts['direction']].astype(np.int64), lo,
                                            self.t[ts['int_thresholds_hi']].astype(np.int64))
      if acc.kind == 'int32':  # the never-true ends stay beyond any sum
        limit = folding.INT32_LIMIT
        above, below = (np.clip(v, -limit, limit).astype(np.int32) for v in (above, below))
      else:
        above, below = above.astype(np.float32), below.astype(np.float32)
      codes = self.b.count(acc.value, above, below, invert, inclusive=True, hint=hint)
    self.codes[node.name] = codes
    return codes


def _integer_rules(direction, lo, hi):
  """``(above, below, invert)`` of the folded rules (:data:`.folding.DIRECTION_RULES`) as
  ``(acc >= above or acc <= below) != invert``, float64 with ``inf`` for never."""
  d = direction[:, None]
  above = np.where(d == 1, lo, np.where(d == -1, np.inf, hi + 1)).astype(np.float64)
  below = np.where(d == 1, -np.inf, np.where(d == -1, -lo, lo - 1)).astype(np.float64)
  invert = np.broadcast_to(d == -2, lo.shape)
  return above, below, invert


def build_onnx(graph: Graph, *, in_channels: int, code_outputs: bool = False):
  """The ``onnx.ModelProto`` of a folded export graph, checked by ``onnx.checker`` at
  full strictness.

  ``code_outputs`` adds one uint8 NCHW output ``codes:<layer>`` per quantized layer
  (the codes its quantized conv reads), for tests and inspection.
  """
  translator = _Translator(graph)
  translator.run()
  b = translator.b
  h, tp = b.helper, b.onnx.TensorProto
  b.nodes.append(h.make_node('Identity', [translator.values[graph.output]], ['logits']))
  outputs = [h.make_tensor_value_info('logits', tp.FLOAT, ['batch', None])]
  if code_outputs:
    for layer, codes in translator.codes.items():
      b.nodes.append(h.make_node('Identity', [codes], [f'codes:{layer}']))
      outputs.append(h.make_tensor_value_info(f'codes:{layer}', tp.UINT8,
                                                ['batch', None, None, None]))
  onnx_graph = h.make_graph(
      b.nodes, 'n2uq_integer', [h.make_tensor_value_info('image', tp.FLOAT,
                                                         ['batch', None, None, in_channels])],
      outputs, initializer=b.initializers)
  opsets = [h.make_opsetid('', OPSET)]
  model = h.make_model(onnx_graph, opset_imports=opsets, producer_name='n2uq_jax.export',
                       ir_version=h.find_min_ir_version_for(opsets))
  b.onnx.checker.check_model(model, full_check=True)
  return model


def write_onnx(graph: Graph, path: str, *, in_channels: int) -> None:
  """Writes :func:`build_onnx` to ``path``."""
  import onnx  # pylint: disable=g-import-not-at-top
  onnx.save(build_onnx(graph, in_channels=in_channels), path)
