"""Checkpoints with orbax: the latest few, the best by validation accuracy, the data
iterator state, and model-only restores for teachers and initialisations.

Layout of a run's workdir::

  checkpoints/<step>/{model,train,data}   every ``checkpoint_every_steps`` and at the end;
                                          the newest ``keep_checkpoints`` are kept
  best/<step>/{model,info}                the best validation accuracy so far (one kept;
                                          saved only on improvement, never deleted by
                                          the rotation of ``checkpoints/``)

Items: ``model`` = ``{"params", "model_state"}`` (pure dicts of the NNX variables),
``train`` = ``{"step", "opt_state"}``, ``data`` = the input iterator's state, one JSON
file per process (``process_<i>-of-<n>.json``), ``info`` = JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


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
    filename = self._filename(directory)
    if not filename.exists():
      raise ValueError(f'no data-iterator state for this process in {directory} (was the run '
                       f'saved with a different number of processes?)')
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


def abstract(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs of ``tree`` (with ``shardings``, a matching tree, if given)."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


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
    # Read once, while no save is in flight: with asynchronous saving the metrics
    # of a best checkpoint still being written are not yet readable.
    self._best_accuracy = self._saved_best_accuracy()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state, data_state: Any) -> None:
    """Saves the training state and the iterator state at ``step``."""
    self.latest.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave({'params': state.params, 'model_state': state.model_state}),
        train=ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state}),
        data=IteratorStateSave(data_state)), force=True)

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, Any, int]:
    """``(state, data_state, step)`` from ``checkpoints/`` (latest by default).

    Args:
      abstract_state: a TrainState of ShapeDtypeStructs (with shardings).
    """
    step = self.latest.latest_step() if step is None else step
    restored = self.latest.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(
            {'params': abstract_state.params, 'model_state': abstract_state.model_state}),
        train=ocp.args.StandardRestore(
            {'step': abstract_state.step, 'opt_state': abstract_state.opt_state}),
        data=IteratorStateRestore()))
    state = abstract_state.replace(
        step=restored['train']['step'], params=restored['model']['params'],
        model_state=restored['model']['model_state'], opt_state=restored['train']['opt_state'])
    return state, restored['data'], step

  def _saved_best_accuracy(self) -> float | None:
    step = self.best.best_step()
    if step is None:
      return None
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
    self.best.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave({'params': state.params, 'model_state': state.model_state}),
        info=ocp.args.JsonSave({'step': int(step), 'eval_accuracy': float(eval_accuracy),
                                **(info or {})})),
                   metrics={'eval_accuracy': float(eval_accuracy)}, force=True)
    self._best_accuracy = float(eval_accuracy)
    return True

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def resolve_model_checkpoint(path: str) -> tuple[str, int]:
  """The manager directory and step holding the model to restore from ``path``.

  ``path`` may be a run's workdir (its ``best/`` checkpoint if any, else the latest
  of ``checkpoints/``), a manager directory (its latest step), or a manager directory
  followed by ``@<step>``.

  Raises:
    ValueError: no checkpoint at ``path``.
  """
  step = None
  if '@' in os.path.basename(path):
    path, _, step_text = path.rpartition('@')
    step = int(step_text)
  path = os.path.abspath(os.path.expanduser(path))
  candidates = [os.path.join(path, 'best'), os.path.join(path, 'checkpoints'), path]
  for directory in candidates:
    if not os.path.isdir(directory):
      continue
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    steps = manager.all_steps()
    manager.close()
    if not steps:
      continue
    if step is None:
      return directory, max(steps)
    if step in steps:
      return directory, step
  raise ValueError(f'no checkpoint found at {path!r}' + (f' for step {step}' if step else '') +
                   ': give a run directory (with best/ or checkpoints/), a checkpoint manager '
                   'directory, or DIR@STEP')


def restore_model(path: str, abstract_params, abstract_model_state) -> tuple[Any, Any, str]:
  """``(params, model_state, description)`` restored from the ``model`` item of the
  checkpoint at ``path`` (see :func:`resolve_model_checkpoint`)."""
  directory, step = resolve_model_checkpoint(path)
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(
        {'params': abstract_params, 'model_state': abstract_model_state})))
  finally:
    manager.close()
  return restored['model']['params'], restored['model']['model_state'], f'{directory}@{step}'


def save_model(directory: str, step: int, params, model_state) -> None:
  """Writes a model-only checkpoint (e.g. a teacher or an imported model) that
  :func:`restore_model` reads."""
  manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False))
  manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(
      {'params': params, 'model_state': model_state})), force=True)
  manager.wait_until_finished()
  manager.close()
