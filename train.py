"""Trains N2UQ models: ``python train.py [--config=configs/FILE.py[:ARG]] [--config.FIELD=VALUE]
[--workdir=DIR] [--verbosity=1]``.

With no flags it runs ``configs/default.py``: a full-precision small CNN on the
embedded digits, then its W2A2 N2UQ version, in ``./workdir/default/{fp,w2a2}``, and
prints both accuracies.

* ``--config=configs/imagenet_resnet18.py:w2a2,dorefa``: the config file and its
  argument (variants and method; see ``n2uq_jax/train/config_lib.py``).
* ``--config.num_train_steps=100``: any field (a positive ``num_train_steps``
  overrides ``num_epochs``).
* ``--workdir``: default ``./workdir/<config file name>``. One sub-directory per
  variant. Running again on a workdir resumes from its latest checkpoint; a workdir
  that holds a different config is refused (use another workdir, or start a new one
  from it with ``--config.init_checkpoint=OLD_WORKDIR/VARIANT``).
* A bad flag, config value, dataset or checkpoint prints one ``train.py: error: ...``
  message and exits with status 2; ``--verbosity=1`` (or ``-v 1``) shows the traceback.
  A run that diverges (a NaN/inf step with ``nonfinite_policy='stop'``) prints one such
  line naming the step and exits with status 1.
* SIGTERM (a preemption notice) or Ctrl-C checkpoints the current step and exits with
  status 0 after a line naming the step; the same command resumes from there.
"""

from __future__ import annotations

import os
import re
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                               'default.py')
_USAGE_ERROR_STATUS = 2
_DIVERGED_STATUS = 1


def define_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--config`` (which reads its ``--config.FIELD`` overrides from ``argv``)
  and ``--workdir`` in ``flag_values``; parse ``argv`` with ``flag_values(argv)``."""
  config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG,
      'Training config file, with an optional ":ARG" (e.g. configs/imagenet_resnet18.py:w2a2).',
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Run directory (default: ./workdir/<config file name>).',
                      flag_values=flag_values)


def _default_workdir() -> str:
  filename = flags.FLAGS['config'].config_filename
  stem = os.path.splitext(os.path.basename(filename.split(':')[0]))[0]
  return os.path.join('.', 'workdir', stem)


def _wants_traceback(argv: list[str]) -> bool:
  """Whether ``--verbosity``/``-v`` asks for DEBUG (>= 1), read from the raw arguments
  because an error can come before the flags are parsed."""
  level = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(r'--?(?:verbosity|v)(?:=(-?\d+))?', arg)
    if match:
      value = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else '')
      level = int(value) if re.fullmatch(r'-?\d+', value) else level
  return level is not None and level >= 1


def _unknown_field_message(field: str, chain: list[BaseException], argv: list[str]) -> str:
  """``unknown config field data.sourc; did you mean data.source?``: the dotted name as
  given on the command line, and the nearest field of its ConfigDict when one is close
  (ml_collections finds it with difflib and words it in an outer error of ``chain``)."""
  dotted = next((m.group(1) for m in (re.match(r'--config\.([\w.]+)=?', a) for a in argv)
                 if m and m.group(1).rsplit('.', 1)[-1] == field), field)
  for link in chain:
    match = re.search(r'Did you mean "(\w+)" instead of', str(link))
    if match:
      nearest = '.'.join(dotted.split('.')[:-1] + [match.group(1)])
      return f'unknown config field {dotted}; did you mean {nearest}?'
  return f'unknown config field {dotted}'


def _root_message(error: BaseException, argv: list[str]) -> str:
  """One line for the person at the terminal: a flag error as absl words it, but for
  an error raised inside a config file (which absl wraps with its traceback) the
  innermost message, and for an unknown ``--config.FIELD`` the field's name with the
  nearest valid one."""
  chain = [error]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  innermost = chain[-1]
  if isinstance(innermost, (KeyError, AttributeError)):  # ml_collections: unknown field
    return _unknown_field_message(str(innermost).strip(chr(34) + chr(39)), chain, argv)
  if isinstance(innermost, OSError) and 'Failed loading config file' in str(innermost):
    attempted = re.findall(r'\[Errno \d+\] ([^\n]*)', str(innermost))
    return 'cannot load the config file: ' + ('; '.join(attempted) or str(innermost))
  if isinstance(error, flags.Error) and 'Traceback' not in str(error):
    return str(error)
  return str(innermost)


def _fail(error: BaseException, argv: list[str], status: int = _USAGE_ERROR_STATUS) -> None:
  if _wants_traceback(argv):
    raise error
  print(f'train.py: error: {_root_message(error, argv)}', file=sys.stderr, flush=True)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  from n2uq_jax.train import loop, step  # pylint: disable=g-import-not-at-top
  try:
    config = flags.FLAGS.config  # loads the config file
    # Multi-host setup must precede every other JAX call.
    loop.initialize_distributed(config)
    import jax  # pylint: disable=g-import-not-at-top
    workdir = flags.FLAGS.workdir or _default_workdir()
    logging.info('workdir %s, %d processes, %d devices', workdir, jax.process_count(),
                 jax.device_count())
    start = time.perf_counter()
    summaries = loop.run(config, workdir)
  except step.DivergenceError as error:
    _fail(error, sys.argv, _DIVERGED_STATUS)
  except (ValueError, FileNotFoundError, NotADirectoryError) as error:
    _fail(error, sys.argv)
  except OSError as error:
    if 'Failed loading config file' not in str(error):
      raise
    _fail(error, sys.argv)
  total = time.perf_counter() - start
  if jax.process_index() == 0:
    fmt = lambda v: 'n/a' if v is None else f'{v:.4f}'
    for s in summaries:
      print(f"[{s['variant']}] {s['model']}: eval accuracy {fmt(s['final_eval_accuracy'])} "
            f"(best {fmt(s['best_eval_accuracy'])}) after {s['step']} steps, "
            + ('already finished, nothing to train' if s.get('already_finished') else
               f"{s['train_seconds']:.1f} s training") + f"; {s['workdir']}", flush=True)
    print('summary: ' + ', '.join(f"{s['variant']} {fmt(s['final_eval_accuracy'])}"
                                  for s in summaries) + f'; total {total:.1f} s', flush=True)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _fail(error, argv)


def cli(argv: list[str] | None = None) -> None:
  """The command line: defines the flags for ``argv`` and runs :func:`main`."""
  argv = list(sys.argv if argv is None else argv)
  try:
    define_flags(argv)
  except (KeyError, AttributeError, ValueError, flags.Error) as error:  # an unknown field
    _fail(error, argv)
  app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == '__main__':
  cli()
