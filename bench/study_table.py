"""The CIFAR-10 study's tables (docs/REPRODUCTION.md), read from its run directories.

    python bench/study_table.py /runs/cifar10

reads the grid that ``bench/cifar10_study.sh`` and ``bench/device_study.sh`` write,

    RUN_ROOT/fp/fp/                                   the full-precision run (or seed<S>/fp/fp)
    RUN_ROOT/seed<S>/w2a2_<METHOD>[_qlr<MULT>]/<variant>/    one W2A2 run per seed and configuration

and prints, in Markdown:

1. per run: held-out top-1 at the end and at its best evaluation, the length, and the
   training time summed over the run's sessions (``train_seconds`` of each summary record:
   steps only). A run that has not finished says how far it got and counts nowhere else;
2. per configuration (method and quantizer learning-rate multiplier): the mean, the sample
   standard deviation (ddof=1) and the per-seed values of the final held-out top-1;
3. per N2UQ multiplier: the paired difference N2UQ - uniform at each seed both finished,
   its mean and a 95% t-interval over the paired differences (mean +- t_{0.975, n-1} x
   sample std / sqrt(n); the t quantile from scipy.stats);
4. per configuration: the drift budget ``sum_t lr_q(t)`` over the run's steps, from its
   ``config.json`` through the project's schedule (``n2uq_jax.train.optimizer.make_schedule``
   x ``quantizer_lr_multiplier``), and where the thresholds are learned (N2UQ
   activations) the measured threshold movement: per
   quantized layer, max_i |T_i / beta1 - T_i^0 / beta1^0| between the final checkpoint and
   the SPEC 2.1 initialisation (1/3, 1, 5/3 at 2 bits), as the maximum and the median over
   layers, averaged over seeds (``--layers`` prints every layer);
5. per configuration: the held-out top-1 after each epoch, the mean over its seeds.

Nothing is estimated: a configuration with one finished seed has no standard deviation, and
a pair needs both runs finished. A directory without that layout is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

import numpy as np
from scipy import stats

# The study's method tokens (configs/cifar10_resnet20.py) and what each one is.
METHOD_NAMES = {
    'n2uq': 'N2UQ',
    'uniform': 'fixed uniform [0, 2] + N2UQ weights',
    'lsq': 'LSQ',
    'dorefa': 'DoReFa',
    'pact': 'PACT + DoReFa weights',
    'n2uq_dorefa_weights': 'N2UQ thresholds + DoReFa weights',
    'dorefa_n2uq_weights': 'DoReFa activations + N2UQ weights',
}
LEARNED_THRESHOLDS = ('n2uq', 'n2uq_dorefa_weights')  # methods with N2UQ activations
DEFAULT_MULTIPLIER = 0.1  # configs/cifar10_resnet20.py's quantizer_lr_multiplier
LAYOUT = ('RUN_ROOT/seed<S>/w2a2_<METHOD>[_qlr<MULT>]/<variant>/metrics.jsonl (and '
          'RUN_ROOT/fp/fp), as bench/cifar10_study.sh writes it')
_RUN_NAME = re.compile(r'^w2a2_(?P<method>[a-z0-9_]+?)(?:_qlr(?P<multiplier>[0-9.eE+-]+))?$')
_SEED_DIR = re.compile(r'^seed(\d+)$')


class LayoutError(ValueError):
  """RUN_ROOT does not hold the study's layout."""


def _records(variant_dir: str) -> list[dict]:
  with open(os.path.join(variant_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def _config(variant_dir: str) -> dict:
  with open(os.path.join(variant_dir, 'config.json'), encoding='utf-8') as f:
    return json.load(f)


def run_row(variant_dir: str) -> dict:
  """What one run's ``metrics.jsonl`` and ``config.json`` say: ``finished``, ``step``,
  ``total_steps``, ``final`` and ``best`` held-out top-1 (with ``best_at``), ``length``,
  ``train_seconds`` (summed over the sessions that ended), ``curve`` ({epoch: top-1} of
  the evaluations at epoch ends; by step for a fixed step count)."""
  config = _config(variant_dir)
  records = _records(variant_dir)
  summaries = [r for r in records if r.get('summary')]
  evals = [r for r in records if 'eval_accuracy' in r]
  last_step = max((r['step'] for r in records if 'step' in r), default=0)
  total_steps = summaries[-1]['total_steps'] if summaries else None
  finished = bool(summaries) and summaries[-1]['step'] == total_steps and not summaries[-1].get(
      'preempted')
  best = max(evals, key=lambda r: r['eval_accuracy']) if evals else None
  by_epochs = config.get('num_train_steps', -1) <= 0  # else a fixed step count
  steps_per_epoch = total_steps // config['num_epochs'] if by_epochs and total_steps else None
  if steps_per_epoch:
    curve = {r['step'] // steps_per_epoch: r['eval_accuracy'] for r in evals
             if r['step'] % steps_per_epoch == 0}
  else:
    curve = {r['step']: r['eval_accuracy'] for r in evals}
  if best is None:
    best_at = None
  elif steps_per_epoch:
    best_at = f"epoch {best['step'] / steps_per_epoch:.0f}"
  else:
    best_at = f"step {best['step']}"
  return {
      'length': (f"{config['num_epochs']} epochs" if by_epochs else
                 f"{config['num_train_steps']} steps"),
      'finished': finished,
      'step': last_step,
      'total_steps': total_steps,
      'final': evals[-1]['eval_accuracy'] if finished and evals else None,
      'best': best and best['eval_accuracy'],
      'best_at': best_at,
      'train_seconds': sum(r['train_seconds'] for r in summaries),
      'curve': curve,
  }


def _variant_dir(run_dir: str) -> str | None:
  variants = [d for d in sorted(os.listdir(run_dir))
              if os.path.isfile(os.path.join(run_dir, d, 'metrics.jsonl'))]
  return os.path.join(run_dir, variants[0]) if len(variants) == 1 else None


def find_runs(run_root: str) -> tuple[str | None, dict[tuple[str, float], dict[int, str]]]:
  """(the FP variant directory or None, {(method, multiplier): {seed: variant directory}}).

  Raises:
    LayoutError: no W2A2 run directory under ``run_root`` (see :data:`LAYOUT`).
  """
  grid: dict[tuple[str, float], dict[int, str]] = {}
  fp_dirs = [os.path.join(run_root, 'fp')]
  for seed_name in sorted(os.listdir(run_root)) if os.path.isdir(run_root) else []:
    match = _SEED_DIR.match(seed_name)
    seed_dir = os.path.join(run_root, seed_name)
    if not match or not os.path.isdir(seed_dir):
      continue
    fp_dirs.append(os.path.join(seed_dir, 'fp'))
    for run_name in sorted(os.listdir(seed_dir)):
      name = _RUN_NAME.match(run_name)
      run_dir = os.path.join(seed_dir, run_name)
      if not name or not os.path.isdir(run_dir) or _variant_dir(run_dir) is None:
        continue
      multiplier = float(name['multiplier'] or DEFAULT_MULTIPLIER)
      grid.setdefault((name['method'], multiplier), {})[int(match[1])] = _variant_dir(run_dir)
  if not grid:
    raise LayoutError(f'{run_root!r} holds no W2A2 run; expected {LAYOUT}')
  fp = next((_variant_dir(d) for d in fp_dirs if os.path.isdir(d) and _variant_dir(d)), None)
  return fp, grid


def _order(key: tuple[str, float]) -> tuple[int, float]:
  methods = list(METHOD_NAMES)
  return (methods.index(key[0]) if key[0] in methods else len(methods), key[1])


def learns_quantizers(method: str) -> bool:
  """Whether the method's activation or weight quantizer has learned parameters (for
  the others, such as the fixed uniform control and DoReFa, the quantizer learning rate
  moves nothing)."""
  from n2uq_jax.quant import families  # pylint: disable=g-import-not-at-top
  activation, weight = families.METHODS[method]
  return bool(families.activation_family(activation).param_names or
              families.weight_family(weight).param_names)


def label(key: tuple[str, float]) -> str:
  method, multiplier = key
  name = METHOD_NAMES.get(method, method)
  return f'{name}, quantizer lr x {multiplier:g}' if learns_quantizers(method) else name


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the two-sided t-interval mean +- t x s / sqrt(n) with the sample
  standard deviation s (ddof=1) and t the (1 + confidence) / 2 quantile of Student's t
  with n - 1 degrees of freedom. Needs n >= 2."""
  values = np.asarray(values, np.float64)
  if values.size < 2:
    raise ValueError(f'a t-interval needs at least 2 values, got {values.size}')
  mean = float(values.mean())
  half = float(stats.t.ppf((1 + confidence) / 2, values.size - 1)) * float(
      values.std(ddof=1)) / math.sqrt(values.size)
  return mean, mean - half, mean + half


def drift_budget(variant_dir: str, total_steps: int) -> float:
  """``sum_{t < total_steps} lr_q(t)``: the quantizer learning rate of the run's
  ``config.json`` (``make_schedule`` x ``quantizer_lr_multiplier``) summed over its steps."""
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from n2uq_jax.train import optimizer  # pylint: disable=g-import-not-at-top

  config = ConfigDict(_config(variant_dir))
  if config.num_train_steps > 0:  # epochs are the data's: count its training examples
    from n2uq_jax.data import sharding, sources  # pylint: disable=g-import-not-at-top
    train, _ = sources.open_splits(config.data)
    steps_per_epoch = sharding.train_steps_per_epoch(len(train), config.global_batch_size, 1)
  else:
    steps_per_epoch = total_steps // config.num_epochs
  schedule = optimizer.make_schedule(config, steps_per_epoch, total_steps)
  rates = np.asarray(schedule(np.arange(total_steps)), np.float64)
  return float(config.quantizer_lr_multiplier) * float(rates.sum())


def threshold_movement(variant_dir: str) -> dict[str, float]:
  """{layer: max_i |T_i / beta1 - T_i^0 / beta1^0|} over the N2UQ activation quantizers of
  the run's latest checkpoint, against their SPEC 2.1 initialisation ({} for the other
  methods)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from n2uq_jax import nn  # pylint: disable=g-import-not-at-top
  from n2uq_jax.inspect import levels  # pylint: disable=g-import-not-at-top
  from n2uq_jax.train import load_model  # pylint: disable=g-import-not-at-top

  model = load_model(variant_dir)
  movement = {}
  for path, module in nnx.iter_graph(model):
    if isinstance(module, nn.N2UQActivation):
      change = levels.decision_thresholds(module) - levels.initial_thresholds(module)
      layer = '.'.join(str(p) for p in path).removesuffix('.input_quantizer')
      movement[layer] = float(np.max(np.abs(np.asarray(change))))
  return movement


def _pct(value: float) -> str:
  return f'{100 * value:.2f}'


def runs_table(fp: str | None, grid) -> list[str]:
  lines = ['| run | seed | length | top-1 held out (final) | best (at) | training time |',
           '|---|---:|---:|---:|---:|---:|']
  entries = ([('full precision (cross-entropy)', '', fp)] if fp else []) + [
      (label(key), str(seed), grid[key][seed]) for key in sorted(grid, key=_order)
      for seed in sorted(grid[key])]
  for name, seed, variant_dir in entries:
    row = run_row(variant_dir)
    final = (_pct(row['final']) if row['final'] is not None else
             f"not finished (step {row['step']})")
    best = f"{_pct(row['best'])} ({row['best_at']})" if row['best_at'] else ''
    # Only a session that ends writes its time (a killed one does not), so an unfinished
    # run shows the time of its stopped sessions, if any.
    time = (f"{row['train_seconds']:,.0f} s" if row['final'] is not None else
            f"{row['train_seconds']:,.0f} s in stopped sessions" if row['train_seconds'] else '-')
    lines.append(f"| {name} | {seed} | {row['length']} | {final} | {best} | {time} |")
  return lines


def finals(grid) -> dict[tuple[str, float], dict[int, float]]:
  """{configuration: {seed: final held-out top-1}} of the finished runs."""
  out = {}
  for key, seeds in grid.items():
    rows = {seed: run_row(d) for seed, d in seeds.items()}
    out[key] = {seed: row['final'] for seed, row in rows.items() if row['final'] is not None}
  return out


def summary_table(final_by_key) -> list[str]:
  lines = ['| configuration | seeds | mean | std (sample, ddof=1) | per seed |',
           '|---|---:|---:|---:|---|']
  for key in sorted(final_by_key, key=_order):
    values = final_by_key[key]
    if not values:
      continue
    array = np.asarray([values[s] for s in sorted(values)], np.float64)
    std = _pct(array.std(ddof=1)) if array.size > 1 else 'n/a'
    per_seed = ', '.join(f'{s}: {_pct(values[s])}' for s in sorted(values))
    lines.append(f'| {label(key)} | {array.size} | {_pct(array.mean())} | {std} | {per_seed} |')
  return lines


def paired_table(final_by_key) -> list[str]:
  lines = ['| N2UQ - uniform | pairs | per seed | mean | 95% t-interval |',
           '|---|---:|---|---:|---|']
  uniform = {}
  for (method, _), values in final_by_key.items():
    if method == 'uniform':
      uniform.update(values)
  for key in sorted((k for k in final_by_key if k[0] == 'n2uq'), key=_order):
    seeds = sorted(set(final_by_key[key]) & set(uniform))
    if not seeds:
      continue
    diffs = [final_by_key[key][s] - uniform[s] for s in seeds]
    per_seed = ', '.join(f'{s}: {100 * d:+.2f}' for s, d in zip(seeds, diffs))
    if len(diffs) > 1:
      mean, low, high = t_interval(diffs)
      interval = f'[{100 * low:+.2f}, {100 * high:+.2f}]'
    else:
      mean, interval = diffs[0], 'n/a (one pair)'
    lines.append(f'| quantizer lr x {key[1]:g} | {len(diffs)} | {per_seed} | '
                 f'{100 * mean:+.2f} | {interval} |')
  return lines


def drift_table(grid, *, every_layer: bool = False) -> list[str]:
  lines = ['| configuration | steps | drift budget sum_t lr_q(t) | threshold movement: max '
           'over layers | median over layers |', '|---|---:|---:|---:|---:|']
  layer_lines = []
  for key in sorted(grid, key=_order):
    done = {s: d for s, d in grid[key].items() if run_row(d)['finished']}
    if not done:
      continue
    steps = {run_row(d)['total_steps'] for d in done.values()}
    if learns_quantizers(key[0]):
      budgets = {round(drift_budget(d, run_row(d)['total_steps']), 12) for d in done.values()}
      budget = ', '.join(f'{b:.4g}' for b in sorted(budgets))
    else:
      budget = 'none (nothing learned)'
    moved = ({s: threshold_movement(d) for s, d in done.items()}
             if key[0] in LEARNED_THRESHOLDS else {})
    if moved:
      worst = np.mean([max(m.values()) for m in moved.values()])
      median = np.mean([np.median(list(m.values())) for m in moved.values()])
      movement = (f'{worst:.4f}', f'{median:.4f}')
      for seed, m in sorted(moved.items()):
        layer_lines.extend(f'| {label(key)} | {seed} | {layer} | {value:.4f} |'
                           for layer, value in m.items())
    else:
      movement = ('', '')
    lines.append(f"| {label(key)} | {', '.join(str(s) for s in sorted(steps))} | {budget} | "
                 f'{movement[0]} | {movement[1]} |')
  if every_layer and layer_lines:
    lines += ['', '| configuration | seed | layer | max_i abs(T_i / beta1 - initial) |',
              '|---|---:|---|---:|'] + layer_lines
  return lines


def curves_table(grid) -> list[str]:
  curves = {}
  for key in sorted(grid, key=_order):
    rows = [run_row(d) for d in grid[key].values()]
    rows = [r for r in rows if r['finished']]
    if rows:
      points = sorted(set.intersection(*(set(r['curve']) for r in rows)))
      curves[key] = {p: float(np.mean([r['curve'][p] for r in rows])) for p in points}
  points = sorted(set().union(*(set(c) for c in curves.values()))) if curves else []
  lines = ['| configuration | ' + ' | '.join(f'epoch {p}' for p in points) + ' |',
           '|---|' + '---:|' * len(points)]
  for key, curve in curves.items():
    cells = [_pct(curve[p]) if p in curve else '' for p in points]
    lines.append(f'| {label(key)} | ' + ' | '.join(cells) + ' |')
  return lines


def report(run_root: str, *, every_layer: bool = False) -> str:
  """Every table of the module docstring, as Markdown."""
  fp, grid = find_runs(run_root)
  final_by_key = finals(grid)
  sections = [
      ('Runs', runs_table(fp, grid)),
      ('Final held-out top-1 per configuration', summary_table(final_by_key)),
      ('Paired difference N2UQ - uniform (same seed)', paired_table(final_by_key)),
      ('Drift budget and threshold movement (mean over finished seeds)',
       drift_table(grid, every_layer=every_layer)),
      ('Held-out top-1 by epoch (mean over finished seeds)', curves_table(grid)),
  ]
  return '\n\n'.join(f'### {title}\n\n' + '\n'.join(lines) for title, lines in sections)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('run_root', help='the RUN_ROOT of bench/cifar10_study.sh')
  parser.add_argument('--layers', action='store_true',
                      help='also print the threshold movement of every layer of every run')
  args = parser.parse_args(argv)
  try:
    print(report(args.run_root, every_layer=args.layers))
  except LayoutError as error:
    print(f'study_table.py: error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
