"""``python -m n2uq_jax.export RUN_DIR OUT_DIR [--step N|best] [--format onnx|qonnx|stablehlo]
[--layout NCHW|NHWC] [--no-onnx] [--overwrite]``: exports a variant run directory and
prints the size report."""

from __future__ import annotations

import argparse
import sys

from n2uq_jax.export.exporter import FORMAT_FILES, export_run, format_report


def _step(text: str):
  if text == 'best':
    return 'best'
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'--step must be an integer or "best", got {text!r}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m n2uq_jax.export', description=__doc__)
  parser.add_argument('run_dir', help='a variant run directory, e.g. workdir/default/w2a2')
  parser.add_argument('out_dir', help='where to write tables.safetensors, manifest.json and '
                      "the format's file")
  parser.add_argument('--step', type=_step, default=None,
                      help='checkpoint step, or "best" (default: the latest)')
  parser.add_argument('--format', choices=sorted(FORMAT_FILES), default='onnx',
                      help='the model file besides the tables: onnx (model.onnx, onnxruntime), '
                      'qonnx (model.qonnx.onnx, MultiThreshold nodes for FINN/hls4ml, batch 1), '
                      'stablehlo (model.stablehlo, jax.export for cpu/cuda/tpu, symbolic '
                      'batch); default onnx')
  parser.add_argument('--layout', choices=('NCHW', 'NHWC'), default='NCHW',
                      help='input layout of the qonnx file (default NCHW)')
  parser.add_argument('--no-onnx', action='store_true',
                      help="write the tables and manifest only (no format's file)")
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an export already in OUT_DIR (refused by default)')
  args = parser.parse_args(argv)
  try:
    report = export_run(args.run_dir, args.out_dir, step=args.step,
                        write_onnx=not args.no_onnx, overwrite=args.overwrite,
                        format=args.format, layout=args.layout)
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  source = report['manifest']['source']
  print(f'exported {report["manifest"]["model"]} (step {source["step"]}) to {args.out_dir}')
  print(format_report(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
