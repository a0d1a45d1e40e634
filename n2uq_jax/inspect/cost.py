"""Bit-widths, model size and bit-operations of a model, layer by layer.

Definitions (per example, at the input size of the run's data):

* MACs of a conv: ``H' W' kh kw (C_in / groups) C_out``; of a dense layer
  ``in * out``; that is, the output positions times the kernel size.
* BOPs = MACs x weight bits x activation bits, where a side without a quantizer
  counts 32 bits (so a float layer costs ``1024 MACs``).
* Model size: every quantized kernel at its weight bits, every other value
  (float kernels, biases, BatchNorm parameters and running statistics, RPReLU and
  quantizer parameters) at 32 bits; compared with the whole model in float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from n2uq_jax.inspect.capture import LayerShape

FLOAT_BITS = 32
"""Bits of a value without a quantizer."""


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One conv or dense layer.

  Attributes:
    name: dotted layer name.
    kind: ``'conv'`` or ``'dense'``.
    kernel_shape, output_shape: see :class:`n2uq_jax.inspect.capture.LayerShape`.
    weight_quantizer, activation_quantizer: family names, ``'none'`` for float.
    weight_bits, activation_bits: bits, :data:`FLOAT_BITS` for float.
    weights: kernel elements.
    macs: multiply-accumulates per example.
    bops: ``macs * weight_bits * activation_bits``.
  """
  name: str
  kind: str
  kernel_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  weight_quantizer: str
  activation_quantizer: str
  weight_bits: int
  activation_bits: int
  weights: int
  macs: int
  bops: int

  @property
  def is_quantized(self) -> bool:
    return self.weight_quantizer != 'none' or self.activation_quantizer != 'none'


def layer_cost(name: str, layer, shape: LayerShape) -> LayerCost:
  """The :class:`LayerCost` of a ``QuantConv``/``QuantDense`` with its recorded shape."""
  spec = layer.spec
  weight_bits = spec.weight_bits if spec.weight != 'none' else FLOAT_BITS
  activation_bits = spec.activation_bits if spec.activation != 'none' else FLOAT_BITS
  weights = math.prod(shape.kernel_shape)
  macs = math.prod(shape.output_shape[:-1]) * weights
  return LayerCost(name=name, kind=shape.kind, kernel_shape=shape.kernel_shape,
                   output_shape=shape.output_shape, weight_quantizer=spec.weight,
                   activation_quantizer=spec.activation, weight_bits=weight_bits,
                   activation_bits=activation_bits, weights=weights, macs=macs,
                   bops=macs * weight_bits * activation_bits)


@dataclasses.dataclass(frozen=True)
class ModelSize:
  """Bytes of a model stored at its bit-widths and in float32.

  Attributes:
    values: every parameter and BatchNorm statistic element.
    quantized_weights: kernel elements stored below 32 bits.
    quantized_bytes: ``sum(kernel elements * weight bits) / 8 + 4 * (other values)``.
    float32_bytes: ``4 * values``.
  """
  values: int
  quantized_weights: int
  quantized_bytes: float
  float32_bytes: int

  @property
  def compression(self) -> float:
    return self.float32_bytes / self.quantized_bytes


def model_size(model: nnx.Module, layers: list[LayerCost]) -> ModelSize:
  """The :class:`ModelSize` of ``model`` whose conv/dense layers are ``layers``."""
  state = nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  values = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
  quantized = [layer for layer in layers if layer.weight_quantizer != 'none']
  quantized_weights = sum(layer.weights for layer in quantized)
  quantized_bits = sum(layer.weights * layer.weight_bits for layer in quantized)
  other_bits = FLOAT_BITS * (values - quantized_weights)
  return ModelSize(values=values, quantized_weights=quantized_weights,
                   quantized_bytes=(quantized_bits + other_bits) / 8,
                   float32_bytes=FLOAT_BITS // 8 * values)

