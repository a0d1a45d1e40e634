"""The inspection of one run directory: figures, ``summary.txt`` and ``summary.json``.

Outputs in ``out_dir``:

* ``thresholds.png``: for each layer with an activation quantizer, the histogram of
  its inputs over the first evaluation batches and its decision thresholds (N2UQ: the
  learned ``T_i / beta1`` of SPEC 2.2);
* ``occupancy.png``: the activation-level and weight-level occupancy per layer with
  their entropies;
* ``curves.png``: training and evaluation loss and accuracy from ``metrics.jsonl``;
* ``summary.txt`` (also returned as text) and ``summary.json``: bits per layer, MACs
  and bit-operations, model size, occupancy entropies.

A full-precision run has no quantizers: it gets the curves and the summary.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from typing import Any, Sequence

import jax
import numpy as np

from n2uq_jax.inspect import capture as capture_lib
from n2uq_jax.inspect import cost as cost_lib
from n2uq_jax.inspect import figures
from n2uq_jax.inspect import levels as levels_lib
from n2uq_jax.runs import checkpoints as checkpoints_lib
from n2uq_jax.runs import layout
from n2uq_jax.runs import model as model_lib
from n2uq_jax.runs import restore as restore_lib


def _pipeline(config, *, batch_size: int, data_dir: str | None):
  from n2uq_jax import data  # pylint: disable=g-import-not-at-top
  data_config = config.data.copy_and_resolve_references()
  with data_config.unlocked():
    if data_dir is not None:
      data_config.data_dir = data_dir
    data_config.worker_count = 0  # a few batches: no worker processes
  return data.create_pipeline(data_config, per_host_batch_size=batch_size, seed=config.seed)


def _capture(model, pipeline, *, num_batches: int, samples: int, seed: int):
  """Runs the capture over the first ``num_batches`` evaluation batches.

  Returns ``(records, shapes, images)``: per quantized layer the summed ``counts``,
  the concatenated ``samples`` and the ``thresholds``; the layer shapes; the number
  of valid images seen.
  """
  model_def, params, model_state = model_lib.split_model(model)
  capture_fn, shapes = capture_lib.make_capture_fn(model_def, samples=samples)
  key = jax.random.key(seed)
  totals: dict[str, dict[str, Any]] = {}
  images = 0
  for index, batch in enumerate(pipeline.eval_batches()):
    if index == num_batches:
      break
    images += int(np.sum(batch['mask']))
    out = jax.device_get(capture_fn(params, model_state, batch['image'], batch['mask'],
                                    jax.random.fold_in(key, index)))
    for name, record in out.items():
      total = totals.setdefault(name, {'counts': 0.0, 'samples': [],
                                       'thresholds': np.asarray(record['thresholds'])})
      total['counts'] = total['counts'] + np.asarray(record['counts'], np.float64)
      total['samples'].append(np.asarray(record['samples']))
  for total in totals.values():
    total['samples'] = np.concatenate(total['samples'])
  return totals, shapes, images


def _occupancy(counts: np.ndarray) -> tuple[list[float], float]:
  total = counts.sum()
  fractions = counts / total if total > 0 else counts
  return [float(f) for f in fractions], layout.occupancy_entropy(counts)


def _activation_name(layer) -> str:
  quantizer = layer.input_quantizer
  return 'none' if quantizer is None else levels_lib.activation_family(quantizer)


@dataclasses.dataclass
class _LayerReport:
  """Per layer, in forward order: the summary rows and what the figures draw."""
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  activation_occupancy: list[figures.OccupancyRow] = dataclasses.field(default_factory=list)
  weight_occupancy: list[figures.OccupancyRow] = dataclasses.field(default_factory=list)
  threshold_panels: list[figures.ThresholdPanel] = dataclasses.field(default_factory=list)


def _check_arguments(num_batches, samples, batch_size) -> None:
  for name, value, low in (('num_batches', num_batches, 1), ('samples', samples, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f'{name}={value!r} must be an integer >= {low}')
  if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
    raise ValueError(f'batch_size={batch_size!r} must be an integer >= 1 (or None)')


def _report_layers(costs, layer_modules, records, layers: Sequence[str]) -> _LayerReport:
  """Rows, occupancies and threshold panels of every layer in ``costs``; only layers
  matching a ``layers`` pattern (all when empty) get a threshold panel."""
  report = _LayerReport()
  for layer in costs:
    module = layer_modules[layer.name]
    row = dataclasses.asdict(layer)
    row['activation_quantizer'] = _activation_name(module)
    if layer.name in records:
      record = records[layer.name]
      occupancy, entropy = _occupancy(record['counts'])
      row['activation_occupancy'], row['activation_entropy_bits'] = occupancy, entropy
      row['thresholds'] = [float(t) for t in record['thresholds']]
      report.activation_occupancy.append(figures.OccupancyRow(
          layer.name, layer.activation_bits, np.asarray(occupancy), entropy))
      if not layers or any(fnmatch.fnmatchcase(layer.name, p) for p in layers):
        initial = levels_lib.initial_thresholds(module.input_quantizer)
        report.threshold_panels.append(figures.ThresholdPanel(
            layer.name, row['activation_quantizer'], layer.activation_bits,
            record['samples'], record['thresholds'],
            None if initial is None else np.asarray(initial)))
    codes = levels_lib.weight_levels(module.weight_quantizer, module.kernel[...])
    if codes is not None:
      counts = levels_lib.level_counts(jax.device_get(codes), 2 ** layer.weight_bits)
      occupancy, entropy = _occupancy(counts)
      row['weight_occupancy'], row['weight_entropy_bits'] = occupancy, entropy
      report.weight_occupancy.append(figures.OccupancyRow(
          layer.name, layer.weight_bits, np.asarray(occupancy), entropy))
    report.rows.append(row)
  return report


def _draw_figures(report: _LayerReport, metric_records, out_dir: str, *, loss: str) -> list[str]:
  """Writes the figures that have something to draw; returns their file names."""
  os.makedirs(out_dir, exist_ok=True)
  written = []
  if report.threshold_panels:
    figures.draw_thresholds(report.threshold_panels, os.path.join(out_dir, 'thresholds.png'))
    written.append('thresholds.png')
  if report.activation_occupancy or report.weight_occupancy:
    figures.draw_occupancy(report.activation_occupancy, report.weight_occupancy,
                           os.path.join(out_dir, 'occupancy.png'))
    written.append('occupancy.png')
  if figures.draw_curves(metric_records, os.path.join(out_dir, 'curves.png'), loss=loss):
    written.append('curves.png')
  return written


def inspect_run(run_dir: str, out_dir: str, *, step: int | None = None, num_batches: int = 4,
                batch_size: int | None = None, samples: int = 8192,
                data_dir: str | None = None, layers: Sequence[str] = (),
                seed: int = 0) -> dict[str, Any]:
  """Inspects the trained model of ``run_dir`` and writes the outputs into ``out_dir``.

  Args:
    run_dir: a variant directory written by ``train.py`` (``workdir/default/w2a2``).
    out_dir: where the figures and summaries go (created).
    step: checkpoint step (default: the best checkpoint, else the latest).
    num_batches: evaluation batches the inputs and activation occupancy come from.
    batch_size: their size (default: the run's global batch size, at most 256).
    samples: input values sampled per quantized layer and batch for the histograms.
    data_dir: replaces the data config's ``data_dir`` (data moved since training).
    layers: ``fnmatch`` patterns of the layer names drawn in ``thresholds.png``
      (default all); the summary always covers every layer.
    seed: seed of the sampling.

  Returns:
    The summary (what ``summary.json`` holds), with ``text`` the summary's text and
    ``figures`` the PNG files written.

  Raises:
    ValueError: a bad argument, a directory that is not a run, or no checkpoint.
  """
  _check_arguments(num_batches, samples, batch_size)
  restored = restore_lib.restore_run(run_dir, step=checkpoints_lib.BEST if step is None else step)
  model, config = restored.model, restored.config
  variant, = model_lib.variants(config)
  batch_size = batch_size or min(int(config.global_batch_size), 256)
  pipeline = _pipeline(config, batch_size=batch_size, data_dir=data_dir)
  records, shapes, images = _capture(model, pipeline, num_batches=num_batches,
                                     samples=samples, seed=seed)
  unmatched = [p for p in layers if not any(fnmatch.fnmatchcase(n, p) for n in records)]
  if unmatched:
    raise ValueError(f'layer patterns {unmatched} match no quantized layer; the quantized '
                     f'layers are {sorted(records)}')

  layer_modules = capture_lib.quantized_layers(model)
  costs = [cost_lib.layer_cost(name, layer_modules[name], shape)  # in forward order
           for name, shape in shapes.items()]
  size = cost_lib.model_size(model, costs)
  report = _report_layers(costs, layer_modules, records, layers)
  metrics_path = os.path.join(run_dir, layout.METRICS_FILE)
  metric_records = layout.read_metrics(run_dir) if os.path.isfile(metrics_path) else []
  written = _draw_figures(report, metric_records, out_dir, loss=config.loss)

  manager_dir = os.path.dirname(os.path.dirname(restored.checkpoint_dir))
  summary = {
      'run_dir': os.path.abspath(run_dir),
      'checkpoint': f'{manager_dir}@{restored.step}',
      'model': restored.model_name,
      'variant': variant.name,
      'method': None if variant.is_full_precision else config.method,
      'input_shape': list(pipeline.image_shape),
      'images_inspected': images,
      'layers': report.rows,
      'total_macs': sum(layer.macs for layer in costs),
      'total_bops': sum(layer.bops for layer in costs),
      'float_bops': sum(layer.macs for layer in costs) * cost_lib.FLOAT_BITS ** 2,
      'model_size': {**dataclasses.asdict(size), 'compression': size.compression},
      'checkpoint_step': restored.step,
      'checkpoint_eval_accuracy': _eval_accuracy(metric_records, restored.step),
      'final_eval_accuracy': _eval_accuracy(metric_records),
      'figures': written,
  }
  summary['text'] = format_summary(summary)
  with open(os.path.join(out_dir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, 'summary.txt'), 'w', encoding='utf-8') as f:
    f.write(summary['text'])
  return summary


def _eval_accuracy(records: Sequence[dict[str, Any]], step: int | None = None) -> float | None:
  """The evaluation accuracy logged at ``step`` (default: the last one logged)."""
  evaluations = [r for r in records if 'eval_accuracy' in r and not r.get('summary')
                 and (step is None or r.get('step') == step)]
  return float(evaluations[-1]['eval_accuracy']) if evaluations else None


def _shape_text(shape: Sequence[int]) -> str:
  return 'x'.join(str(s) for s in shape)


def _bits_text(family: str, bits: int) -> str:
  return 'fp32' if family == 'none' else f'{family}:{bits}'


def format_summary(summary: dict[str, Any]) -> str:
  """The text of ``summary.txt``: a header, one line per layer, the totals."""
  lines = [
      f"run {summary['run_dir']}",
      f"model {summary['model']}, variant {summary['variant']}"
      + (f", method {summary['method']}" if summary['method'] else '')
      + f", checkpoint {summary['checkpoint']}",
      f"input {_shape_text(summary['input_shape'])}; {summary['images_inspected']} evaluation "
      'images inspected',
      'evaluation accuracy: ' + ', '.join(
          f'{label} {value:.4f}' for label, value in (
              (f"at the checkpoint (step {summary['checkpoint_step']})",
               summary['checkpoint_eval_accuracy']),
              ('last logged', summary['final_eval_accuracy'])) if value is not None)
      if summary['final_eval_accuracy'] is not None else 'evaluation accuracy: none logged',
      '',
      f"{'layer':<26} {'kernel':>14} {'output':>11} {'weights':>12} {'activations':>12} "
      f"{'MACs':>12} {'BOPs':>15} {'H(act)':>7} {'H(w)':>7}",
  ]
  for row in summary['layers']:
    entropy = lambda key: f'{row[key]:.3f}' if key in row else '-'
    lines.append(
        f"{row['name']:<26} {_shape_text(row['kernel_shape']):>14} "
        f"{_shape_text(row['output_shape']):>11} "
        f"{_bits_text(row['weight_quantizer'], row['weight_bits']):>12} "
        f"{_bits_text(row['activation_quantizer'], row['activation_bits']):>12} "
        f"{row['macs']:>12,d} {row['bops']:>15,d} {entropy('activation_entropy_bits'):>7} "
        f"{entropy('weight_entropy_bits'):>7}")
  size = summary['model_size']
  lines += [
      '',
      f"MACs per image: {summary['total_macs']:,d}",
      f"BOPs per image: {summary['total_bops']:,d} (float32 model: {summary['float_bops']:,d}; "
      f"ratio {summary['float_bops'] / max(summary['total_bops'], 1):.2f}x)",
      f"model size: {size['quantized_bytes']:,.0f} bytes at these bit-widths (quantized "
      'weights at their bits, every other value in float32; the export also stores '
      'per-channel scales and threshold tables), '
      f"{size['float32_bytes']:,d} bytes in float32 ({size['compression']:.2f}x smaller); "
      f"{size['quantized_weights']:,d} of {size['values']:,d} values quantized",
      'BOPs = MACs x weight bits x activation bits per layer (32 for a side without a '
      'quantizer); H = entropy of the level occupancy in bits (maximum: the bits).',
      f"figures: {', '.join(summary['figures']) or 'none'}",
  ]
  return '\n'.join(lines) + '\n'
