"""The results table of docs/REPRODUCTION.md, read from the study's run directories.

    python bench/study_table.py /runs/cifar10/seed0

reads every ``<name>/<variant>/metrics.jsonl`` under the seed directory that
``bench/cifar10_study.sh`` fills (``fp/fp``, ``w2a2_dorefa/w2a2``, ...) and prints one
Markdown row per run: held-out top-1 at the end and at its best evaluation (with the
epoch), the epochs, and the training time summed over the run's sessions (the
``train_seconds`` of each summary record: steps only, evaluations and checkpoint writes
excluded). A run that has not finished says how far it got. Nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# The study's method tokens (configs/cifar10_resnet20.py) and the row each one is.
ROW_NAMES = {
    'fp': 'full precision (cross-entropy)',
    'n2uq': 'W2A2 N2UQ',
    'dorefa': 'W2A2 DoReFa',
    'n2uq_dorefa_weights': 'W2A2 N2UQ thresholds + DoReFa weights',
    'lsq': 'W2A2 LSQ',
    'pact': 'W2A2 PACT + DoReFa weights',
    'dorefa_n2uq_weights': 'W2A2 DoReFa activations + N2UQ weights',
    'uniform': 'W2A2 fixed uniform activations on [0, 2] + N2UQ weights',
}


def _records(variant_dir: str) -> list[dict]:
  with open(os.path.join(variant_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def run_row(variant_dir: str) -> dict:
  """What one run's ``metrics.jsonl`` and ``config.json`` say (see the module docstring);
  ``train_seconds`` counts the sessions that ended (each writes a summary record)."""
  with open(os.path.join(variant_dir, 'config.json'), encoding='utf-8') as f:
    config = json.load(f)
  records = _records(variant_dir)
  summaries = [r for r in records if r.get('summary')]
  evals = [r for r in records if 'eval_accuracy' in r]
  last_step = max((r['step'] for r in records if 'step' in r), default=0)
  total_steps = summaries[-1]['total_steps'] if summaries else None
  finished = bool(summaries) and summaries[-1]['step'] == total_steps and not summaries[-1].get(
      'preempted')
  best = max(evals, key=lambda r: r['eval_accuracy']) if evals else None
  by_epochs = config.get('num_train_steps', -1) <= 0  # else a fixed step count
  if best is None:
    best_at = None
  elif by_epochs and total_steps:
    best_at = f"epoch {best['step'] / (total_steps / config['num_epochs']):.0f}"
  else:
    best_at = f"step {best['step']}"
  return {
      'length': (f"{config['num_epochs']} epochs" if by_epochs else
                 f"{config['num_train_steps']} steps"),
      'finished': finished,
      'step': last_step,
      'final': evals[-1]['eval_accuracy'] if finished and evals else None,
      'best': best and best['eval_accuracy'],
      'best_at': best_at,
      'train_seconds': sum(r['train_seconds'] for r in summaries),
      'sessions': len(summaries),
  }


def _variant_dir(run_dir: str) -> str | None:
  variants = [d for d in sorted(os.listdir(run_dir))
              if os.path.isfile(os.path.join(run_dir, d, 'metrics.jsonl'))]
  return os.path.join(run_dir, variants[0]) if len(variants) == 1 else None


def table(seed_dir: str) -> str:
  """The Markdown table for the runs under ``seed_dir``, in ``ROW_NAMES`` order."""
  lines = ['| run | length | top-1 held out (final) | best (at) | training time |',
           '|---|---:|---:|---:|---:|']
  for token, label in ROW_NAMES.items():
    run_dir = os.path.join(seed_dir, token if token == 'fp' else f'w2a2_{token}')
    variant_dir = _variant_dir(run_dir) if os.path.isdir(run_dir) else None
    if variant_dir is None:
      continue
    row = run_row(variant_dir)
    final = (f"{100 * row['final']:.2f}" if row['final'] is not None else
             f"not finished (step {row['step']})")
    best = f"{100 * row['best']:.2f} ({row['best_at']})" if row['best_at'] else ''

    lines.append(f"| {label} | {row['length']} | {final} | {best} | "
                 f"{row['train_seconds']:,.0f} s |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('seed_dir', help='RUN_ROOT/seed<N> of bench/cifar10_study.sh')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.seed_dir):
    parser.error(f'{args.seed_dir!r} is not a directory')
  print(table(args.seed_dir))
  return 0


if __name__ == '__main__':
  sys.exit(main())
