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


class _Recorder:
  """Collects, during one traced forward pass, the records of the layers it was given
  (by object id) and, into ``shapes``, every layer's :class:`LayerShape`."""

  def __init__(self, names: dict[int, str], shapes: dict[str, LayerShape], valid: jax.Array,
               key: jax.Array, samples: int):
    self.names, self.shapes, self.valid, self.key, self.samples = (
        names, shapes, valid, key, samples)
    self.records: dict[str, dict[str, jax.Array]] = {}

  def layer_input(self, layer, x: jax.Array) -> None:
    """Level counts, input samples and thresholds of ``layer``'s input quantizer."""
    quantizer = layer.input_quantizer
    if quantizer is None:
      return
    name = self.names[id(layer)]
    if not isinstance(quantizer, levels_lib.ACTIVATION_MODULES):
      raise ValueError(f'layer {name}: no level rule for {type(quantizer).__name__}')
    codes = levels_lib.activation_levels(quantizer, x, quantizer(x))
    weights = jnp.broadcast_to(self.valid.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    counts = jnp.zeros((2 ** quantizer.bits,), jnp.float32).at[codes.reshape(-1)].add(
        weights.reshape(-1))
    row_key, column_key = jax.random.split(jax.random.fold_in(self.key, len(self.records)))
    rows = jax.random.choice(row_key, x.shape[0], (self.samples,),
                             p=self.valid / jnp.sum(self.valid))
    columns = jax.random.randint(column_key, (self.samples,), 0, x[0].size)
    self.records[name] = {
        'counts': counts,
        'samples': x.reshape(x.shape[0], -1)[rows, columns].astype(jnp.float32),
        'thresholds': levels_lib.decision_thresholds(quantizer).astype(jnp.float32),
    }

  def layer_output(self, layer, y: jax.Array) -> None:
    self.shapes[self.names[id(layer)]] = LayerShape(
        'conv' if isinstance(layer, nn.QuantConv) else 'dense', tuple(layer.kernel.shape),
        tuple(y.shape[1:]))


def _recording_class(base, recorder: _Recorder):
  """A subclass of the layer class ``base`` whose calls report to ``recorder``."""
  class Recording(base):  # pylint: disable=missing-class-docstring
    def __call__(self, x):
      recorder.layer_input(self, x)
      y = super().__call__(x)
      recorder.layer_output(self, y)
      return y
  Recording.__name__ = f'Recording{base.__name__}'
  return Recording


def make_capture_fn(model_def, *, samples: int) -> tuple[Callable, dict[str, LayerShape]]:
  """A jitted ``(params, model_state, images, mask, key) -> records`` and the dict of
  :class:`LayerShape` by layer name (in the order the forward pass runs the layers)
  that its first call fills.

  Args:
    model_def: the model's :class:`n2uq_jax.runs.model.ModelDef`.
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
    recorder = _Recorder({id(node): name for name, node in layers.items()}, shapes,
                         mask.astype(jnp.float32), key, samples)
    classes = {}
    for node in layers.values():
      base = type(node)
      if base not in classes:
        classes[base] = _recording_class(base, recorder)
      node.__class__ = classes[base]
    model(images)
    return recorder.records

  return jax.jit(capture), shapes
