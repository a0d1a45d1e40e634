"""Activation codes of the fake-quantized model, to compare an export against.

:func:`fake_quantized_codes` runs a model in evaluation mode and records, for every
quantized conv, the integer level its input quantizer assigns (N2UQ: SPEC 2.2;
PACT: ``round(clip(x, 0, alpha) K / alpha)``), keyed by the conv's dotted name as
:meth:`IntegerModel.codes` keys them.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from n2uq_jax import nn


class _Recorder(nnx.Module):
  """Wraps a quantizer: passes its output through and keeps the input's codes."""

  def __init__(self, quantizer, name: str, store: dict):
    self.quantizer = quantizer
    self.name = name
    self.store = store

  def __call__(self, x):
    q = self.quantizer
    if isinstance(q, nn.N2UQActivation):
      codes = q.codes(x)
    else:
      alpha = np.float32(np.asarray(q.alpha.get_value()))
      levels = 2 ** q.bits - 1
      codes = np.round(np.clip(np.asarray(x, np.float32), 0, alpha) * np.float32(levels)
                       / alpha)
    self.store[self.name] = np.asarray(codes).astype(np.uint8)
    return q(x)


def fake_quantized_codes(model: nnx.Module, images) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """``(logits, {conv name: uint8 codes NHWC})`` of ``model(images)`` (eager)."""
  convs = [('.'.join(str(p) for p in path), node) for path, node in nnx.iter_graph(model)
           if isinstance(node, nn.QuantConv) and node.input_quantizer is not None]
  store: dict[str, np.ndarray] = {}
  originals = []
  for name, conv in convs:
    originals.append((conv, conv.input_quantizer))
    conv.input_quantizer = _Recorder(conv.input_quantizer, name, store)
  try:
    logits = np.asarray(model(images))
  finally:
    for conv, quantizer in originals:
      conv.input_quantizer = quantizer
  return logits, store
