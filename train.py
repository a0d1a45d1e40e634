"""Trains N2UQ models: ``python train.py [--config=configs/FILE.py[:ARG]] [--config.FIELD=VALUE]
[--workdir=DIR]``.

With no flags it runs ``configs/default.py``: a full-precision small CNN on the
embedded digits, then its W2A2 N2UQ version, in ``./workdir/default/{fp,w2a2}``, and
prints both accuracies.

* ``--config=configs/imagenet_resnet18.py:w2a2,dorefa``: the config file and its
  argument (variants and method; see ``n2uq_jax/train/config_lib.py``).
* ``--config.num_train_steps=100``: any field (a positive ``num_train_steps``
  overrides ``num_epochs``).
* ``--workdir``: default ``./workdir/<config file name>``. One sub-directory per
  variant. Running again on a workdir resumes from its latest checkpoint; a workdir
  that holds a different config is refused (use another workdir or delete it).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'default.py'),
    'Training config file, with an optional ":ARG" (e.g. configs/imagenet_resnet18.py:w2a2).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Run directory (default: ./workdir/<config file name>).')


def _default_workdir() -> str:
  filename = flags.FLAGS['config'].config_filename
  stem = os.path.splitext(os.path.basename(filename.split(':')[0]))[0]
  return os.path.join('.', 'workdir', stem)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  from n2uq_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  # Multi-host setup must precede every other JAX call.
  loop.initialize_distributed(config)
  import jax  # pylint: disable=g-import-not-at-top
  workdir = _WORKDIR.value or _default_workdir()
  logging.info('workdir %s, %d processes, %d devices', workdir, jax.process_count(),
               jax.device_count())
  start = time.perf_counter()
  summaries = loop.run(config, workdir)
  total = time.perf_counter() - start
  if jax.process_index() == 0:
    fmt = lambda v: 'n/a' if v is None else f'{v:.4f}'
    for s in summaries:
      print(f"[{s['variant']}] {s['model']}: eval accuracy {fmt(s['final_eval_accuracy'])} "
            f"(best {fmt(s['best_eval_accuracy'])}) after {s['step']} steps, "
            f"{s['train_seconds']:.1f} s training; {s['workdir']}", flush=True)
    print('summary: ' + ', '.join(f"{s['variant']} {fmt(s['final_eval_accuracy'])}"
                                  for s in summaries) + f'; total {total:.1f} s', flush=True)

if __name__ == '__main__':
  sys.exit(app.run(main))
