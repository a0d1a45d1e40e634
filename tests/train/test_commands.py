"""Every documented ``python train.py`` command, through the real flag parser (absl +
``ml_collections.config_flags``), and the ones that can run here run for two steps.

The commands are read from README.md and from the docstrings of ``configs/*.py``; their
paths are replaced by temporary ones (``/data/cifar10`` by a folder of real CIFAR-10
JPEGs, or generated ones without the tarball).
"""

import ast
import glob
import os
import re
import shlex
import subprocess
import sys
import tarfile

import numpy as np
import PIL.Image
import pytest
from absl import flags
from flax import nnx

import n2uq_jax.train as n2uq_train
from n2uq_jax.interop import checkpoints as interop_checkpoints
from n2uq_jax.train import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR_TARBALL = os.environ.get('N2UQ_CIFAR10_TARBALL', os.path.join(
    os.path.dirname(ROOT), 'shared', 'datasets', 'cifar10', 'train.tar.gz'))
PATH_FLAGS = ('--workdir', '--config.data.data_dir', '--config.init_checkpoint',
              '--config.teacher_checkpoint')
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))

sys.path.insert(0, ROOT)
import train  # pylint: disable=wrong-import-position


def _commands_in(text: str) -> list[str]:
  """The ``python train.py ...`` lines of ``text``, continuation lines joined."""
  joined = re.sub(r'\\\n\s*', ' ', text)
  commands = []
  for line in joined.splitlines():
    line = line.strip()
    if line.startswith('python train.py'):
      commands.append(' '.join(shlex.split(line, comments=True)))
  return commands


def documented_commands() -> list[tuple[str, str]]:
  """``(where, command)`` for every command of README.md and the config docstrings."""
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    found = [('README.md', c) for c in _commands_in(f.read())]
  for path in CONFIG_FILES:
    with open(path, encoding='utf-8') as f:
      docstring = ast.get_docstring(ast.parse(f.read())) or ''
    found += [(os.path.relpath(path, ROOT), c) for c in _commands_in(docstring)]
  return found


COMMANDS = documented_commands()


def test_the_documentation_shows_the_commands_users_need():
  commands = [c for _, c in COMMANDS]
  assert 'python train.py' in commands
  assert any('cifar10_resnet20.py' in c and '--config.data.source=folder' in c and
             '--config.data.validation_fraction=0.1' in c for c in commands)
  assert any('imagenet_resnet18.py' in c and '--config.data.data_dir=' in c for c in commands)
  # every config file shows at least one command
  for path in CONFIG_FILES:
    assert any(where == os.path.relpath(path, ROOT) for where, _ in COMMANDS), path


def _substitute(command: str, paths: dict[str, str], tmp_path) -> list[str]:
  """argv of ``command`` with each path flag's value replaced: by ``paths[value]``
  when given, else by a fresh path under ``tmp_path``."""
  argv = shlex.split(command)[1:]  # drop "python"
  out = []
  for arg in argv:
    name, sep, value = arg.partition('=')
    if sep and name in PATH_FLAGS:
      prefix, path = '', value
      if interop_checkpoints.parse(value):  # torchvision:PATH keeps its prefix
        fmt, path = interop_checkpoints.parse(value)
        prefix = fmt + ':'
      value = prefix + paths.get(path, str(tmp_path / re.sub(r'[^A-Za-z0-9_.]', '_', path)))
    out.append(f'{name}{sep}{value}' if sep else arg)
  return out


def _parse(argv: list[str]) -> flags.FlagValues:
  flag_values = flags.FlagValues()
  train.define_flags(argv, flag_values)
  flag_values(argv)
  return flag_values


@pytest.mark.parametrize('where,command', COMMANDS, ids=[f'{w}:{c}' for w, c in COMMANDS])
def test_documented_command_parses_and_validates(where, command, tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)  # the commands name config files relative to the repository
  argv = _substitute(command, {}, tmp_path)
  parsed = _parse(argv)
  config = parsed.config
  config_lib.validate(config)
  for arg in argv[1:]:
    name, _, value = arg.partition('=')
    if name.startswith('--config.'):
      field = name[len('--config.'):]
      got = config
      for part in field.split('.'):
        got = got[part]
      assert str(got) == value, (where, field, got, value)
    elif name == '--workdir':
      assert parsed.workdir == value


def _changed(value):
  """A different value of the same type, to override a field with."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 3
  if isinstance(value, float):
    return value * 2 + 0.5
  if isinstance(value, str):
    return value + '_changed' if value else 'changed'
  if isinstance(value, tuple):
    return tuple(_changed(v) for v in value)
  raise AssertionError(f'no override for a {type(value).__name__} field ({value!r})')


def _leaves(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def _flag_text(value) -> str:
  if isinstance(value, tuple):
    return '(' + ','.join(repr(v) for v in value) + ',)'
  return str(value)


@pytest.mark.parametrize('config_file', CONFIG_FILES, ids=os.path.basename)
def test_every_field_overrides_from_the_command_line(config_file):
  base = _parse(['train.py', f'--config={config_file}']).config
  leaves = dict(_leaves(base.to_dict()))
  assert len(leaves) > 40
  nones = [field for field, value in leaves.items() if value is None]
  assert not nones, f'fields without a type cannot be set from a flag: {nones}'
  argv = ['train.py', f'--config={config_file}']
  expected = {}
  for field, value in leaves.items():
    expected[field] = _changed(value)
    argv.append(f'--config.{field}={_flag_text(expected[field])}')
  overridden = dict(_leaves(_parse(argv).config.to_dict()))
  for field, value in expected.items():
    got = overridden[field]
    if isinstance(value, float):
      assert got == pytest.approx(value), field
    else:
      assert got == value, field


@pytest.fixture(scope='module')
def cifar_folder(tmp_path_factory):
  """``root/train/<class>/<file>.jpg``: 24 real CIFAR-10 JPEGs per class from the
  tarball, or, without it, 24 generated 32x32 JPEGs per class."""
  root = tmp_path_factory.mktemp('cifar10_folder')
  per_class = 24
  if os.path.isfile(CIFAR_TARBALL):
    taken = {}
    with tarfile.open(CIFAR_TARBALL, 'r:gz') as archive:
      for member in archive:
        parts = member.name.split('/')
        if not member.isfile() or len(parts) != 4 or taken.get(parts[2], 0) >= per_class:
          continue
        taken[parts[2]] = taken.get(parts[2], 0) + 1
        (root / 'train' / parts[2]).mkdir(parents=True, exist_ok=True)
        (root / 'train' / parts[2] / parts[3]).write_bytes(archive.extractfile(member).read())
        if len(taken) == 10 and min(taken.values()) == per_class:
          break
  else:
    rng = np.random.default_rng(0)
    for c in range(10):
      (root / 'train' / f'class{c}').mkdir(parents=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(root / 'train' / f'class{c}' / f'{i:04d}.jpg')
  return str(root)


_QUICK = {
    '--config.num_train_steps': '2',
    '--config.global_batch_size': '8',
    '--config.eval_every_steps': '-1',
    '--config.progress_bar': 'False',
    '--config.tensorboard': 'False',
    '--config.data.worker_count': '0',
}


def _runnable_here(command: str) -> bool:
  """The embedded data and image folders run here; tfds datasets are not prepared."""
  return 'imagenet' not in command and '--config.data.data_dir=/data/tfds' not in command


def _places_of_each_command() -> dict[str, list[str]]:
  """Each documented command once (several files may show the same one), with where."""
  places = {}
  for where, command in COMMANDS:
    places.setdefault(command, []).append(where)
  return places


RUN_ONCE = _places_of_each_command()


@pytest.mark.parametrize('command', RUN_ONCE, ids=[f'{",".join(w)}:{c}'
                                                   for c, w in RUN_ONCE.items()])
def test_documented_command_runs_or_names_the_missing_data(command, tmp_path, cifar_folder,
                                                           compilation_cache):
  if '--config.distributed.enabled=True' in command:
    pytest.skip('a multi-host command joins a coordinator on another host: parsed only '
                '(test_documented_command_parses_and_validates); tests/train/test_multihost.py '
                'runs two processes on this one')
  argv = _substitute(command, {'/data/cifar10': cifar_folder}, tmp_path)
  given = {a.partition('=')[0] for a in argv}
  argv += [f'{k}={v}' for k, v in _QUICK.items() if k not in given]
  argv.append(f'--config.compilation_cache_dir={compilation_cache}')
  if '--workdir' not in given:
    argv.append(f'--workdir={tmp_path / "workdir"}')
  result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=900)
  if _runnable_here(command):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'summary: ' in result.stdout
  else:  # stops at the data check: one line naming the dataset and how to prepare it
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert '\ntrain.py: error: tfds dataset ' in '\n' + result.stderr, result.stderr[-3000:]
    assert 'is not prepared' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('args,message', [
    (['--config.schedule=step'], "train.py: error: schedule='step' is not valid"),
    (['--config.no_such_field=1'], 'train.py: error: unknown config field no_such_field\n'),
    (['--config.num_train_stepz=5'], 'train.py: error: unknown config field num_train_stepz; '
     'did you mean num_train_steps?\n'),
    (['--config.data.sourc=folder'], 'train.py: error: unknown config field data.sourc; '
     'did you mean data.source?\n'),
    (['--config=configs/default.py:w2a2,bogus'],
     "train.py: error: unknown config argument token 'bogus'"),
    (['--config.global_batch_size=abc'],
     'train.py: error: flag --config.global_batch_size=abc: invalid literal'),
    (['--config=configs/missing.py'], 'train.py: error: cannot load the config file'),
])
def test_errors_are_one_line_and_exit_2(args, message, tmp_path):
  result = subprocess.run([sys.executable, 'train.py', f'--workdir={tmp_path}', *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2
  assert result.stderr.startswith(message), result.stderr
  assert 'Traceback' not in result.stderr
  verbose = subprocess.run([sys.executable, 'train.py', f'--workdir={tmp_path}', *args,
                            '--verbosity=1'], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr


def _params(model) -> dict[str, np.ndarray]:
  """Every ``nnx.Param`` of ``model`` (quantizer parameters included) by dotted path."""
  return {'.'.join(str(k) for k in path): np.asarray(value)
          for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_a_finished_run_continues_in_a_new_workdir(tmp_path, quiet_config, compilation_cache):
  """The refusal of a longer schedule says how to go on, and following it
  (``init_checkpoint=OLD@STEP``) starts the new run from exactly that step's parameters,
  the learned quantizer parameters included."""
  old = str(tmp_path / 'old')
  old_run = os.path.join(old, 'w2a2')
  options = dict(loss='ce', learning_rate=0.05, global_batch_size=16, checkpoint_every_steps=1,
                 keep_checkpoints=3, eval_every_steps=-1)
  n2uq_train.run(quiet_config(config_lib.default_config('w2a2'), num_train_steps=3, **options),
                 old)
  longer = quiet_config(config_lib.default_config('w2a2'), num_train_steps=6, **options)
  with pytest.raises(ValueError, match='num_train_steps') as refusal:
    n2uq_train.run(longer, old)
  assert f'--config.init_checkpoint={old_run} ' in str(refusal.value)

  chosen = _params(n2uq_train.load_model(old_run, step=2))
  latest = _params(n2uq_train.load_model(old_run, step=3))
  quantizer = [p for p in chosen if p.endswith(('.offset', '.intervals', '.input_scale',
                                                '.output_scale'))]
  assert quantizer, sorted(chosen)
  # two steps at a large learning rate moved the offsets from their init (0), and the
  # third moved them again: picking the step matters
  assert any(np.any(chosen[p] != 0) for p in quantizer if p.endswith('.offset'))
  assert any(np.any(chosen[p] != latest[p]) for p in quantizer)

  # The new run's first step trains at learning rate 0 (one warmup step from 0), so
  # its step-1 checkpoint holds the parameters it started from.
  new = str(tmp_path / 'new')
  more = quiet_config(config_lib.default_config('w2a2'), loss='ce', num_train_steps=2,
                      learning_rate=0.05, global_batch_size=16, schedule='constant',
                      warmup_epochs=1.0, checkpoint_every_steps=1, log_every_steps=1,
                      eval_every_steps=-1, init_checkpoint=f'{old_run}@2')
  n2uq_train.run(more, new)
  new_run = os.path.join(new, 'w2a2')
  rates = {r['step']: r['learning_rate'] for r in n2uq_train.metrics.read_metrics(new_run)
           if 'loss' in r}
  assert rates[1] == 0.0 and rates[2] == pytest.approx(0.05)
  started = _params(n2uq_train.load_model(new_run, step=1))
  assert sorted(started) == sorted(chosen)
  for path, value in chosen.items():
    np.testing.assert_array_equal(started[path], value, err_msg=path)
