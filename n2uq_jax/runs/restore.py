"""Models back from run directories: :func:`load_model` (a variant run directory, in
evaluation mode, with where it came from in :func:`restore_run`) and
:func:`restore_source_model` (the model behind an ``init_checkpoint`` or
``teacher_checkpoint`` path, built as the run that wrote it describes it).

The model is rebuilt from the run's ``config.json`` (registry name, policy of the
variant, model kwargs, compute dtype) with the class count and input channels read
from the checkpoint's stem and classifier shapes, so no data pipeline is built.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from n2uq_jax.runs import checkpoints, layout
from n2uq_jax.runs import model as model_lib

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


def abstract(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs of ``tree`` (with ``shardings``, a matching tree, if given)."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _lookup(tree: Any, candidates, what: str, directory: str):
  for keys in candidates:
    node = tree
    for key in keys:
      node = node.get(key) if isinstance(node, dict) else None
      if node is None:
        break
    if node is not None:
      return node
  raise ValueError(f'checkpoint {directory!r} has no {what} kernel at any of '
                   f'{["/".join(k) for k in candidates]}')


def _single_variant(run_dir: str, config) -> model_lib.Variant:
  found = model_lib.variants(config)
  if len(found) != 1:
    raise ValueError(f'{run_dir!r} holds the config of several variants ({config.variants!r}); '
                     'give the sub-directory of one variant')
  return found[0]


def restore_run(run_dir: str, *, step=None) -> RestoredRun:
  """Rebuilds and restores the model of a variant run directory (see :func:`load_model`)."""
  run_dir = os.path.abspath(os.path.expanduser(str(run_dir)))
  if not os.path.isdir(run_dir):
    raise ValueError(f'run directory {run_dir!r} does not exist')
  config = layout.read_config(run_dir)
  variant = _single_variant(run_dir, config)
  directory, step = checkpoints.resolve(run_dir, step)
  problem = checkpoints.verify_manifest(checkpoints.step_dir(directory, step))
  if problem is not None:
    raise ValueError(f'checkpoint {directory}@{step} is corrupt: {problem}; give another '
                     f'step of {checkpoints.manager_steps(directory)}')
  item_dir = os.path.join(checkpoints.step_dir(directory, step), 'model')
  # The item handler reads the array metadata of the ``model`` item; a Checkpointer would
  # also look for a step-level _CHECKPOINT_METADATA inside the item and warn.
  metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
  shapes = jax.tree.map(lambda m: tuple(m.shape), dict(metadata))
  stem = _lookup(shapes['params'], _STEM_KERNELS, 'stem conv', item_dir)
  head = _lookup(shapes['params'], _CLASSIFIER_KERNELS, 'classifier', item_dir)
  name = model_lib.model_name(config, variant)
  abstract_model = nnx.eval_shape(lambda: model_lib.build_variant_model(
      config, variant, num_classes=head[-1], in_channels=stem[2])[1])
  model_def, params, model_state = model_lib.split_model(abstract_model)
  params, model_state = checkpoints.restore_model_at(directory, step, abstract(params),
                                                     abstract(model_state))
  model = model_def.merge(params, model_state, train=False)
  return RestoredRun(model=model, config=config, model_name=name, step=int(step),
                     checkpoint_dir=item_dir,
                     checkpoint_sha256=checkpoints.tree_sha256(item_dir))


def load_model(run_dir: str, *, step=None) -> nnx.Module:
  """The trained model of a variant run directory, in evaluation mode.

  Args:
    run_dir: a variant run directory (``workdir/default/w2a2``) with
      ``config.json`` and checkpoints.
    step: ``None`` or ``"latest"`` for the latest checkpoint of ``checkpoints/``
      (``best/`` if there is none), an int for that step (from ``checkpoints/`` or
      ``best/``), or ``"best"`` for the best evaluation accuracy (see
      :mod:`n2uq_jax.runs.checkpoints`).

  Returns:
    The ``nnx.Module``; ``model(images)`` gives logits ``(N, num_classes)`` for
    NHWC images normalised as the data pipeline yields them.

  Raises:
    ValueError: the directory, its ``config.json`` or the step does not exist,
      or the checkpoint's files differ from its SHA-256 manifest.
  """
  return restore_run(run_dir, step=step).model


def source_variant(path: str) -> tuple[str, model_lib.Variant, dict[str, Any]] | None:
  """``(model name, variant, model kwargs)`` of the run that wrote the checkpoint at
  ``path`` (a run directory, its ``best``/``checkpoints`` manager, either with
  ``@SELECTOR``), read from the run's ``config.json``; None when there is none (a bare
  model checkpoint, which then holds a full-precision model)."""
  directory, _ = checkpoints.split_selector(path)
  for run_dir in (directory, os.path.dirname(directory)):
    stored = layout.stored_config(run_dir)
    if stored is not None:
      variant = model_lib.parse_variant(stored['variants'], stored['method'])
      kwargs = stored.get('fp_model_kwargs' if variant.is_full_precision else 'model_kwargs')
      name = stored['fp_model'] if variant.is_full_precision else stored['model']
      return name, variant, dict(kwargs or {})
  return None
