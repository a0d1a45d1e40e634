"""``model.qonnx.onnx``: the export graph for FPGA dataflow compilers (QONNX, FINN-style).

Every N2UQ (or PACT) activation quantizer is a ``MultiThreshold`` node of the
``qonnx.custom_op.general`` domain with per-channel thresholds ``(C, 2^b - 1)``
and ``out_dtype`` ``UINT{b}``: the learned non-uniform thresholds as they are.
Tensors are float32 carriers of integer values where annotated (the
``finn_datatype`` quantization annotations): codes ``UINT{b}``, odd integer
weights ``INT{b+1}``, accumulators ``INT32``. Quantized convs are float ``Conv``
on those integer-valued tensors, exact because every partial sum is an integer
below ``2**24`` (checked per layer).

``MultiThreshold`` counts ``x >= t``; N2UQ counts ``x > T`` (SPEC 2.2):

* folded quantizers (``threshold`` nodes) read the accumulator, and their integer
  thresholds are already ``floor(x) + 1`` (``acc > x`` iff ``acc >= floor(x) + 1``);
  ``int_le`` channels negate their conv's output channel (odd weights
  ``-(2q - K)``), so they count ``acc' >= tau`` too; two-sided channels
  (``int_inside``/``int_outside``) are ``MT(lo) - MT(hi + 1)`` and
  ``K - (MT(lo) - MT(hi + 1))``: two ``MultiThreshold`` nodes, a ``Sub`` and a
  per-channel ``Add``, emitted only for layers that have such channels;
* float quantizers multiply by ``beta1`` as the engine does and compare with
  ``nextafter(T, inf)`` in float32: ``u >= nextafter(T)`` iff ``u > T``.

The code tensor of a quantized layer is named ``<layer>.codes`` (NCHW).
"""

from __future__ import annotations

import numpy as np

from n2uq_jax.export import folding, packing
from n2uq_jax.export.graph import Graph, Node, acc_scale
from n2uq_jax.export.engine import odd_weights
from n2uq_jax.export.onnx_builder import OnnxBuilder, channel, conv_attrs

QONNX_DOMAIN = 'qonnx.custom_op.general'
OPSET = 13
IR_VERSION = 7
LAYOUTS = ('NCHW', 'NHWC')
EXACT_FLOAT_LIMIT = 2 ** 24
"""Integers of magnitude below this are exact in float32, and so is every sum of them
that stays below it."""


def float_thresholds(thresholds: np.ndarray, channels: int) -> np.ndarray:
  """``(C, K)`` float32 ``t`` with ``u >= t`` iff ``u > T`` for every float32 ``u``:
  the next float32 above each ``T``, broadcast to ``channels`` rows."""
  above = np.nextafter(np.asarray(thresholds, np.float32), np.float32(np.inf))
  return np.ascontiguousarray(np.broadcast_to(np.sort(above), (channels, above.size)))


def folded_multithresholds(direction: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int):
  """A folded quantizer's rules as ``codes = MT(acc * sign; t_add) - MT(acc * sign; t_sub)
  + offset`` per channel (``MT(v; t) = #{i : v >= t_i}``).

  Args:
    direction, lo, hi: the ``threshold`` node's ``direction`` (C,), ``int_thresholds``
      and ``int_thresholds_hi`` (C, K) (rules of :data:`folding.DIRECTION_RULES`).
    levels: ``K``.

  Returns:
    ``(sign, t_add, t_sub, offset)``: int ``(C,)`` of ``+-1`` (the accumulator's
    sign per channel, applied to the conv's weights), int64 ``(C, K)`` sorted rows,
    ``None`` or int64 ``(C, K)`` (only when a channel is two-sided), int ``(C,)``.
    ``int_inside`` counts ``[lo <= acc <= hi] = [acc >= lo] - [acc >= hi + 1]``, an empty
    interval being ``lo = hi + 1``; ``int_outside`` is ``K`` minus that.
  """
  direction = np.asarray(direction).astype(np.int64)
  lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
  never = np.int64(folding.INT32_LIMIT)
  sign = np.where(direction == -1, -1, 1)
  two_sided = np.abs(direction) == 2
  empty = lo > hi
  start = np.where(empty, never, lo)
  stop = np.where(empty, never, hi + 1)
  outside = (direction == 2)[:, None]
  t_add = np.where(two_sided[:, None], np.where(outside, stop, start), lo)
  t_sub = np.where(two_sided[:, None], np.where(outside, start, stop), never)
  offset = np.where(direction == 2, levels, 0)
  return (sign, np.sort(t_add, axis=1), np.sort(t_sub, axis=1) if two_sided.any() else None,
          offset)


class _Builder(OnnxBuilder):
  """:class:`.OnnxBuilder` plus ``MultiThreshold`` and the engine's BatchNorm."""

  def multithreshold(self, x: str, thresholds: np.ndarray, bits: int, hint: str, *,
                     output: str | None = None) -> str:
    """``#{i : x >= thresholds[c, i]}`` per channel ``c`` of NCHW ``x`` (float32 out)."""
    t = self.const(np.asarray(thresholds, np.float32), f'{hint}_thresholds')
    return self.op('MultiThreshold', [x, t], hint, output=output, datatype=f'UINT{bits}',
                   domain=QONNX_DOMAIN, out_dtype=f'UINT{bits}', data_layout='NCHW')

  def batch_norm(self, x, t, ts, epsilon, hint):
    """``(x - mean) * (scale / sqrt(var + eps)) + bias`` in float32, the integer
    engine's order of operations."""
    mul = (np.float32(1) / np.sqrt(t[ts['var']] + np.float32(epsilon))) * t[ts['scale']]
    y = self.op('Sub', [x, self.const(channel(t[ts['mean']]), f'{hint}_mean')], hint)
    y = self.op('Mul', [y, self.const(channel(mul.astype(np.float32)), f'{hint}_mul')], hint)
    return self.op('Add', [y, self.const(channel(t[ts['bias']]), f'{hint}_bias')], hint)


def _integer_conv_weights(graph: Graph, node: Node, sign: np.ndarray | None) -> np.ndarray:
  """OIHW float32 odd weights ``sign_o (2q - K)`` of a ``qconv`` node.

  Raises:
    ValueError: a partial sum could reach ``2**24``, where float32 stops being exact.
  """
  ts, a = node.tensors, node.attrs
  info = graph.packed[ts['weight_codes']]
  q = packing.unpack(graph.tensors[ts['weight_codes']], info['bits'], info['shape'])
  kh, kw, cin_g, _ = q.shape
  bound = (2 ** a['activation_bits'] - 1) * (2 ** a['weight_bits'] - 1) * kh * kw * cin_g
  if bound >= EXACT_FLOAT_LIMIT:
    raise ValueError(
        f'{node.name}: |acc| can reach {bound:,} = (2^{a["activation_bits"]} - 1) x '
        f'(2^{a["weight_bits"]} - 1) x fan-in {kh * kw * cin_g}, beyond the float32-exact '
        f'2^24 = {EXACT_FLOAT_LIMIT:,} of a QONNX float Conv; export this layer with fewer '
        'bits or a smaller fan-in, or use the ONNX format (integer convs)')
  w = odd_weights(q, info['bits']).astype(np.float32)
  if sign is not None:
    w = w * sign.astype(np.float32)
  return np.transpose(w, (3, 2, 0, 1))


def _folded_plans(graph: Graph) -> dict[str, tuple]:
  """``{accumulator value: folded_multithresholds(...)}`` of every ``threshold`` node."""
  plans = {}
  for node in graph.nodes:
    if node.op == 'threshold':
      t = graph.tensors
      plans[node.inputs[0]] = folded_multithresholds(
          t[node.tensors['direction']], t[node.tensors['int_thresholds']],
          t[node.tensors['int_thresholds_hi']], 2 ** node.attrs['bits'] - 1)
  return plans


def build_qonnx(graph: Graph, *, in_channels: int, image_size: int, layout: str = 'NCHW',
                batch: int | None = 1):
  """The QONNX ``onnx.ModelProto`` of a folded export graph.

  Args:
    graph: the folded export graph.
    in_channels: image channels.
    image_size: image height = width (FPGA compilers take fixed shapes).
    layout: the input's layout, ``"NCHW"`` (FINN's convention) or ``"NHWC"`` (a
      ``Transpose`` at the input); inside, tensors are NCHW.
    batch: the batch dimension, an int (1: FINN's convention) or ``None`` (symbolic).

  Raises:
    ValueError: an unknown layout, or a layer whose float32 conv would not be exact.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  b = _Builder()
  t = graph.tensors
  plans = _folded_plans(graph)
  x = graph.input
  if layout == 'NHWC':
    x = b.op('Transpose', [x], 'nchw', perm=[0, 3, 1, 2])
  values = {graph.input: x}
  channels = {graph.input: in_channels}
  for node in graph.nodes:
    x = values[node.inputs[0]]
    c = channels[node.inputs[0]]
    a, ts, hint = node.attrs, node.tensors, node.name.replace('.', '_') + '_' + node.op
    if node.op == 'conv':
      w = b.const(np.transpose(t[ts['kernel']], (3, 2, 0, 1)), f'{hint}_w')
      inputs = [x, w] + ([b.const(t[ts['bias']], f'{hint}_b')] if 'bias' in ts else [])
      y = b.op('Conv', inputs, hint, **conv_attrs(a))
      c = a['kernel_shape'][-1]
    elif node.op == 'batch_norm':
      y = b.batch_norm(x, t, ts, a['epsilon'], hint)
    elif node.op == 'rprelu':
      y = b.rprelu(x, *(t[ts[r]] for r in ('bias_in', 'slope', 'bias_out')), hint)
    elif node.op == 'dense':
      y = b.float_op(node, [x], t, hint)
      c = t[ts['kernel']].shape[-1]
    elif node.op == 'quantize':
      u = b.op('Mul', [x, b.const(t[ts['input_scale']], f'{hint}_scale')], hint)
      y = b.multithreshold(u, float_thresholds(t[ts['thresholds']], c), a['bits'], hint,
                           output=f'{node.name}.codes')
    elif node.op == 'qconv':
      plan = plans.get(node.output)
      w = _integer_conv_weights(graph, node, plan[0] if plan else None)
      w = b.const(w, f'{hint}_w', datatype=f'INT{a["weight_bits"] + 1}')
      y = b.op('Conv', [x, w], hint, datatype='INT32', **conv_attrs(a))
      c = a['kernel_shape'][-1]
    elif node.op == 'dequantize':
      y = b.op('Mul', [x, b.const(channel(acc_scale(t, node)), f'{hint}_scale')], hint)
    elif node.op == 'threshold':
      _, t_add, t_sub, offset = plans[node.inputs[0]]
      name = f'{node.name}.codes'
      if t_sub is None:
        y = b.multithreshold(x, t_add, a['bits'], hint, output=name)
      else:
        count = b.op('Sub', [b.multithreshold(x, t_add, a['bits'], f'{hint}_add'),
                             b.multithreshold(x, t_sub, a['bits'], f'{hint}_sub')], hint)
        y = b.op('Add', [count, b.const(channel(offset.astype(np.float32)), f'{hint}_offset')],
                 hint, output=name, datatype=f'UINT{a["bits"]}')
    else:
      y = b.float_op(node, [values[v] for v in node.inputs], t, hint)
      if y is None:
        raise ValueError(f'unknown op {node.op!r} in node {node.name!r}')
    values[node.output] = y
    channels[node.output] = c
  b.nodes.append(b.helper.make_node('Identity', [values[graph.output]], ['logits']))
  return _model(b, graph, in_channels, image_size, layout, batch,
                channels[graph.output])


def _model(b: _Builder, graph: Graph, in_channels, image_size, layout, batch, num_classes):
  h, tp = b.helper, b.onnx.TensorProto
  n = 'batch' if batch is None else batch
  shape = ([n, in_channels, image_size, image_size] if layout == 'NCHW'
           else [n, image_size, image_size, in_channels])
  onnx_graph = h.make_graph(
      b.nodes, 'n2uq_qonnx', [h.make_tensor_value_info(graph.input, tp.FLOAT, shape)],
      [h.make_tensor_value_info('logits', tp.FLOAT, [n, num_classes])],
      initializer=b.initializers)
  for name, datatype in b.datatypes.items():
    annotation = onnx_graph.quantization_annotation.add()
    annotation.tensor_name = name
    entry = annotation.quant_parameter_tensor_names.add()
    entry.key, entry.value = 'finn_datatype', datatype
  model = h.make_model(onnx_graph, producer_name='n2uq_jax.export',
                       opset_imports=[h.make_opsetid('', OPSET),
                                      h.make_opsetid(QONNX_DOMAIN, 1)])
  model.ir_version = IR_VERSION
  b.onnx.checker.check_model(model, full_check=False)
  return model


def save(model, path: str) -> None:
  """Writes a :func:`build_qonnx` model to ``path``."""
  import onnx  # pylint: disable=g-import-not-at-top
  onnx.save(model, path)
