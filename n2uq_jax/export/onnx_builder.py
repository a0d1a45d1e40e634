"""What the ONNX and QONNX graphs share: emitting nodes and initializers, and the float
operators of the export graph that both write the same way (SPEC 8: the float parts stay
float32).

Both graphs are NCHW inside; per-channel constants are ``(1, C, 1, 1)``
(:func:`channel`).
"""

from __future__ import annotations

import numpy as np

from n2uq_jax.export.graph import Node


def channel(x: np.ndarray) -> np.ndarray:
  """``(C,)`` -> ``(1, C, 1, 1)`` for broadcasting against NCHW."""
  return np.asarray(x).reshape(1, -1, 1, 1)


def conv_attrs(attrs: dict) -> dict:
  """ONNX ``Conv`` attributes of an export-graph conv's ``strides``, ``padding``
  ``((top, bottom), (left, right))`` and ``groups``."""
  (top, bottom), (left, right) = attrs['padding']
  return dict(strides=attrs['strides'], pads=[top, left, bottom, right], group=attrs['groups'])


class OnnxBuilder:
  """Accumulates nodes, initializers and (for QONNX) datatype annotations.

  ``onnx`` is imported when a builder is made, so importing the export package does not
  need it.
  """

  def __init__(self):
    import onnx  # pylint: disable=g-import-not-at-top
    from onnx import helper, numpy_helper  # pylint: disable=g-import-not-at-top
    self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
    self.nodes, self.initializers = [], []
    self.datatypes: dict[str, str] = {}  # tensor name -> annotated integer datatype
    self._count = 0

  def name(self, hint: str) -> str:
    """A fresh tensor name starting with ``hint``."""
    self._count += 1
    return f'{hint}_{self._count}'

  def const(self, value, hint: str, datatype: str | None = None) -> str:
    """An initializer holding ``value`` (its numpy dtype), optionally annotated."""
    name = self.name(hint)
    self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
    if datatype:
      self.datatypes[name] = datatype
    return name

  def op(self, op_type: str, inputs, hint: str, *, output: str | None = None,
         datatype: str | None = None, domain: str | None = None, **attrs) -> str:
    """Appends one node; returns its output's name (``output``, or a fresh one)."""
    out = output or self.name(hint)
    node = self.helper.make_node(op_type, list(inputs), [out], **attrs)
    if domain:
      node.domain = domain
    self.nodes.append(node)
    if datatype:
      self.datatypes[out] = datatype
    return out

  def cast(self, x: str, to: str, hint: str) -> str:
    """``Cast`` to the ``onnx.TensorProto`` type named ``to`` (``"FLOAT"``, ``"UINT8"``)."""
    return self.op('Cast', [x], hint, to=getattr(self.onnx.TensorProto, to))

  def rprelu(self, x: str, bias_in, slope, bias_out, hint: str) -> str:
    """``where(z > 0, z, slope z) + bias_out``, ``z = x + bias_in`` (SPEC 4.2), as
    ``max(z, 0) + slope * min(z, 0)``: the same float32 values (one of the two terms is
    an exact zero), and onnxruntime's ``PRelu`` and ``Where`` are several times slower."""
    z = self.op('Add', [x, self.const(channel(bias_in), f'{hint}_b1')], hint)
    zero = self.const(np.float32(0), f'{hint}_zero')
    negative = self.op('Mul', [self.op('Min', [z, zero], hint),
                               self.const(channel(slope), f'{hint}_slope')], hint)
    y = self.op('Add', [self.op('Max', [z, zero], hint), negative], hint)
    return self.op('Add', [y, self.const(channel(bias_out), f'{hint}_b2')], hint)

  def float_op(self, node: Node, inputs: list[str], tensors: dict, hint: str) -> str | None:
    """The float ops both graphs write alike: ``relu``, ``relu6``, ``max_pool`` (the
    ResNet stem's 3x3 / 2), ``global_avg_pool`` (to ``[N, C]``), ``add`` and ``dense``
    (``[N, C] @ kernel + bias``). ``inputs`` are the node's input tensor names and
    ``tensors`` the export graph's arrays; None for any other op."""
    x = inputs[0]
    if node.op == 'relu':
      return self.op('Relu', [x], hint)
    if node.op == 'relu6':
      return self.op('Clip', [x, self.const(np.float32(0), 'zero'),
                              self.const(np.float32(6), 'six')], hint)
    if node.op == 'max_pool':
      return self.op('MaxPool', [x], hint, kernel_shape=[3, 3], strides=[2, 2],
                     pads=[1, 1, 1, 1])
    if node.op == 'global_avg_pool':
      return self.op('Flatten', [self.op('GlobalAveragePool', [x], hint)], hint)
    if node.op == 'add':
      return self.op('Add', [x, inputs[1]], hint)
    if node.op == 'dense':
      ts = node.tensors
      y = self.op('MatMul', [x, self.const(tensors[ts['kernel']], f'{hint}_w')], hint)
      if 'bias' in ts:
        y = self.op('Add', [y, self.const(tensors[ts['bias']], f'{hint}_b')], hint)
      return y
    return None
