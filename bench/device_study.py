"""The CIFAR-10 study grid in one process: the FP run, then every configuration at every
seed, run after run through ``n2uq_jax.train.run`` (what ``train.py`` calls).

    python bench/device_study.py --data-dir /data/cifar10 --run-root /runs/c10_gpu

One process keeps what many runs share: the CIFAR-10 JPEGs are decoded once into memory
(data source ``memory``; with ``--cache-dir`` also kept on disk for the next process), and
JAX's persistent compilation cache (``--compilation-cache``) serves every compilation
after the first of its kind, so runs that differ only in seed compile nothing new.

It writes the layout of ``bench/cifar10_study.sh``, so ``bench/study_table.py RUN_ROOT``
reads both: ``RUN_ROOT/fp/fp`` and ``RUN_ROOT/seed<S>/w2a2_<METHOD>[_qlr<MULT>]/<variant>``,
with the same recipe (held-out 10% at split seed 0, KD from the FP run, FP seed 0). A
finished run is skipped and a stopped one resumes when the command is run again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from n2uq_jax.train import config_lib, run

DEFAULT_CONFIGS = 'n2uq@0.1 uniform n2uq@1 n2uq@10 dorefa lsq@0.1'


def parse_entry(entry: str) -> tuple[str, str | None]:
  """``METHOD`` or ``METHOD@MULTIPLIER`` -> (method, multiplier text or None).

  Raises:
    ValueError: an unknown method or a multiplier that is not a positive number.
  """
  method, _, multiplier = entry.partition('@')
  if method not in config_lib.METHODS:
    raise ValueError(f'configuration {entry!r}: method {method!r} is not one of '
                     f'{config_lib.METHODS}')
  if multiplier:
    try:
      valid = float(multiplier) > 0
    except ValueError:
      valid = False
    if not valid:
      raise ValueError(f'configuration {entry!r}: multiplier {multiplier!r} must be a '
                       'positive number')
  return method, multiplier or None


def run_name(method: str, multiplier: str | None) -> str:
  """The run directory name of ``bench/cifar10_study.sh``."""
  return f'w2a2_{method}' + (f'_qlr{multiplier}' if multiplier else '')


def study_config(arg: str, args: argparse.Namespace):
  """``configs/cifar10_resnet20.py:ARG`` with the study's data and runtime settings."""
  config = config_lib.cifar10_config(arg)
  config.data.source = 'memory'
  config.data.data_dir = args.data_dir
  config.data.cache_dir = args.cache_dir
  config.data.validation_fraction = 0.1
  config.data.worker_count = 0
  config.data.read_threads = args.read_threads
  config.data.prefetch_buffer_size = max(2, args.read_threads)
  config.progress_bar = False
  config.tensorboard = False
  config.checkpoint_every_steps = args.checkpoint_every_steps
  config.compilation_cache_dir = args.compilation_cache
  if args.batch_size:
    config.global_batch_size = args.batch_size
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data-dir', required=True, help='the folder holding train/<class>/')
  parser.add_argument('--run-root', required=True, help='the folder for the run directories')
  parser.add_argument('--seeds', default='0 1 2', help='W2A2 seeds, space-separated')
  parser.add_argument('--configs', default=DEFAULT_CONFIGS,
                      help='METHOD or METHOD@MULTIPLIER entries, space-separated')
  parser.add_argument('--fp-epochs', type=int, default=8)
  parser.add_argument('--q-epochs', type=int, default=4)
  parser.add_argument('--batch-size', type=int, default=0,
                      help='global batch size (0: the config\'s 128)')
  parser.add_argument('--read-threads', type=int, default=4,
                      help='threads transforming batches in this process')
  parser.add_argument('--checkpoint-every-steps', type=int, default=1000)
  parser.add_argument('--cache-dir', default='', help='data.cache_dir for the decoded images')
  parser.add_argument('--compilation-cache', default='~/.cache/n2uq_jax/jax',
                      help='JAX persistent compilation cache directory')
  args = parser.parse_args(argv)
  try:
    seeds = [int(s) for s in args.seeds.split()]
    entries = [parse_entry(e) for e in args.configs.split()]
  except ValueError as error:
    parser.error(str(error))

  start = time.perf_counter()

  def say(name: str, summary: dict) -> bool:
    """Prints how a run ended; False when a signal stopped it (run again to resume)."""
    accuracy = summary['final_eval_accuracy']
    ended = (f'stopped by {summary["preempted"]} at step {summary["step"]}'
             if summary['preempted'] else
             f'{accuracy:.4f}' if accuracy is not None else f'step {summary["step"]}')
    print(f'=== {name}: {ended} ({time.perf_counter() - start:.0f} s)', flush=True)
    return not summary['preempted']

  fp_config = study_config('fp', args)
  fp_config.seed, fp_config.num_epochs = 0, args.fp_epochs
  fp_workdir = os.path.join(args.run_root, 'fp')
  if not say('fp', run(fp_config, fp_workdir)[0]):
    return 0
  fp_run = os.path.join(fp_workdir, 'fp')
  for seed in seeds:
    for method, multiplier in entries:
      config = study_config(f'w2a2,{method}', args)
      config.seed, config.num_epochs = seed, args.q_epochs
      config.init_checkpoint = config.teacher_checkpoint = fp_run
      if multiplier:
        config.quantizer_lr_multiplier = float(multiplier)
      name = run_name(method, multiplier)
      if not say(f'seed {seed} {name}',
                 run(config, os.path.join(args.run_root, f'seed{seed}', name))[0]):
        return 0
  print(f'=== grid done in {time.perf_counter() - start:.0f} s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
