"""Checkpoints of a training run with orbax: the latest few, the best by validation
accuracy, the data iterator state. Reading them back without training (resolving a
path, model-only restores, the manifests) is :mod:`n2uq_jax.runs.checkpoints`.

Layout of a run's workdir::

  checkpoints/<step>/{model,train,data}   every ``checkpoint_every_steps`` and at the end;
                                          the newest ``keep_checkpoints`` are kept
  best/<step>/{model,info}                the best validation accuracy so far (one kept;
                                          saved only on improvement, never deleted by
                                          the rotation of ``checkpoints/``)

Items: ``model`` = ``{"params", "model_state"}`` (pure dicts of the NNX variables),
``train`` = ``{"step", "opt_state"}``, ``data`` = the input iterator's state, one JSON
file per process (``process_<i>-of-<n>.json``), ``info`` = JSON.

Integrity: once a checkpoint has committed, process 0 writes ``<step>/sha256.json``, the
size and SHA-256 of every file in it. A restore checks that manifest (a checkpoint
without one, e.g. cut short between commit and manifest, is checked by orbax's restore
alone). A corrupt or truncated checkpoint is reported with a warning naming the step and
the file and moved aside to ``checkpoints.corrupt/<step>`` (``best.corrupt/``); the run
resumes from the newest good one. Nothing is ever deleted by this, and if no checkpoint
restores, nothing is moved and the restore fails. A failed save raises
:class:`CheckpointSaveError`; orbax removes old checkpoints only after a new one commits.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from n2uq_jax.runs import checkpoints as run_checkpoints
from n2uq_jax.runs.checkpoints import MANIFEST  # pylint: disable=unused-import
from n2uq_jax.runs.restore import abstract  # pylint: disable=unused-import
from n2uq_jax.train import distributed

class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (older checkpoints are left untouched)."""


def _quarantine(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves a corrupt step out of the manager's directory (process 0), never deleting it.

  Returns:
    Where it went: ``<manager dir>.corrupt/<step>`` (``-<time>`` added if taken).
  """
  source = run_checkpoints.step_dir(manager.directory, step)
  target_root = str(manager.directory).rstrip('/') + '.corrupt'
  target = os.path.join(target_root, str(step))
  if os.path.exists(target):
    target += f'-{int(time.time())}'
  if jax.process_index() == 0:
    os.makedirs(target_root, exist_ok=True)
    os.replace(source, target)
  # Every process reloads the manager's step list only after process 0 has moved it.
  distributed.barrier(f'n2uq_quarantine_{step}')
  manager.reload()
  return target


class IteratorStateHandler(ocp.CheckpointHandler):
  """Saves each process's data-iterator state (``it.get_state()``) as JSON, one file
  per process, so that every host resumes its own shard."""

  def _filename(self, directory: epath.Path) -> epath.Path:
    return directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'

  def save(self, directory: epath.Path, args: 'IteratorStateSave'):
    state = args.state
    if isinstance(state, (bytes, bytearray)):
      record = {'bytes': base64.b64encode(bytes(state)).decode('ascii')}
    else:
      record = {'json': state}
    directory.mkdir(parents=True, exist_ok=True)
    self._filename(directory).write_text(json.dumps(record))

  def restore(self, directory: epath.Path, args: 'IteratorStateRestore | None' = None):
    """This process's state; from a run with another number of processes, process 0's.

    The latter is exact for this project's pipelines, whose state is the count of
    global steps taken (every host's batch ``k`` is its share of global batch ``k``).
    """
    filename = self._filename(directory)
    if not filename.exists():
      saved = sorted(directory.glob('process_0-of-*.json'))
      if not saved:
        raise ValueError(f'no data-iterator state in {directory}')
      logging.info('%s was written by another number of processes; taking %s', directory,
                   saved[0].name)
      filename = saved[0]
    record = json.loads(filename.read_text())
    if 'bytes' in record:
      return base64.b64decode(record['bytes'])
    return record['json']

  def metadata(self, directory: epath.Path):
    return None

  def finalize(self, directory: epath.Path):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
  pass


class Checkpointer:
  """The two managers of one run (see the module docstring).

  Args:
    workdir: the run's directory.
    keep: checkpoints kept in ``checkpoints/``.
    async_save: write in the background where orbax can (the device-to-host copy
      stays synchronous, so the next step may reuse the buffers).
  """

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True):
    workdir = os.path.abspath(workdir)
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(workdir, 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m['eval_accuracy'], best_mode='max',
            keep_checkpoints_without_metrics=False, enable_async_checkpointing=async_save,
            create=True))
    self._unhashed: list[tuple[ocp.CheckpointManager, int]] = []
    self._best_checked = False
    # Read once, while no save is in flight: with asynchronous saving the metrics
    # of a best checkpoint still being written are not yet readable.
    self._best_accuracy = self._saved_best_accuracy()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _commit(self, manager: ocp.CheckpointManager) -> None:
    """Waits for ``manager``'s save in flight, then writes the manifests of the steps
    that have committed since (process 0)."""
    try:
      manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointSaveError(f'writing a checkpoint in {manager.directory} failed: '
                                f'{type(error).__name__}: {error}. Older checkpoints are '
                                'untouched') from error
    pending = [(m, s) for m, s in self._unhashed if m is manager]
    self._unhashed = [(m, s) for m, s in self._unhashed if m is not manager]
    if jax.process_index() == 0:
      for _, step in pending:
        if os.path.isdir(run_checkpoints.step_dir(manager.directory, step)):  # not rotated away meanwhile
          run_checkpoints.write_manifest(run_checkpoints.step_dir(manager.directory, step))

  def _save(self, manager: ocp.CheckpointManager, step: int, args, **kwargs) -> None:
    # One save in flight at a time, across both managers: with several processes,
    # orbax names its barriers by step, and a best/ and a checkpoints/ save of the same
    # step in flight together would meet at the same barrier name and fail.
    self._commit(self.latest)
    self._commit(self.best)
    try:
      manager.save(step, args=args, force=True, **kwargs)
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointSaveError(f'saving step {step} in {manager.directory} failed: '
                                f'{type(error).__name__}: {error}. Older checkpoints are '
                                'untouched') from error
    self._unhashed.append((manager, step))

  def save(self, step: int, state, data_state: Any) -> None:
    """Saves the training state and the iterator state at ``step``.

    Raises:
      CheckpointSaveError: this save, or the asynchronous one before it, failed.
    """
    self._save(self.latest, step, ocp.args.Composite(
        model=ocp.args.StandardSave({'params': state.params, 'model_state': state.model_state}),
        train=ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state}),
        data=IteratorStateSave(data_state)))

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, Any, int]:
    """``(state, data_state, step)`` from ``checkpoints/``: ``step``, or by default the
    newest good one (corrupt newer ones are reported and moved aside, see the module
    docstring).

    Args:
      abstract_state: a TrainState of ShapeDtypeStructs (with shardings).

    Raises:
      ValueError: no checkpoint restores.
    """
    def restore_step(step):
      restored = self.latest.restore(step, args=ocp.args.Composite(
          model=ocp.args.StandardRestore(
              {'params': abstract_state.params, 'model_state': abstract_state.model_state}),
          train=ocp.args.StandardRestore(
              {'step': abstract_state.step, 'opt_state': abstract_state.opt_state}),
          data=IteratorStateRestore()))
      state = abstract_state.replace(
          step=restored['train']['step'], params=restored['model']['params'],
          model_state=restored['model']['model_state'],
          opt_state=restored['train']['opt_state'])
      return state, restored['data']

    if step is not None:
      return (*restore_step(step), step)
    try:
      found = run_checkpoints.restore_newest_good(
          self.latest, restore_step, what='training',
          quarantine=lambda step: _quarantine(self.latest, step))
    except ValueError as error:
      raise ValueError(f'{error}; move the bad steps away (or start a new workdir) to '
                       'train from scratch') from error
    if found is None:
      raise ValueError(f'no checkpoint in {self.latest.directory}')
    (state, data_state), step = found
    return state, data_state, step

  def _saved_best_accuracy(self) -> float | None:
    """The accuracy stored with the checkpoint in ``best/``; a corrupt one is reported
    and moved aside (to ``best.corrupt/``) the first time, and counts as none."""
    step = self.best.best_step()
    if step is None:
      return None
    if not self._best_checked:
      self._best_checked = True
      problem = run_checkpoints.verify_manifest(run_checkpoints.step_dir(self.best.directory, step))
      if problem is not None:
        moved = _quarantine(self.best, step)
        run_checkpoints.warn(f'best checkpoint step {step} is corrupt ({problem}); moved it to {moved}; '
              'the next evaluation writes a new best')
        return self._saved_best_accuracy()
    metrics = self.best.metrics(step)
    return None if metrics is None else float(metrics['eval_accuracy'])

  def best_accuracy(self) -> float | None:
    """The accuracy of the model in ``best/`` (``None`` before the first save)."""
    return self._best_accuracy

  def save_best(self, step: int, state, eval_accuracy: float, info: dict | None = None) -> bool:
    """Saves the model into ``best/`` when ``eval_accuracy`` beats the best so far."""
    best = self._best_accuracy
    if best is not None and eval_accuracy <= best:
      return False
    if step in (self.best.all_steps() or []):
      return False
    self._save(self.best, step, ocp.args.Composite(
        model=ocp.args.StandardSave({'params': state.params, 'model_state': state.model_state}),
        info=ocp.args.JsonSave({'step': int(step), 'eval_accuracy': float(eval_accuracy),
                                **(info or {})})),
               metrics={'eval_accuracy': float(eval_accuracy)})
    self._best_accuracy = float(eval_accuracy)
    return True

  def wait(self) -> None:
    """Waits for the saves in flight and writes their manifests.

    Raises:
      CheckpointSaveError: a save failed.
    """
    self._commit(self.latest)
    self._commit(self.best)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
