"""The PNG figures of an inspection, drawn with Matplotlib's object API on the Agg
canvas (no pyplot state, no display needed)."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any, Sequence

import matplotlib
import matplotlib.patches
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


@dataclasses.dataclass(frozen=True)
class ThresholdPanel:
  """One layer's activation quantizer: its input samples, its decision thresholds and,
  for a learned quantizer, the thresholds it started from (``None`` otherwise)."""
  name: str
  quantizer: str
  bits: int
  samples: np.ndarray
  thresholds: np.ndarray
  initial_thresholds: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class OccupancyRow:
  """One layer's level occupancy (fractions summing to 1) and its entropy in bits."""
  name: str
  bits: int
  occupancy: np.ndarray
  entropy_bits: float


def _save(figure: Figure, path: str) -> None:
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=DPI)


def _histogram_range(samples: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
  """The 0.5..99.5 percentile range of the inputs, widened to show every threshold."""
  lo, hi = np.percentile(samples, [0.5, 99.5]) if samples.size else (0.0, 1.0)
  finite = thresholds[np.isfinite(thresholds)]
  if finite.size:
    lo, hi = min(lo, finite.min()), max(hi, finite.max())
  pad = 0.05 * max(hi - lo, 1e-6)
  return float(lo - pad), float(hi + pad)


THRESHOLDS_TITLE = ('activation quantizer inputs (histogram), thresholds (dashed) and, for '
                    'learned ones, their initial values (dotted)')


def thresholds_figure(panels: Sequence[ThresholdPanel], *, columns: int = 4) -> Figure:
  """A grid of histograms of each layer's quantizer inputs with its thresholds drawn
  as dashed vertical lines (level ``i`` lies right of threshold ``i``) and the
  thresholds at initialisation as dotted grey lines; the title is wrapped to the
  width of the grid (one panel is 3.4 inches wide)."""
  columns = max(1, min(columns, len(panels)))
  rows = math.ceil(len(panels) / columns)
  figure = Figure(figsize=(3.4 * columns, 2.6 * rows), layout='constrained')
  for index, panel in enumerate(panels):
    axes = figure.add_subplot(rows, columns, index + 1)
    lo, hi = _histogram_range(panel.samples, panel.thresholds)
    axes.hist(np.clip(panel.samples, lo, hi), bins=80, range=(lo, hi), density=True,
              color='0.6', edgecolor='none')
    for threshold in (() if panel.initial_thresholds is None else panel.initial_thresholds):
      axes.axvline(threshold, color='0.3', linewidth=0.8, linestyle=':')
    for i, threshold in enumerate(panel.thresholds, start=1):
      axes.axvline(threshold, color='tab:red', linewidth=1.0, linestyle='--')
      right_edge = threshold > lo + 0.9 * (hi - lo)
      axes.annotate(f'T{i}', (threshold, 1.0), xycoords=('data', 'axes fraction'),
                    xytext=(-2 if right_edge else 2, -10), textcoords='offset points',
                    ha='right' if right_edge else 'left', fontsize=7, color='tab:red')
    axes.set_xlim(lo, hi)
    axes.set_title(f'{panel.name} ({panel.quantizer}, {panel.bits} bit)', fontsize=8)
    axes.set_xlabel('quantizer input', fontsize=7)
    axes.set_ylabel('density', fontsize=7)
    axes.tick_params(labelsize=7)
    axes.set_yticks([])
  # about 14 characters per inch at 9 points
  figure.suptitle(textwrap.fill(THRESHOLDS_TITLE, width=int(3.4 * columns * 14)), fontsize=9)
  return figure


def draw_thresholds(panels: Sequence[ThresholdPanel], path: str, *, columns: int = 4) -> None:
  """Writes :func:`thresholds_figure` to ``path`` (PNG)."""
  _save(thresholds_figure(panels, columns=columns), path)


def _occupancy_axes(axes, rows: Sequence[OccupancyRow], title: str, colors) -> None:
  for row_index, row in enumerate(rows):
    left = 0.0
    for level, fraction in enumerate(row.occupancy):
      axes.barh(row_index, fraction, left=left, color=colors[level], edgecolor='white',
                linewidth=0.3)
      left += fraction
  axes.set_yticks(np.arange(len(rows)),
                  [f'{r.name}  H={r.entropy_bits:.2f}/{r.bits}' for r in rows], fontsize=7)
  axes.invert_yaxis()
  axes.set_xlim(0, 1)
  axes.set_title(title, fontsize=9)
  axes.tick_params(axis='x', labelsize=7)


def draw_occupancy(activation: Sequence[OccupancyRow], weight: Sequence[OccupancyRow],
                   path: str) -> None:
  """Stacked bars of the level occupancy per layer, activations and weights; each
  layer's label gives the entropy H of its occupancy over its maximum, the bits."""
  groups = [(rows, title) for rows, title in (
      (activation, 'activation levels (inputs of each quantized layer)'),
      (weight, 'weight levels (most negative first)')) if rows]
  max_levels = max(len(r.occupancy) for rows, _ in groups for r in rows)
  colors = [matplotlib.colormaps['viridis'](i / max(max_levels - 1, 1))
            for i in range(max_levels)]
  heights = [0.9 + 0.22 * len(rows) for rows, _ in groups]
  figure = Figure(figsize=(7.5, sum(heights) + 0.7), layout='constrained')
  grid = figure.add_gridspec(len(groups), 1, height_ratios=heights)
  for index, (rows, title) in enumerate(groups):
    axes = figure.add_subplot(grid[index])
    _occupancy_axes(axes, rows, title, colors)
  axes.set_xlabel('fraction of values per level (H: entropy in bits / its maximum)', fontsize=8)
  if max_levels <= 16:
    handles = [matplotlib.patches.Patch(color=colors[i], label=f'level {i}')
               for i in range(max_levels)]
    figure.legend(handles=handles, loc='outside lower center', ncols=min(max_levels, 8),
                  fontsize=7, frameon=False)
  _save(figure, path)


def _last_per_step(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of ``key``, sorted by step; a step logged twice (a resumed
  run repeats the steps after its last checkpoint) keeps its last value."""
  values = {}
  for record in records:
    if key in record and 'step' in record and not record.get('summary'):
      values[int(record['step'])] = float(record[key])
  steps = np.array(sorted(values), dtype=np.int64)
  return steps, np.array([values[s] for s in steps], dtype=np.float64)


def draw_curves(records: Sequence[dict[str, Any]], path: str, *, loss: str = 'ce') -> bool:
  """Training and evaluation loss and accuracy by step from ``metrics.jsonl``
  records; returns False (and draws nothing) when there is neither. ``loss`` names
  the training loss (``'kd'`` or ``'ce'``); the evaluation loss is cross-entropy."""
  series = {key: _last_per_step(records, key)
            for key in ('loss', 'eval_loss', 'accuracy', 'eval_accuracy')}
  if not any(steps.size for steps, _ in series.values()):
    return False
  figure = Figure(figsize=(9, 3.2), layout='constrained')
  for index, (keys, ylabel) in enumerate(((('loss', 'eval_loss'), 'loss'),
                                          (('accuracy', 'eval_accuracy'), 'top-1 accuracy'))):
    axes = figure.add_subplot(1, 2, index + 1)
    train_label = 'training batches' + (f' ({loss} loss)' if index == 0 else '')
    eval_label = 'evaluation' + (' (cross-entropy)' if index == 0 else '')
    for key, label, style in ((keys[0], train_label, '-'), (keys[1], eval_label, 'o-')):
      steps, values = series[key]
      if steps.size:
        axes.plot(steps, values, style, markersize=3, linewidth=1.2, label=label)
    axes.set_xlabel('step', fontsize=8)
    axes.set_ylabel(ylabel, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
  _save(figure, path)
  return True
