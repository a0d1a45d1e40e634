"""The layer graph of an N2UQ model for export: nodes in execution order and the
tensors they read (docs/EXPORT.md is the format).

:func:`trace_model` walks a registry model (``small_cnn``, ``cifar_resnet20``,
``resnet18/34/50``, ``mobilenet_v2``) and records what its evaluation-mode forward
computes, op by op. Every quantized conv becomes three nodes: ``quantize`` (float
input -> uint8 codes, SPEC 2.2; PACT as uniform thresholds, SPEC 4.5), ``qconv``
(codes and odd integer weights ``2q - K`` -> int32 accumulator, SPEC 8) and
``dequantize`` (accumulator -> float). :func:`fold` then replaces each chain
``dequantize -> batch_norm -> rprelu -> quantize`` whose intermediate values have no
other reader by one ``threshold`` node on the accumulator (SPEC 8, :mod:`.folding`).
Quantizers that read the residual stream keep their float thresholds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from n2uq_jax import nn, quant
from n2uq_jax.export import folding, packing
from n2uq_jax.models import cifar, mobilenet_v2, resnet


@dataclasses.dataclass
class Node:
  """One op: ``output = op(inputs; tensors, attrs)``.

  Attributes:
    op: the op name (docs/EXPORT.md lists them).
    name: dotted name of the module it comes from (``"layer1.0.conv2"``).
    inputs: names of the values it reads.
    output: name of the value it writes.
    tensors: role -> tensor name in ``tables.safetensors``.
    attrs: JSON-able attributes (strides, bits, ...).
  """
  op: str
  name: str
  inputs: list[str]
  output: str
  tensors: dict[str, str] = dataclasses.field(default_factory=dict)
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> 'Node':
    return cls(**record)


@dataclasses.dataclass
class Graph:
  """Nodes in execution order, the tensors they read, the input and output values.

  ``packed`` maps a bit-packed tensor's name to ``{"bits", "shape"}`` of its codes.
  """
  nodes: list[Node]
  tensors: dict[str, np.ndarray]
  packed: dict[str, dict[str, Any]]
  input: str = 'image'
  output: str = 'logits'


_weight_codes = jax.jit(quant.n2uq_weight_codes, static_argnames=('bits', 'channel_axis'))
"""SPEC 3.1 codes and scales, one compiled function per kernel shape."""
_thresholds = jax.jit(quant.thresholds)


def _value(x) -> np.ndarray:
  return np.asarray(x.get_value() if isinstance(x, nnx.Variable) else x)


def _f32(x) -> np.ndarray:
  return np.asarray(_value(x), np.float32)


class _Tracer:
  """Emits nodes and tensors while walking a model's forward by hand."""

  def __init__(self):
    self.nodes: list[Node] = []
    self.tensors: dict[str, np.ndarray] = {}
    self.packed: dict[str, dict[str, Any]] = {}
    self._count = 0

  def _emit(self, op, name, inputs, tensors=None, output=None, **attrs) -> str:
    if output is None:
      self._count += 1
      output = f'v{self._count}'
    self.nodes.append(Node(op, name, list(inputs), output, dict(tensors or {}), attrs))
    return output

  def _tensor(self, name: str, value: np.ndarray) -> str:
    if name in self.tensors:
      raise ValueError(f'tensor {name!r} recorded twice')
    self.tensors[name] = value
    return name

  def conv(self, conv: nn.QuantConv, name: str, x: str) -> str:
    if isinstance(conv.padding, str):
      raise ValueError(f'{name}: string padding {conv.padding!r} is not exported; use ints')
    attrs = dict(strides=list(conv.strides), padding=[list(p) for p in conv.padding],
                 groups=int(conv.feature_group_count),
                 kernel_shape=list(_value(conv.kernel).shape))
    quantizer, spec = conv.input_quantizer, conv.spec
    if quantizer is None and spec.weight == 'none':
      tensors = {'kernel': self._tensor(f'{name}.kernel', _f32(conv.kernel))}
      if conv.bias is not None:
        tensors['bias'] = self._tensor(f'{name}.bias', _f32(conv.bias))
      return self._emit('conv', name, [x], tensors, **attrs)
    if spec.weight != 'n2uq' or not isinstance(quantizer, (nn.N2UQActivation,
                                                           nn.PACTActivation)):
      raise ValueError(f'{name}: only N2UQ weights with N2UQ or PACT input quantizers export '
                       f'to integers, got activation={spec.activation!r}, '
                       f'weight={spec.weight!r}')
    if conv.bias is not None:
      raise ValueError(f'{name}: a quantized conv with a bias is not exported')
    codes = self.quantize(quantizer, f'{name}.input_quantizer', name, x)
    kernel = _value(conv.kernel).astype(np.float32)
    q, scale = _weight_codes(kernel, bits=spec.weight_bits, channel_axis=-1)
    q = np.asarray(q)
    weight = self._tensor(f'{name}.weight_codes', packing.pack(q, spec.weight_bits))
    self.packed[weight] = {'bits': spec.weight_bits, 'shape': list(q.shape)}
    weight_scale = self._tensor(f'{name}.weight_scale',
                                np.asarray(scale, np.float32).reshape(-1))
    acc = self._emit('qconv', name, [codes], {'weight_codes': weight},
                     weight_bits=spec.weight_bits, activation_bits=quantizer.bits, **attrs)
    return self._emit('dequantize', name, [acc],
                      {'weight_scale': weight_scale,
                       'output_step': f'{name}.input_quantizer.output_step'},
                      weight_bits=spec.weight_bits)

  def quantize(self, quantizer, name: str, layer: str, x: str) -> str:
    bits = quantizer.bits
    levels = 2 ** bits - 1
    if isinstance(quantizer, nn.N2UQActivation):
      p = quantizer.params()
      thresholds = _f32(_thresholds(p.offset, p.intervals))
      input_scale = _f32(p.input_scale)
      step = np.float32(_f32(p.output_scale) * np.float32(quant.level_spacing(bits)))
      rule = 'n2uq'
    else:  # PACT: round(clip(x, 0, alpha) K / alpha) is a count of x > (i - 1/2) alpha / K
      alpha = np.float64(_f32(quantizer.alpha))
      thresholds = ((np.arange(1, levels + 1) - 0.5) * alpha / levels).astype(np.float32)
      input_scale = np.float32(1.0)
      step = np.float32(alpha / levels)
      rule = 'pact'
    tensors = {
        'thresholds': self._tensor(f'{name}.thresholds', thresholds),
        'input_scale': self._tensor(f'{name}.input_scale', np.asarray(input_scale, np.float32)),
        'output_step': self._tensor(f'{name}.output_step', np.asarray(step, np.float32)),
    }
    return self._emit('quantize', layer, [x], tensors, bits=bits, family=rule)

  def batch_norm(self, bn: nnx.BatchNorm, name: str, x: str) -> str:
    tensors = {role: self._tensor(f'{name}.{role}', _f32(getattr(bn, role)))
               for role in ('scale', 'bias', 'mean', 'var')}
    return self._emit('batch_norm', name, [x], tensors, epsilon=float(bn.epsilon))

  def rprelu(self, module: nn.RPReLU, name: str, x: str) -> str:
    tensors = {role: self._tensor(f'{name}.{role}', _f32(getattr(module, role)))
               for role in ('bias_in', 'slope', 'bias_out')}
    return self._emit('rprelu', name, [x], tensors)

  def dense(self, module: nn.QuantDense, name: str, x: str, output: str) -> str:
    if not module.spec.is_full_precision:
      raise ValueError(f'{name}: a quantized dense layer is not exported')
    tensors = {'kernel': self._tensor(f'{name}.kernel', _f32(module.kernel))}
    if module.bias is not None:
      tensors['bias'] = self._tensor(f'{name}.bias', _f32(module.bias))
    return self._emit('dense', name, [x], tensors, output=output)

  def op(self, op: str, name: str, *inputs: str) -> str:
    return self._emit(op, name, inputs)


def _resnet_block(t: _Tracer, block, name: str, x: str) -> str:
  convs = [('conv1', 'bn1', 'rprelu1'), ('conv2', 'bn2', 'rprelu2')]
  if isinstance(block, resnet.N2UQBottleneck):
    convs.append(('conv3', 'bn3', 'rprelu3'))
  y = x
  for conv, bn, act in convs:
    y = t.rprelu(getattr(block, act), f'{name}.{act}', y)
    y = t.conv(getattr(block, conv), f'{name}.{conv}', y)
    y = t.batch_norm(getattr(block, bn), f'{name}.{bn}', y)
  shortcut = x
  if block.downsample is not None:
    shortcut = t.conv(block.downsample.conv, f'{name}.downsample.conv', x)
    shortcut = t.batch_norm(block.downsample.bn, f'{name}.downsample.bn', shortcut)
  y = t.op('add', name, y, shortcut)
  return t.rprelu(block.rprelu_out, f'{name}.rprelu_out', y)


def _trace_resnet(t: _Tracer, model, x: str) -> str:
  x = t.conv(model.conv1, 'conv1', x)
  x = t.op('relu', 'bn1', t.batch_norm(model.bn1, 'bn1', x))
  stages = ('layer1', 'layer2', 'layer3')
  if isinstance(model, resnet.ResNet):
    x = t.op('max_pool', 'maxpool', x)
    stages += ('layer4',)
  for stage in stages:
    for index, block in enumerate(getattr(model, stage)):
      if not isinstance(block, resnet.N2UQ_BLOCKS):
        raise ValueError(f'{stage}.{index}: {type(block).__name__} is a full-precision twin '
                         'block; export takes N2UQ models')
      x = _resnet_block(t, block, f'{stage}.{index}', x)
  return t.dense(model.fc, 'fc', t.op('global_avg_pool', 'pool', x), 'logits')


def _trace_small_cnn(t: _Tracer, model: cifar.SmallCNN, x: str) -> str:
  x = t.conv(model.conv1, 'conv1', x)
  x = t.op('relu', 'bn1', t.batch_norm(model.bn1, 'bn1', x))
  for index, block in enumerate(model.layer1):
    name = f'layer1.{index}'
    x = t.rprelu(block.rprelu, f'{name}.rprelu', x)
    x = t.batch_norm(block.bn, f'{name}.bn', t.conv(block.conv, f'{name}.conv', x))
  x = t.rprelu(model.rprelu_out, 'rprelu_out', x)
  return t.dense(model.fc, 'fc', t.op('global_avg_pool', 'pool', x), 'logits')


def _trace_mobilenet_v2(t: _Tracer, model: mobilenet_v2.MobileNetV2, x: str) -> str:
  for index, layer in enumerate(model.features):
    name = f'features.{index}'
    if isinstance(layer, mobilenet_v2.ConvBNAct):
      y = t.batch_norm(layer.bn, f'{name}.bn', t.conv(layer.conv, f'{name}.conv', x))
      x = t.op('relu6', f'{name}.bn', y)
      continue
    if not isinstance(layer, mobilenet_v2.N2UQInvertedResidual):
      raise ValueError(f'{name}: {type(layer).__name__} is a full-precision twin block; '
                       'export takes N2UQ models')
    y = x
    for j in (1, 2, 3):
      y = t.rprelu(getattr(layer, f'rprelu{j}'), f'{name}.rprelu{j}', y)
      y = t.conv(getattr(layer, f'conv{j}'), f'{name}.conv{j}', y)
      y = t.batch_norm(getattr(layer, f'bn{j}'), f'{name}.bn{j}', y)
    x = t.op('add', name, x, y) if layer.use_residual else y
  return t.dense(model.classifier, 'classifier', t.op('global_avg_pool', 'pool', x), 'logits')


def trace_model(model: nnx.Module) -> Graph:
  """The unfolded graph of an N2UQ registry model (evaluation mode).

  Raises:
    ValueError: a model type, quantizer family or layer option that does not
      export to integers (naming it).
  """
  t = _Tracer()
  if isinstance(model, (resnet.ResNet, cifar.CifarResNet)):
    _trace_resnet(t, model, 'image')
  elif isinstance(model, cifar.SmallCNN):
    _trace_small_cnn(t, model, 'image')
  elif isinstance(model, mobilenet_v2.MobileNetV2):
    _trace_mobilenet_v2(t, model, 'image')
  else:
    raise ValueError(f'cannot export {type(model).__name__}; exportable: ResNet, CifarResNet, '
                     'SmallCNN, MobileNetV2 (N2UQ forms)')
  return Graph(t.nodes, t.tensors, t.packed)


def acc_scale(tensors: dict[str, np.ndarray], node: Node) -> np.ndarray:
  """``(C,)`` float32: the factor of a ``dequantize`` node,
  ``output_step * weight_scale / (2**weight_bits - 1)`` evaluated in float64."""
  levels = 2 ** node.attrs['weight_bits'] - 1
  step = np.float64(tensors[node.tensors['output_step']])
  return (step * tensors[node.tensors['weight_scale']].astype(np.float64) / levels).astype(
      np.float32)


def fold(graph: Graph) -> Graph:
  """Replaces every ``dequantize -> batch_norm -> rprelu -> quantize`` chain (N2UQ
  quantizer, no other reader of the intermediate values) by a ``threshold`` node on
  the accumulator with integer thresholds per channel (SPEC 8, :mod:`.folding`)."""
  readers: dict[str, int] = {}
  for node in graph.nodes:
    for value in node.inputs:
      readers[value] = readers.get(value, 0) + 1
  by_output = {node.output: node for node in graph.nodes}
  drop = set()
  nodes = []
  for node in graph.nodes:
    if node.op == 'quantize' and node.attrs['family'] == 'n2uq':
      act = by_output.get(node.inputs[0])
      bn = by_output.get(act.inputs[0]) if act is not None and act.op == 'rprelu' else None
      deq = by_output.get(bn.inputs[0]) if bn is not None and bn.op == 'batch_norm' else None
      if (deq is not None and deq.op == 'dequantize'
          and all(readers[v.output] == 1 for v in (act, bn, deq))):
        tensors = graph.tensors
        prefix = node.name + '.input_quantizer'
        tau, tau_hi, direction = folding.fold_thresholds(
            acc_scale(tensors, deq), *(tensors[bn.tensors[r]] for r in
                                       ('scale', 'bias', 'mean', 'var')),
            bn.attrs['epsilon'], *(tensors[act.tensors[r]] for r in
                                   ('bias_in', 'slope', 'bias_out')),
            tensors[node.tensors['input_scale']], tensors[node.tensors['thresholds']])
        tensors[f'{prefix}.int_thresholds'] = tau
        tensors[f'{prefix}.int_thresholds_hi'] = tau_hi
        tensors[f'{prefix}.direction'] = direction
        chain = {f'dequantize.{k}': v for k, v in deq.tensors.items()}
        chain.update({f'batch_norm.{k}': v for k, v in bn.tensors.items()})
        chain.update({f'rprelu.{k}': v for k, v in act.tensors.items()})
        chain.update({'int_thresholds': f'{prefix}.int_thresholds',
                      'int_thresholds_hi': f'{prefix}.int_thresholds_hi',
                      'direction': f'{prefix}.direction', **node.tensors})
        drop.update(id(v) for v in (act, bn, deq))
        node = Node('threshold', node.name, [deq.inputs[0]], node.output, chain,
                    dict(node.attrs, epsilon=bn.attrs['epsilon'],
                         weight_bits=deq.attrs['weight_bits'],
                         rules=[folding.DIRECTION_RULES[int(d)] for d in direction]))
    nodes.append(node)
  return Graph([n for n in nodes if id(n) not in drop], graph.tensors, graph.packed,
               graph.input, graph.output)
