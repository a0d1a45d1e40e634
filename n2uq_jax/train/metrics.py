"""Metrics: ``metrics.jsonl`` in the workdir, optional TensorBoard events, and the
per-layer N2UQ quantizer statistics logged with each evaluation.

Each line of ``metrics.jsonl`` is one JSON object: a training log
(``step``, ``loss``, ``accuracy``, ``learning_rate``, ``images_per_second``), an
evaluation (``step``, ``eval_accuracy``, ``eval_loss``, ``quantizers``: per layer
``thresholds``, ``occupancy``, ``entropy_bits``), or the final ``summary``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from n2uq_jax.runs.layout import METRICS_FILE, occupancy_entropy, read_metrics  # pylint: disable=unused-import


def quantizer_summary(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """JSON-able per-layer statistics from the output of
  :func:`n2uq_jax.train.step.make_quantizer_stats_fn`."""
  out = {}
  for name, record in stats.items():
    counts = np.asarray(record['counts'], np.float64)
    total = max(counts.sum(), 1.0)
    out[name] = {
        'thresholds': [round(float(t), 6) for t in np.asarray(record['thresholds'])],
        'occupancy': [round(float(c / total), 6) for c in counts],
        'entropy_bits': round(occupancy_entropy(counts), 6),
    }
  return out


def _to_json(value):
  if isinstance(value, dict):
    return {k: _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, '__array__'):
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()
  return value


def _scalars(record: dict, prefix: str = ''):
  for key, value in record.items():
    if isinstance(value, dict):
      yield from _scalars(value, f'{prefix}{key}/')
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      yield f'{prefix}{key}', value


class MetricsWriter:
  """Appends records to ``<workdir>/metrics.jsonl`` (and TensorBoard when
  ``tensorboardX`` is importable and ``tensorboard`` is true). Only process 0 writes."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(self.path, 'a', encoding='utf-8')
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        self._tb = None

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = _to_json(record)
    self._file.write(json.dumps(record, sort_keys=False) + '\n')
    self._file.flush()
    if self._tb is not None and 'step' in record:
      for tag, value in _scalars(record):
        if tag != 'step':
          self._tb.add_scalar(tag, value, record['step'])
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
