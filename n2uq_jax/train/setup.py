"""Everything a training run needs before its first step, in the order the loop calls
it: the arguments, the workdir, the input pipeline, the model with its initialisation
and teacher, the optimizer, and the sharded train state.

Nothing is written to the workdir here except by :func:`claim_workdir`, which the loop
calls only once every check (data, splits, ``init_checkpoint``, ``teacher_checkpoint``)
has passed: a start that fails leaves a new workdir as it was.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
from absl import logging
from flax import nnx

from n2uq_jax import models, nn
from n2uq_jax.interop import checkpoints as interop_checkpoints
from n2uq_jax.runs import checkpoints as run_checkpoints
from n2uq_jax.runs import layout
from n2uq_jax.runs import model as model_lib
from n2uq_jax.runs import restore as run_restore
from n2uq_jax.train import config_lib, optimizer as optimizer_lib
from n2uq_jax.train import sharding, step as step_lib


def say(message: str) -> None:
  """Progress messages for the person at the terminal (process 0 only)."""
  logging.info(message)
  if jax.process_index() == 0:
    print(message, flush=True)


def check_arguments(config) -> model_lib.Variant:
  """The single variant of a valid ``config``.

  Raises:
    ValueError: an invalid field, several variants, or ``loss='kd'`` without a teacher.
  """
  config_lib.validate(config)
  run_variants = model_lib.variants(config)
  if len(run_variants) != 1:
    raise ValueError(f'train_and_evaluate trains one variant, got variants={config.variants!r}; '
                     'use run() for several')
  if config.loss == 'kd' and not config.teacher_checkpoint:
    raise ValueError(
        "loss='kd' needs teacher_checkpoint: a run directory or checkpoint of "
        f"teacher_model={config.teacher_model or config.fp_model!r}; set "
        "--config.teacher_checkpoint=DIR, or --config.loss=ce")
  return run_variants[0]


def has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir`` holds a checkpoint in ``checkpoints/`` or ``best/``."""
  return any(run_checkpoints.manager_steps(os.path.join(workdir, d))
             for d in (run_checkpoints.CHECKPOINTS_DIR, run_checkpoints.BEST_DIR))


def check_workdir(workdir: str, config) -> bool:
  """Whether ``config.json`` must be written into ``workdir`` (it is absent, or belongs
  to a start that failed before its first checkpoint); writes nothing.

  Raises:
    ValueError: ``workdir`` holds a run of another config (naming the differences).
  """
  diffs = layout.config_differences(workdir, config)
  if not diffs:
    return layout.stored_config(workdir) is None
  if not has_checkpoint(workdir):
    say(f'{workdir} holds the config.json of a start that never reached a checkpoint; '
        'replacing it')
    return True
  raise ValueError(
      f'use another --workdir: {workdir!r} holds a run with a different config, and it is '
      'never overwritten. Differences: ' + '; '.join(diffs) + '. To train a finished run '
      'further (more steps or epochs change its schedule), start a new workdir from it: '
      f'--workdir=NEW_DIR --config.init_checkpoint={workdir} (its best checkpoint, quantizer '
      'parameters included; DIR@STEP for another step). Or delete this one to start over.')


def claim_workdir(workdir: str, config, write_config: bool) -> None:
  """Writes ``config.json`` (process 0) once the run is known to start."""
  if write_config and jax.process_index() == 0:
    layout.write_config(workdir, config)


def create_pipeline(config):
  """The input pipeline of ``config.data`` for this host's share of the batch."""
  # Imported here: grain and the image decoders load only for runs that read data
  # themselves (tests and benchmarks pass their own pipeline).
  from n2uq_jax import data  # pylint: disable=g-import-not-at-top
  per_host = config.global_batch_size // jax.process_count()
  return data.create_pipeline(config.data, per_host_batch_size=per_host, seed=config.seed)


def close_iterator(iterator) -> None:
  """Stops a training iterator's workers and frees its batches' shared memory now,
  rather than leaving it to the resource tracker at exit (which reports it leaked)."""
  if not hasattr(iterator, 'close'):  # a plain Python iterator from a test or benchmark
    return
  iterator.close()
  from n2uq_jax import data  # pylint: disable=g-import-not-at-top
  data.release_worker_batches()


def restore_source_model(path: str, name: str, *, num_classes: int, in_channels: int,
                         compute_dtype, mesh) -> tuple[model_lib.ModelDef, Any, Any, str]:
  """``(model_def, params, model_state, where)`` of an ``init_checkpoint`` or
  ``teacher_checkpoint``: for ``torchvision:PATH`` / ``n2uq-official:PATH`` the PyTorch
  model of ``name``'s architecture; else the best checkpoint of the run at ``path``
  (``DIR@STEP`` for another), built as the run's ``config.json`` describes it (so a
  quantized run restores with its quantizer parameters), or as the full-precision
  ``name`` for a bare model checkpoint."""
  replicated = sharding.replicated(mesh)
  if interop_checkpoints.parse(path) is not None:
    if in_channels != 3:
      raise ValueError(f'{path!r} holds a model of RGB images, but the data has {in_channels} '
                       'channels')
    model = interop_checkpoints.load(path, model_name=name, num_classes=num_classes,
                                     dtype=compute_dtype)
    model_def, params, model_state = model_lib.split_model(model)
    params, model_state = jax.device_put((params, model_state), replicated)
    return model_def, params, model_state, path
  variant, kwargs = None, {}
  source = run_restore.source_variant(path)
  if source is not None and not source[1].is_full_precision:
    name, variant, kwargs = source
  # Abstract: the restore provides every value, so nothing is initialised.
  model = nnx.eval_shape(lambda: model_lib.build_model(
      name, variant, num_classes=num_classes, in_channels=in_channels, seed=0,
      compute_dtype=compute_dtype, kwargs=kwargs))
  model_def, params, model_state = model_lib.split_model(model)
  abstract = lambda tree: run_restore.abstract(tree, jax.tree.map(lambda _: replicated, tree))
  params, model_state, where = run_checkpoints.restore_model(
      path, abstract(params), abstract(model_state), select=run_checkpoints.BEST)
  return model_def, params, model_state, where


@dataclasses.dataclass(frozen=True)
class Sources:
  """What a run starts from: its initialisation and its teacher (each optional)."""
  init: tuple[model_lib.ModelDef, Any, Any, str] | None
  teacher_def: model_lib.ModelDef | None
  teacher: dict[str, Any] | None
  teacher_where: str | None


def restore_sources(config, *, num_classes: int, in_channels: int, mesh) -> Sources:
  """Restores ``init_checkpoint`` and, for ``loss='kd'``, ``teacher_checkpoint``."""
  dtype = model_lib.compute_dtype(config.compute_dtype)
  restore = lambda path, name: restore_source_model(
      path, name, num_classes=num_classes, in_channels=in_channels, compute_dtype=dtype,
      mesh=mesh)
  init = restore(config.init_checkpoint, config.init_model or config.fp_model) if (
      config.init_checkpoint) else None
  teacher_def = teacher = where = None
  if config.loss == 'kd':
    teacher_def, params, model_state, where = restore(
        config.teacher_checkpoint, config.teacher_model or config.fp_model)
    teacher = {'params': params, 'model_state': model_state}
  return Sources(init, teacher_def, teacher, where)


def initialize_from(model: nnx.Module, name: str, sources: Sources, config, label: str) -> None:
  """Copies every matching variable of the initialisation into ``model`` (SPEC 4.6).

  Raises:
    ValueError: the checkpoint shares no variable with ``model``.
  """
  if sources.init is None:
    return
  src_def, src_params, src_state, where = sources.init
  copied = models.transfer_params(src_def.merge(src_params, src_state, train=True), model)
  say(f'[{label}] initialised {len(copied)} variables of {name} from {where}')
  if not copied:
    raise ValueError(f'init_checkpoint={config.init_checkpoint!r} (model '
                     f'{config.init_model or config.fp_model!r}) shares no variable with '
                     f'{name!r}; set init_model to the model that wrote the checkpoint')


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The optimizer and the sharded state of one run (see :func:`create_train_state`)."""
  model_def: model_lib.ModelDef
  tx: Any
  schedule: Any
  state: step_lib.TrainState
  state_shardings: step_lib.TrainState
  has_n2uq: bool


def create_train_state(config, model: nnx.Module, name: str, *, steps_per_epoch: int,
                       total_steps: int, mesh) -> TrainSetup:
  """The optimizer groups and schedule of ``config`` and the train state of ``model``,
  laid out over ``mesh`` (parameters and optimizer state FSDP-sharded above
  ``mesh.fsdp_min_size`` elements, the rest replicated)."""
  labels = optimizer_lib.param_labels(model, quirk_q1=config.quirk_q1, model_name=name)
  schedule = optimizer_lib.make_schedule(config, steps_per_epoch, total_steps)
  tx = optimizer_lib.make_optimizer(config, labels, schedule)
  model_def, params, model_state = model_lib.split_model(model)
  has_n2uq = any(isinstance(n, nn.N2UQActivation) for _, n in nnx.iter_graph(model))
  min_size = config.mesh.fsdp_min_size
  init = lambda p, s: step_lib.init_state(p, s, tx)
  abstract_state = jax.eval_shape(init, params, model_state)
  shard = lambda tree: sharding.tree_shardings(tree, mesh, min_size=min_size)
  state_shardings = step_lib.TrainState(
      step=sharding.replicated(mesh), params=shard(abstract_state.params),
      model_state=shard(abstract_state.model_state), opt_state=shard(abstract_state.opt_state))
  state = jax.jit(init, out_shardings=state_shardings)(params, model_state)
  return TrainSetup(model_def, tx, schedule, state, state_shardings, has_n2uq)
