"""``model.onnx``: the export graph in standard ONNX ops (opset 17), NCHW inside.

Input ``image`` (NHWC float32, dynamic batch), output ``logits``. Quantized convs
are ``ConvInteger`` on uint8 codes and int8 odd weights ``2q - K`` (zero points 0,
int32 accumulation); thresholds are ``Greater`` (float, strict) or
``GreaterOrEqual`` (int32, folded; with ``LessOrEqual``, ``And``, ``Xor`` for the
two-sided rules) comparisons summed into a count. Float parts use
the same float32 operation order as the engine.
"""

from __future__ import annotations

import numpy as np

from n2uq_jax.export import packing
from n2uq_jax.export.graph import Graph, acc_scale

OPSET = 17


def _channel(x: np.ndarray) -> np.ndarray:
  """``(C,)`` -> ``(1, C, 1, 1)`` for broadcasting against NCHW."""
  return np.asarray(x).reshape(1, -1, 1, 1)


class _Builder:

  def __init__(self):
    import onnx  # pylint: disable=g-import-not-at-top
    from onnx import helper, numpy_helper  # pylint: disable=g-import-not-at-top
    self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
    self.nodes, self.initializers = [], []
    self._count = 0

  def name(self, hint: str) -> str:
    self._count += 1
    return f'{hint}_{self._count}'

  def const(self, value: np.ndarray, hint: str) -> str:
    name = self.name(hint)
    self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name

  def op(self, op_type: str, inputs, hint: str, **attrs) -> str:
    out = self.name(hint)
    self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
    return out

  def count_above(self, x: str, thresholds: np.ndarray, hint: str) -> str:
    """``#{i : x > thresholds[i]}`` as uint8 (``thresholds`` shape ``(K,)``)."""
    total = None
    for i in range(thresholds.shape[-1]):
      t = self.const(np.asarray(thresholds[i]), f'{hint}_t{i}')
      bit = self.op('Cast', [self.op('Greater', [x, t], f'{hint}_cmp')], f'{hint}_bit',
                    to=self.onnx.TensorProto.INT32)
      total = bit if total is None else self.op('Add', [total, bit], f'{hint}_sum')
    return self.op('Cast', [total], f'{hint}_codes', to=self.onnx.TensorProto.UINT8)

  def folded_codes(self, acc: str, direction: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   hint: str) -> str:
    """Codes of a folded quantizer (rules of ``folding.DIRECTION_RULES``) as uint8."""
    two_sided = np.abs(direction) == 2
    sign = np.where(two_sided, 1, direction).astype(np.int32)
    v = self.op('Mul', [acc, self.const(_channel(sign), f'{hint}_dir')], hint)
    if two_sided.any():
      mask = self.const(_channel(two_sided), f'{hint}_two_sided')
      outside = self.const(_channel(direction == 2), f'{hint}_outside')
    total = None
    for i in range(lo.shape[-1]):
      int32 = self.onnx.TensorProto.INT32
      ge = self.op('GreaterOrEqual', [v, self.const(_channel(lo[:, i]), f'{hint}_t{i}')],
                   f'{hint}_ge')
      bit = self.op('Cast', [ge], f'{hint}_bit', to=int32)
      if two_sided.any():
        le = self.op('LessOrEqual', [acc, self.const(_channel(hi[:, i]), f'{hint}_hi{i}')],
                     f'{hint}_le')
        two = self.op('Xor', [self.op('And', [ge, le], f'{hint}_in'), outside], hint)
        bit = self.op('Where', [mask, self.op('Cast', [two], hint, to=int32), bit], hint)
      total = bit if total is None else self.op('Add', [total, bit], f'{hint}_sum')
    return self.op('Cast', [total], f'{hint}_codes', to=self.onnx.TensorProto.UINT8)

  def batch_norm(self, x, t, ts, epsilon, hint):
    mul = (np.float32(1) / np.sqrt(t[ts['var']] + np.float32(epsilon))) * t[ts['scale']]
    y = self.op('Sub', [x, self.const(_channel(t[ts['mean']]), f'{hint}_mean')], hint)
    y = self.op('Mul', [y, self.const(_channel(mul.astype(np.float32)), f'{hint}_mul')], hint)
    return self.op('Add', [y, self.const(_channel(t[ts['bias']]), f'{hint}_bias')], hint)

  def rprelu(self, x, t, ts, hint):
    z = self.op('Add', [x, self.const(_channel(t[ts['bias_in']]), f'{hint}_b1')], hint)
    neg = self.op('Mul', [z, self.const(_channel(t[ts['slope']]), f'{hint}_slope')], hint)
    pos = self.op('Greater', [z, self.const(np.float32(0), f'{hint}_zero')], hint)
    y = self.op('Where', [pos, z, neg], hint)
    return self.op('Add', [y, self.const(_channel(t[ts['bias_out']]), f'{hint}_b2')], hint)



def build_onnx(graph: Graph, *, in_channels: int):
  """The ``onnx.ModelProto`` of a folded export graph."""
  b = _Builder()
  t = graph.tensors
  values = {graph.input: b.op('Transpose', [graph.input], 'nchw', perm=[0, 3, 1, 2])}
  for node in graph.nodes:
    x = values[node.inputs[0]]
    a, ts, hint = node.attrs, node.tensors, node.name.replace('.', '_') + '_' + node.op
    pads = [a['padding'][0][0], a['padding'][1][0], a['padding'][0][1],
            a['padding'][1][1]] if 'padding' in a else None
    if node.op == 'conv':
      w = b.const(np.transpose(t[ts['kernel']], (3, 2, 0, 1)), f'{hint}_w')
      inputs = [x, w] + ([b.const(t[ts['bias']], f'{hint}_b')] if 'bias' in ts else [])
      y = b.op('Conv', inputs, hint, strides=a['strides'], pads=pads, group=a['groups'])
    elif node.op == 'batch_norm':
      y = b.batch_norm(x, t, ts, a['epsilon'], hint)
    elif node.op == 'rprelu':
      y = b.rprelu(x, t, ts, hint)
    elif node.op == 'relu':
      y = b.op('Relu', [x], hint)
    elif node.op == 'relu6':
      y = b.op('Clip', [x, b.const(np.float32(0), 'zero'), b.const(np.float32(6), 'six')], hint)
    elif node.op == 'max_pool':
      y = b.op('MaxPool', [x], hint, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    elif node.op == 'global_avg_pool':
      y = b.op('Flatten', [b.op('GlobalAveragePool', [x], hint)], hint)
    elif node.op == 'add':
      y = b.op('Add', [x, values[node.inputs[1]]], hint)
    elif node.op == 'dense':
      y = b.op('MatMul', [x, b.const(t[ts['kernel']], f'{hint}_w')], hint)
      if 'bias' in ts:
        y = b.op('Add', [y, b.const(t[ts['bias']], f'{hint}_b')], hint)
    elif node.op == 'quantize':
      u = b.op('Mul', [x, b.const(t[ts['input_scale']], f'{hint}_scale')], hint)
      y = b.count_above(u, t[ts['thresholds']], hint)
    elif node.op == 'qconv':
      info = graph.packed[ts['weight_codes']]
      q = packing.unpack(t[ts['weight_codes']], info['bits'], info['shape'])
      conv = dict(strides=a['strides'], pads=pads, group=a['groups'])
      if info['bits'] < 8:
        w = (2 * q.astype(np.int16) - (2 ** info['bits'] - 1)).astype(np.int8)
        w = b.const(np.transpose(w, (3, 2, 0, 1)), f'{hint}_w')
        y = b.op('ConvInteger', [x, w], hint, **conv)
      else:  # 2q - K does not fit int8: acc = 2 sum(k q) - K sum(k) (SPEC 8)
        kq = b.op('ConvInteger', [x, b.const(np.transpose(q, (3, 2, 0, 1)), f'{hint}_q')],
                  hint, **conv)
        ones = b.const(np.ones(np.transpose(q, (3, 2, 0, 1)).shape, np.uint8), f'{hint}_ones')
        ks = b.op('ConvInteger', [x, ones], hint, **conv)
        y = b.op('Sub', [b.op('Mul', [kq, b.const(np.int32(2), 'two')], hint),
                         b.op('Mul', [ks, b.const(np.int32(255), 'k8')], hint)], hint)
    elif node.op == 'dequantize':
      f = b.op('Cast', [x], hint, to=b.onnx.TensorProto.FLOAT)
      y = b.op('Mul', [f, b.const(_channel(acc_scale(t, node)), f'{hint}_scale')], hint)
    elif node.op == 'threshold':
      y = b.folded_codes(x, t[ts['direction']].astype(np.int32), t[ts['int_thresholds']],
                         t[ts['int_thresholds_hi']], hint)
    else:
      raise ValueError(f'unknown op {node.op!r} in node {node.name!r}')
    values[node.output] = y
  b.nodes.append(b.helper.make_node('Identity', [values[graph.output]], ['logits']))
  h, tp = b.helper, b.onnx.TensorProto
  onnx_graph = h.make_graph(
      b.nodes, 'n2uq_integer', [h.make_tensor_value_info('image', tp.FLOAT,
                                                         ['batch', None, None, in_channels])],
      [h.make_tensor_value_info('logits', tp.FLOAT, ['batch', None])], initializer=b.initializers)
  model = h.make_model(onnx_graph, opset_imports=[h.make_opsetid('', OPSET)],
                       producer_name='n2uq_jax.export')
  b.onnx.checker.check_model(model)
  return model


def write_onnx(graph: Graph, path: str, *, in_channels: int) -> None:
  """Writes :func:`build_onnx` to ``path``."""
  import onnx  # pylint: disable=g-import-not-at-top
  onnx.save(build_onnx(graph, in_channels=in_channels), path)
