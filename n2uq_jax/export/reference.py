"""Activation codes of the fake-quantized model, to compare an export against.

:func:`fake_quantized_codes` runs a model in evaluation mode (one ``jax.jit``
function) and records, for every quantized conv, the integer level its input
quantizer assigns (N2UQ: SPEC 2.2; PACT: ``round(clip(x, 0, alpha) K / alpha)``),
keyed by the conv's dotted name as :meth:`IntegerModel.codes` keys them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from n2uq_jax import nn


class _Recorder(nnx.Module):
  """Wraps a quantizer: passes its output through and keeps the input's codes."""

  def __init__(self, quantizer, name: str, store: dict, inputs: dict | None):
    self.quantizer = quantizer
    self.name = name
    self.store = store
    self.inputs = inputs

  def __call__(self, x):
    q = self.quantizer
    if isinstance(q, nn.N2UQActivation):
      codes = q.codes(x)
    else:
      alpha = q.alpha[...].astype(jnp.float32)
      levels = 2 ** q.bits - 1
      codes = jnp.round(jnp.clip(x.astype(jnp.float32), 0, alpha) * levels / alpha)
    self.store[self.name] = codes.astype(jnp.uint8)
    if self.inputs is not None:
      self.inputs[self.name] = x
    return q(x)


def _quantized_convs(model: nnx.Module):
  return [('.'.join(str(p) for p in path), node) for path, node in nnx.iter_graph(model)
          if isinstance(node, nn.QuantConv) and node.input_quantizer is not None]


def fake_quantized_codes(model: nnx.Module, images, *, with_inputs: bool = False):
  """``(logits, {conv name: uint8 codes NHWC})`` of ``model(images)`` in evaluation mode.

  With ``with_inputs``, a third item ``{conv name: float32 quantizer input}`` (the
  ``x`` that the quantizer compares as ``beta1 x > T_i``). The model itself is not
  modified (a copy inside the jitted function is).
  """
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, images):
    copy = nnx.merge(graphdef, state)
    store, inputs = {}, ({} if with_inputs else None)
    for name, conv in _quantized_convs(copy):
      conv.input_quantizer = _Recorder(conv.input_quantizer, name, store, inputs)
    return copy(images), store, inputs

  logits, store, inputs = run(state, jnp.asarray(images))
  out = np.asarray(logits), {k: np.asarray(v) for k, v in store.items()}
  if with_inputs:
    out += ({k: np.asarray(v) for k, v in inputs.items()},)
  return out
