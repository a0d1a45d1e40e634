"""The files of a variant run directory other than its checkpoints: ``config.json``
(written, read, compared) and ``metrics.jsonl`` (read; written by
:class:`n2uq_jax.train.metrics.MetricsWriter`).

A workdir of several variants holds one variant run directory per variant
(``workdir/default/fp``, ``workdir/default/w2a2``); each has its own ``config.json``,
the config of that one variant. Resuming compares the stored config with the current
one: every field but :data:`RUNTIME_FIELDS` must match.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'

RUNTIME_FIELDS = (
    'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'async_checkpointing',
    'progress_bar', 'tensorboard', 'compilation_cache_dir', 'distributed', 'eval_every_steps',
    'nonfinite_policy', 'mesh', 'data.cache_dir',
)
"""Fields that may change between a run and its resumption: they do not change the
trained parameters (``mesh``: a run may resume on other devices, to float tolerance;
dotted: a field of a sub-config). Every other field must match the config stored in the
workdir."""


def comparable(config) -> dict[str, Any]:
  """The config as a JSON-able dict without :data:`RUNTIME_FIELDS`."""
  d = json.loads(config.to_json_best_effort()) if hasattr(config, 'to_json_best_effort') \
      else dict(config)
  for field in RUNTIME_FIELDS:
    parent, _, leaf = field.rpartition('.')
    (d.get(parent, {}) if parent else d).pop(leaf, None)
  return d


def differences(stored: dict[str, Any], current: dict[str, Any], prefix='') -> list[str]:
  """Dotted names of the fields whose values differ between two config dicts."""
  out = []
  for key in sorted(set(stored) | set(current)):
    a, b = stored.get(key, '<missing>'), current.get(key, '<missing>')
    if isinstance(a, dict) and isinstance(b, dict):
      out.extend(differences(a, b, f'{prefix}{key}.'))
    elif a != b:
      out.append(f'{prefix}{key}: {a!r} (workdir) != {b!r} (now)')
  return out


def stored_config(run_dir: str) -> dict[str, Any] | None:
  """The ``config.json`` of ``run_dir`` as a dict; None when there is none."""
  path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def write_config(run_dir: str, config) -> None:
  """Writes ``config.json`` (the comparable fields, see :func:`comparable`)."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(comparable(config), f, indent=2, sort_keys=True)


def config_differences(run_dir: str, config) -> list[str]:
  """The fields in which ``config`` differs from the ``config.json`` of ``run_dir``
  ([] when they agree or there is none)."""
  stored = stored_config(run_dir)
  return [] if stored is None else differences(stored, comparable(config))


def read_config(run_dir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` of a variant run directory as a ConfigDict.

  Raises:
    ValueError: ``run_dir`` has no ``config.json`` (naming the variant
      sub-directories when it is a workdir that holds several).
  """
  stored = stored_config(run_dir)
  if stored is None:
    variants = sorted(d for d in os.listdir(run_dir)
                      if os.path.isfile(os.path.join(run_dir, d, CONFIG_FILE))) if (
                          os.path.isdir(run_dir)) else []
    hint = (f'; it holds the variant directories {variants}: pass one of them, e.g. '
            f'{os.path.join(run_dir, variants[-1])}') if variants else (
                ' (give the directory of one variant, e.g. workdir/default/w2a2)')
    raise ValueError(f'{run_dir!r} is not a variant run directory: no {CONFIG_FILE}{hint}')
  return ml_collections.ConfigDict(stored)


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  """Every record of ``<run_dir>/metrics.jsonl``."""
  with open(os.path.join(run_dir, METRICS_FILE), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def occupancy_entropy(counts) -> float:
  """Entropy in bits of the level occupancy ``counts / sum(counts)`` (0 if empty).
  ``bits`` is its maximum, reached when every level is equally used."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  if total <= 0:
    return 0.0
  p = counts[counts > 0] / total
  return float(-(p * np.log2(p)).sum())
