"""One evaluation-mode forward pass that records what every quantized or float
conv/dense layer sees: the output shape of each layer and, for each layer with an
activation quantizer, the level occupancy of its input, a random sample of its input
values and its decision thresholds.

The recording works like ``n2uq_jax.train.step.make_quantizer_stats_fn``: inside the
jitted function the freshly merged (traced) layer instances get a recording subclass,
so the model code is untouched and nothing is recorded outside this function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from n2uq_jax import nn
from n2uq_jax.inspect import levels as levels_lib

LAYER_TYPES = (nn.QuantConv, nn.QuantDense)


@dataclasses.dataclass(frozen=True)
class LayerShape:
  """Static shapes of one conv or dense layer during the forward pass.

  Attributes:
    kind: ``'conv'`` or ``'dense'``.
    kernel_shape: HWIO ``(kh, kw, C_in / groups, C_out)`` or ``(in, out)``.
    output_shape: one example's output, ``(H', W', C_out)`` or ``(out,)``.
  """
  kind: str
  kernel_shape: tuple[int, ...]
  output_shape: tuple[int, ...]


def layer_name(path) -> str:
  """The dotted name of a layer from its graph path (``"layer1.0.conv1"``)."""
  return '.'.join(str(p) for p in path)


def quantized_layers(model: nnx.Module) -> dict[str, Any]:
  """Every conv and dense layer of ``model`` by dotted name, in graph order."""
  return {layer_name(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, LAYER_TYPES)}


def _recording_class(base, record):
  class Recording(base):  # pylint: disable=missing-class-docstring
    def __call__(self, x):
      record(self, x)
      y = super().__call__(x)
      record.shapes[record.names[id(self)]] = LayerShape(
          'conv' if isinstance(self, nn.QuantConv) else 'dense',
          tuple(self.kernel.shape), tuple(y.shape[1:]))
      return y
  Recording.__name__ = f'Recording{base.__name__}'
  return Recording


def make_capture_fn(model_def, *, samples: int) -> tuple[Callable, dict[str, LayerShape]]:
  """A jitted ``(params, model_state, images, mask, key) -> records`` and the dict of
  :class:`LayerShape` by layer name that its first call fills.

  Args:
    model_def: the model's :class:`n2uq_jax.train.step.ModelDef`.
    samples: input values sampled per quantized layer and call.

  ``images`` is ``(B, H, W, C)``, ``mask`` ``(B,)`` (padding rows false, excluded
  everywhere). ``records[name]`` for each layer with an activation quantizer:
  ``counts`` ``(2**bits,)`` float32 occupancy of the input levels, ``samples``
  ``(samples,)`` input values drawn uniformly with replacement from the valid rows,
  ``thresholds`` ``(2**bits - 1,)`` (:func:`levels.decision_thresholds`).
  """
  shapes: dict[str, LayerShape] = {}

  def capture(params, model_state, images, mask, key):
    model = model_def.merge(params, model_state, train=False)
    layers = quantized_layers(model)
    records = {}
    valid = mask.astype(jnp.float32)

    def record(layer, x):
      name = record.names[id(layer)]
      quantizer = layer.input_quantizer
      if quantizer is None:
        return
      if not isinstance(quantizer, levels_lib.ACTIVATION_MODULES):
        raise ValueError(f'layer {name}: no level rule for {type(quantizer).__name__}')
      codes = levels_lib.activation_levels(quantizer, x, quantizer(x))
      weights = jnp.broadcast_to(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
      counts = jnp.zeros((2 ** quantizer.bits,), jnp.float32).at[codes.reshape(-1)].add(
          weights.reshape(-1))
      row_key, column_key = jax.random.split(jax.random.fold_in(key, len(records)))
      rows = jax.random.choice(row_key, x.shape[0], (samples,), p=valid / jnp.sum(valid))
      columns = jax.random.randint(column_key, (samples,), 0, x[0].size)
      records[name] = {
          'counts': counts,
          'samples': x.reshape(x.shape[0], -1)[rows, columns].astype(jnp.float32),
          'thresholds': levels_lib.decision_thresholds(quantizer).astype(jnp.float32),
      }

    record.names = {id(node): name for name, node in layers.items()}
    record.shapes = shapes
    classes = {}
    for node in layers.values():
      base = type(node)
      if base not in classes:
        classes[base] = _recording_class(base, record)
      node.__class__ = classes[base]
    model(images)
    return records

  return jax.jit(capture), shapes
