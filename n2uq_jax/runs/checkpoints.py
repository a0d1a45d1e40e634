"""The checkpoints of a run directory: which one a path names, their SHA-256
manifests, and model-only restores.

Layout of a variant run directory (written by :class:`n2uq_jax.train.checkpoint.Checkpointer`)::

  checkpoints/<step>/{model,train,data}   the newest few training states
  best/<step>/{model,info}                the best evaluation accuracy so far
  <manager>/<step>/sha256.json            size and SHA-256 of every file of the step

Choosing a checkpoint: :func:`resolve` takes a path (a run directory, one of its two
manager directories, or any of these with ``@SELECTOR``) and a selector:

* ``'latest'`` (:data:`DEFAULT_SELECT`): the newest step of ``checkpoints/``, or of
  ``best/`` when ``checkpoints/`` holds none;
* ``'best'``: the step in ``best/``, or the newest of ``checkpoints/`` when the run never
  evaluated (it has no ``best/``);
* an int: that step, from ``checkpoints/`` or else ``best/``.

``load_model`` and export use the default; initialisations, teachers and inspection ask
for ``'best'`` (the model worth starting from or looking at).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging

CHECKPOINTS_DIR = 'checkpoints'
"""Manager directory of the training states (rotated, ``keep_checkpoints`` kept)."""
BEST_DIR = 'best'
"""Manager directory of the best model by evaluation accuracy (one kept)."""
MANIFEST = 'sha256.json'
"""Name of the integrity manifest inside a committed step directory."""

LATEST = 'latest'
BEST = 'best'
DEFAULT_SELECT = LATEST
"""The selector used when none is given (see the module docstring)."""


def warn(message: str) -> None:
  """A warning in the log and, on process 0, on stderr for the person at the terminal."""
  logging.warning(message)
  if jax.process_index() == 0:
    print(f'warning: {message}', file=sys.stderr, flush=True)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Every file under ``step_dir`` (relative, sorted), the manifest excluded."""
  found = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), step_dir)
      if relative != MANIFEST:
        found.append(relative)
  return sorted(found)


def write_manifest(step_dir: str) -> None:
  """Writes ``step_dir/sha256.json`` (``{file: [size, sha256]}``) atomically."""
  entries = {name: [os.path.getsize(os.path.join(step_dir, name)),
                    _sha256(os.path.join(step_dir, name))] for name in _files(step_dir)}
  temporary = os.path.join(step_dir, MANIFEST + '.tmp')
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump(entries, f, indent=0, sort_keys=True)
  os.replace(temporary, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str) -> str | None:
  """``None`` if every file of ``step_dir`` matches its manifest (or there is none),
  else what is wrong, naming the file."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      entries = json.load(f)
  except (OSError, ValueError) as error:
    return f'{path}: unreadable manifest ({error})'
  for name, (size, digest) in sorted(entries.items()):
    file = os.path.join(step_dir, name)
    if not os.path.exists(file):
      return f'{file}: missing'
    if os.path.getsize(file) != size:
      return f'{file}: {os.path.getsize(file)} bytes, {size} when written (truncated?)'
    if _sha256(file) != digest:
      return f'{file}: content changed since it was written (SHA-256 mismatch)'
  return None


def tree_sha256(directory: str) -> str:
  """SHA-256 over the files of ``directory`` (relative paths and contents, sorted)."""
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, directory).encode())
      with open(path, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


def step_dir(manager_dir: str, step: int) -> str:
  return os.path.join(str(manager_dir), str(step))


def manager_steps(directory: str) -> list[int]:
  """The steps of the checkpoint manager in ``directory``, sorted ([] if none)."""
  if not os.path.isdir(directory):
    return []
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def split_selector(path: str, select=None) -> tuple[str, Any]:
  """``(absolute path, selector)``: the selector of ``DIR@SELECTOR`` (``@best``,
  ``@latest``, ``@N``), else ``select`` (None: :data:`DEFAULT_SELECT`)."""
  path = os.path.abspath(os.path.expanduser(str(path)))
  if '@' in os.path.basename(path):
    path, _, text = path.rpartition('@')
    select = int(text) if text.isdigit() else text
  return path, check_select(select)


def check_select(select):
  """``select`` itself, or :data:`DEFAULT_SELECT` for None.

  Raises:
    ValueError: not ``'latest'``, ``'best'``, a non-negative int or None.
  """
  if select is None:
    return DEFAULT_SELECT
  if select in (LATEST, BEST) or (isinstance(select, int) and not isinstance(select, bool)
                                  and select >= 0):
    return select
  raise ValueError(f'step must be None (latest), "latest", "best" or a step number, got '
                   f'{select!r}')


def candidates(path: str, select) -> list[str]:
  """The manager directories ``select`` looks in, in order: a run directory's two
  (``best/`` first for ``'best'``), or ``path`` itself when it is a manager directory."""
  managers = [os.path.join(path, CHECKPOINTS_DIR), os.path.join(path, BEST_DIR)]
  if not any(os.path.isdir(m) for m in managers):
    return [path]
  return managers[::-1] if select == BEST else managers


def resolve(path: str, select=None) -> tuple[str, int]:
  """The manager directory and step of the checkpoint that ``path`` names, with
  ``select`` where ``path`` has no ``@SELECTOR`` (see the module docstring).

  Raises:
    ValueError: no such checkpoint, naming the steps there are.
  """
  path, select = split_selector(path, select)
  available = []
  for directory in candidates(path, select):
    steps = manager_steps(directory)
    available.append(f'{directory}: {steps}')
    if isinstance(select, int):
      if select in steps:
        return directory, select
    elif steps:
      return directory, steps[-1]
  where = (f'no checkpoint at step {select} in {path!r}' if isinstance(select, int)
           else f'no checkpoint found at {path!r}')
  raise ValueError(
      where + ' (' + '; '.join(available) + '): give a run directory (with best/ or checkpoints/), '
      'a checkpoint manager directory, or DIR@STEP')


def restore_newest_good(manager: ocp.CheckpointManager, restore_fn: Callable[[int], Any], *,
                        what: str, quarantine: Callable[[int], str] | None = None
                        ) -> tuple[Any, int] | None:
  """``(restore_fn(step), step)`` for the newest step whose manifest checks and whose
  restore succeeds; ``None`` if the manager holds no checkpoint.

  Each bad step gets a warning naming the step and the file. ``quarantine(step)``, if
  given, moves a bad step newer than the good one aside and returns where it went
  (so that a resumed run can write those steps again); without it nothing moves.

  Raises:
    ValueError: there are checkpoints, but none restores (nothing was moved).
  """
  steps = sorted(manager.all_steps() or [], reverse=True)
  if not steps:
    return None
  problems = []
  for step in steps:
    problem = verify_manifest(step_dir(manager.directory, step))
    if problem is None:
      try:
        result = restore_fn(step)
      except Exception as error:  # pylint: disable=broad-except
        problem = f'{step_dir(manager.directory, step)}: {type(error).__name__}: {error}'
    if problem is None:
      for bad_step, bad in problems:
        moved = quarantine(bad_step) if quarantine else None
        warn(f'{what} checkpoint step {bad_step} is corrupt ({bad}); '
             + (f'moved it to {moved}, ' if moved else '') + f'using step {step} instead')
      return result, step
    problems.append((step, problem))
  raise ValueError(f'no {what} checkpoint in {manager.directory} restores: ' + '; '.join(
      f'step {step} is corrupt ({problem})' for step, problem in problems) + '. Nothing was '
      'moved or deleted')


def _restore_model_item(manager: ocp.CheckpointManager, abstract_params, abstract_model_state):
  def restore_step(step):
    restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(
        {'params': abstract_params, 'model_state': abstract_model_state})))
    return restored['model']
  return restore_step


def _open(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))


def restore_model_at(directory: str, step: int, abstract_params, abstract_model_state
                     ) -> tuple[Any, Any]:
  """``(params, model_state)`` of the ``model`` item of ``directory@step``, as is (the
  caller checks the manifest)."""
  manager = _open(directory)
  try:
    model = _restore_model_item(manager, abstract_params, abstract_model_state)(step)
  finally:
    manager.close()
  return model['params'], model['model_state']


def restore_model(path: str, abstract_params, abstract_model_state, *, select=None
                  ) -> tuple[Any, Any, str]:
  """``(params, model_state, 'DIR@STEP')`` from the ``model`` item of the checkpoint
  that ``path`` names, with ``select`` where it has no ``@SELECTOR`` (see :func:`resolve`).

  With a step number (``DIR@STEP`` or an int ``select``) that step is restored or the
  error names what is wrong. Otherwise a corrupt checkpoint is reported and the next
  candidate is used: older steps of the same directory, then the other manager
  directory. Nothing is moved or deleted (the run may belong to someone else).

  Raises:
    ValueError: no checkpoint at ``path``, or none of them restores (naming the files).
  """
  path, select = split_selector(path, select)
  directory, step = resolve(path, select)
  if isinstance(select, int):
    problem = verify_manifest(step_dir(directory, step))
    if problem is not None:
      raise ValueError(f'checkpoint {directory}@{step} is corrupt: {problem}')
    params, model_state = restore_model_at(directory, step, abstract_params,
                                           abstract_model_state)
    return params, model_state, f'{directory}@{step}'
  failures = []
  for directory in candidates(path, select):
    if not os.path.isdir(directory):
      continue
    manager = _open(directory)
    try:
      found = restore_newest_good(
          manager, _restore_model_item(manager, abstract_params, abstract_model_state),
          what='model')
    except ValueError as error:
      warn(f'{error}; trying the next candidate of {path!r}')
      failures.append(str(error))
      continue
    finally:
      manager.close()
    if found is not None:
      model, step = found
      return model['params'], model['model_state'], f'{directory}@{step}'
  raise ValueError(f'no checkpoint at {path!r} restores: ' + ' | '.join(failures))


def save_model(directory: str, step: int, params, model_state) -> None:
  """Writes a model-only checkpoint (e.g. a teacher or an imported model) that
  :func:`restore_model` reads, with its manifest."""
  manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False))
  manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(
      {'params': params, 'model_state': model_state})), force=True)
  manager.wait_until_finished()
  if jax.process_index() == 0:
    write_manifest(step_dir(manager.directory, step))
  manager.close()
