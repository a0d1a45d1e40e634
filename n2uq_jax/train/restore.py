"""Trained models back from a variant run directory: :func:`load_model`.

A variant run directory (``workdir/default/w2a2``) holds ``config.json`` (the
config of that one variant) and the orbax checkpoints of
:mod:`n2uq_jax.train.checkpoint`: ``checkpoints/<step>/model`` and
``best/<step>/model``. The model is rebuilt from the config (registry name,
policy of the variant, model kwargs, compute dtype) with the class count and
input channels read from the checkpoint's stem and classifier shapes, so no
data pipeline is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import config_lib, loop, step as step_lib

_STEM_KERNELS = (('conv1', 'kernel'), ('features', '0', 'conv', 'kernel'))
_CLASSIFIER_KERNELS = (('fc', 'kernel'), ('classifier', 'kernel'))


@dataclasses.dataclass(frozen=True)
class RestoredRun:
  """A model restored from a run directory and where it came from.

  Attributes:
    model: the ``nnx.Module`` in evaluation mode.
    config: the variant's config (``ml_collections.ConfigDict``).
    model_name: the registry name it was built with.
    step: the training step of the checkpoint.
    checkpoint_dir: the directory of that step's ``model`` item.
    checkpoint_sha256: SHA-256 over the files of that ``model`` item (relative
      paths and contents, in sorted order).
  """
  model: nnx.Module
  config: ml_collections.ConfigDict
  model_name: str
  step: int
  checkpoint_dir: str
  checkpoint_sha256: str


def _manager_steps(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def _resolve(run_dir: str, step) -> tuple[str, int]:
  """The checkpoint manager directory and step for ``step`` (None, int or 'best')."""
  latest_dir = os.path.join(run_dir, 'checkpoints')
  best_dir = os.path.join(run_dir, 'best')
  latest, best = _manager_steps(latest_dir), _manager_steps(best_dir)
  if step is None:
    if latest:
      return latest_dir, latest[-1]
    if best:
      return best_dir, best[-1]
    raise ValueError(f'run directory {run_dir!r} holds no checkpoint (neither checkpoints/ nor '
                     'best/ has a step)')
  if step == 'best':
    if not best:
      raise ValueError(f'run directory {run_dir!r} has no best/ checkpoint (it is written at '
                       f'evaluation); steps in checkpoints/: {latest}')
    return best_dir, best[-1]
  if isinstance(step, bool) or not isinstance(step, int):
    raise ValueError(f'step must be None (latest), an int or "best", got {step!r}')
  if step in latest:
    return latest_dir, step
  if step in best:
    return best_dir, step
  raise ValueError(f'run directory {run_dir!r} has no checkpoint at step {step}; available: '
                   f'checkpoints/ {latest}, best/ {best}')


def read_config(run_dir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` of a variant run directory as a ConfigDict.

  Raises:
    ValueError: ``run_dir`` has no ``config.json`` (naming the variant
      sub-directories when it is a workdir that holds several).
  """
  path = os.path.join(run_dir, 'config.json')
  if not os.path.isfile(path):
    variants = sorted(d for d in os.listdir(run_dir)
                      if os.path.isfile(os.path.join(run_dir, d, 'config.json'))) if (
                          os.path.isdir(run_dir)) else []
    hint = (f'; it holds the variant directories {variants}: pass one of them, e.g. '
            f'{os.path.join(run_dir, variants[-1])}') if variants else (
                ' (give the directory of one variant, e.g. workdir/default/w2a2)')
    raise ValueError(f'{run_dir!r} is not a variant run directory: no config.json{hint}')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


def has_best_checkpoint(run_dir: str) -> bool:
  """Whether ``run_dir/best/`` holds a checkpoint (it is written at evaluation)."""
  return bool(_manager_steps(os.path.join(run_dir, 'best')))


def _lookup(tree: Any, candidates, what: str, directory: str):
  for keys in candidates:
    node = tree
    for key in keys:
      if not isinstance(node, dict):
        node = None
        break
      node = node.get(key)
      if node is None:
        break
    if node is not None:
      return node
  raise ValueError(f'checkpoint {directory!r} has no {what} kernel at any of '
                   f'{["/".join(k) for k in candidates]}')


def _tree_sha256(directory: str) -> str:
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, directory).encode())
      with open(path, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


def restore_run(run_dir: str, *, step=None) -> RestoredRun:
  """Rebuilds and restores the model of a variant run directory (see :func:`load_model`)."""
  run_dir = os.path.abspath(os.path.expanduser(str(run_dir)))
  if not os.path.isdir(run_dir):
    raise ValueError(f'run directory {run_dir!r} does not exist')
  config = read_config(run_dir)
  variants = config_lib.variants(config)
  if len(variants) != 1:
    raise ValueError(f'{run_dir!r} holds the config of several variants ({config.variants!r}); '
                     'give the sub-directory of one variant')
  variant = variants[0]
  directory, step = _resolve(run_dir, step)
  problem = checkpoint_lib.verify_manifest(os.path.join(directory, str(step)))
  if problem is not None:
    raise ValueError(f'checkpoint {directory}@{step} is corrupt: {problem}; give another '
                     f'step of {_manager_steps(directory)}')
  item_dir = os.path.join(directory, str(step), 'model')
  # The item handler reads the array metadata of the ``model`` item; a Checkpointer would
  # also look for a step-level _CHECKPOINT_METADATA inside the item and warn.
  metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
  shapes = jax.tree.map(lambda m: tuple(m.shape), dict(metadata))
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    stem = _lookup(shapes['params'], _STEM_KERNELS, 'stem conv', item_dir)
    head = _lookup(shapes['params'], _CLASSIFIER_KERNELS, 'classifier', item_dir)
    name = config_lib.model_name(config, variant)
    build = lambda: loop.build_model(
        name, None if variant.is_full_precision else variant, num_classes=head[-1],
        in_channels=stem[2], seed=config.seed,
        compute_dtype=step_lib.compute_dtype(config.compute_dtype),
        kwargs=config_lib.model_kwargs(config, variant))
    model_def, params, model_state = step_lib.split_model(nnx.eval_shape(build))
    restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(
        {'params': checkpoint_lib.abstract(params),
         'model_state': checkpoint_lib.abstract(model_state)})))
  finally:
    manager.close()
  model = model_def.merge(restored['model']['params'], restored['model']['model_state'],
                          train=False)
  return RestoredRun(model=model, config=config, model_name=name, step=int(step),
                     checkpoint_dir=item_dir, checkpoint_sha256=_tree_sha256(item_dir))


def load_model(run_dir: str, *, step=None) -> nnx.Module:
  """The trained model of a variant run directory, in evaluation mode.

  Args:
    run_dir: a variant run directory (``workdir/default/w2a2``) with
      ``config.json`` and checkpoints.
    step: ``None`` for the latest checkpoint of ``checkpoints/`` (``best/`` if
      there is none), an int for that step (from ``checkpoints/`` or
      ``best/``), or ``"best"`` for the best evaluation accuracy.

  Returns:
    The ``nnx.Module``; ``model(images)`` gives logits ``(N, num_classes)`` for
    NHWC images normalised as the data pipeline yields them.

  Raises:
    ValueError: the directory, its ``config.json`` or the step does not exist,
      or the checkpoint's files differ from its SHA-256 manifest.
  """
  return restore_run(run_dir, step=step).model
