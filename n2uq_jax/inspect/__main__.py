"""``python -m n2uq_jax.inspect RUN_DIR --out DIR [options]``: writes the figures and
the summary of a run directory (see :mod:`n2uq_jax.inspect.report`) and prints the
summary. Bad arguments print one ``error:`` line and exit with status 2."""

from __future__ import annotations

import argparse
import sys

from n2uq_jax.inspect.report import inspect_run


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m n2uq_jax.inspect',
      description='Figures and a text summary of a trained run directory: thresholds over '
      'the quantizer inputs, level occupancy and entropy, training curves, bits per layer, '
      'model size and bit-operations.')
  parser.add_argument('run_dir', metavar='RUN_DIR',
                      help='a variant directory written by train.py, e.g. workdir/default/w2a2')
  parser.add_argument('--out', required=True, metavar='DIR', help='output directory')
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step (default: the best checkpoint, else the latest)')
  parser.add_argument('--batches', type=int, default=4,
                      help='evaluation batches the quantizer inputs come from (default 4)')
  parser.add_argument('--batch-size', type=int, default=None,
                      help="their size (default: the run's batch size, at most 256)")
  parser.add_argument('--samples', type=int, default=8192,
                      help='input values sampled per layer and batch for the histograms')
  parser.add_argument('--data-dir', default=None,
                      help="replaces the run's data_dir (data moved since training)")
  parser.add_argument('--layers', nargs='+', default=(), metavar='PATTERN',
                      help='fnmatch patterns of the layers drawn in thresholds.png '
                      "(default all), e.g. 'layer3.*'")
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    summary = inspect_run(args.run_dir, args.out, step=args.step, num_batches=args.batches,
                          batch_size=args.batch_size, samples=args.samples,
                          data_dir=args.data_dir, layers=args.layers)
  except ValueError as error:
    parser.error(str(error))
  print(summary['text'], end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())
