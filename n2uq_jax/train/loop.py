"""The training loop: one variant (:func:`train_and_evaluate`) or the variants of a
config in order (:func:`run`).

Resuming: a run directory keeps ``config.json``. Starting again on the same directory
resumes from the latest checkpoint in ``checkpoints/`` (parameters, optimizer, step and
data-iterator state, so the continuation is bit-identical to an uninterrupted run on
the same devices). A config that differs from ``config.json`` in any field other than
:data:`n2uq_jax.train.config_lib.RUNTIME_FIELDS` is refused with a ``ValueError`` that
lists the differences: a workdir is never silently overwritten.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from n2uq_jax import models, nn
from n2uq_jax.interop import checkpoints as interop_checkpoints
from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import config_lib, metrics as metrics_lib, optimizer as optimizer_lib
from n2uq_jax.train import distributed, preemption, sharding, step as step_lib


def _say(message: str) -> None:
  """Progress messages for the person at the terminal (process 0 only)."""
  logging.info(message)
  if jax.process_index() == 0:
    print(message, flush=True)


def initialize_distributed(config) -> None:
  """``jax.distributed.initialize`` when ``config.distributed.enabled`` (once, before
  any other JAX call); see :func:`n2uq_jax.train.distributed.initialize`."""
  distributed.initialize(config.distributed)


def configure_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in ``directory`` (empty: off)."""
  if not directory:
    return
  path = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def _check_workdir_config(workdir: str, config) -> None:
  path = os.path.join(workdir, 'config.json')
  current = config_lib.comparable(config)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      stored = json.load(f)
    diffs = config_lib.differences(stored, current)
    if diffs:
      raise ValueError(
          f'workdir {workdir!r} holds a run with a different config; refusing to overwrite '
          'it. Differences: ' + '; '.join(diffs) + '. To train a finished run further (more '
          'steps or epochs change its schedule), start a new workdir from it: '
          f'--workdir=NEW_DIR --config.init_checkpoint={workdir} (its best checkpoint, '
          'quantizer parameters included; DIR@STEP for another step). Or use another '
          '--workdir, or delete this one to start over.')
  elif jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(current, f, indent=2, sort_keys=True)


def build_model(name: str, variant: config_lib.Variant | None, *, num_classes: int,
                in_channels: int, seed: int, compute_dtype=None, kwargs=None) -> nnx.Module:
  """A registry model; ``variant`` None builds it at full precision."""
  policy = config_lib.quant_policy(variant) if variant is not None else (
      nn.QuantPolicy.full_precision())
  return models.create_model(name, num_classes=num_classes, policy=policy,
                             rngs=nnx.Rngs(seed), dtype=compute_dtype,
                             in_channels=in_channels, **(kwargs or {}))


def _source_run_model(path: str) -> tuple[str, config_lib.Variant, dict[str, Any]] | None:
  """``(model name, variant, model kwargs)`` of the run that wrote the checkpoint at
  ``path`` (a run directory, its ``best``/``checkpoints`` manager, either with
  ``@STEP``), read from the run's ``config.json``; None when there is none (a bare
  model checkpoint, which then holds a full-precision model)."""
  directory = os.path.abspath(os.path.expanduser(path.rpartition('@')[0] if '@' in
                                                 os.path.basename(path) else path))
  for run_dir in (directory, os.path.dirname(directory)):
    config_path = os.path.join(run_dir, 'config.json')
    if os.path.isfile(config_path):
      with open(config_path, encoding='utf-8') as f:
        stored = json.load(f)
      variant = config_lib.parse_variant(stored['variants'], stored['method'])
      kwargs = stored.get('fp_model_kwargs' if variant.is_full_precision else 'model_kwargs')
      name = stored['fp_model'] if variant.is_full_precision else stored['model']
      return name, variant, dict(kwargs or {})
  return None


def _restore_fp_model(path: str, name: str, *, num_classes: int, in_channels: int,
                      compute_dtype, mesh) -> tuple[step_lib.ModelDef, Any, Any, str]:
  """The model of a checkpoint: for ``torchvision:PATH`` / ``n2uq-official:PATH`` the
  PyTorch model of ``name``'s architecture (``n2uq_jax.interop.checkpoints``); else
  built as its run's ``config.json`` describes it (so a quantized run restores with
  its quantizer parameters), else as the full-precision ``name``."""
  replicated = sharding.replicated(mesh)
  if interop_checkpoints.parse(path) is not None:
    if in_channels != 3:
      raise ValueError(f'{path!r} holds a model of RGB images, but the data has {in_channels} '
                       'channels')
    model = interop_checkpoints.load(path, model_name=name, num_classes=num_classes,
                                     dtype=compute_dtype)
    model_def, params, model_state = step_lib.split_model(model)
    params, model_state = jax.device_put((params, model_state), replicated)
    return model_def, params, model_state, path
  variant, kwargs = None, {}
  source = _source_run_model(path)
  if source is not None and not source[1].is_full_precision:
    name, variant, kwargs = source
  # Abstract: the restore provides every value, so nothing is initialised.
  model = nnx.eval_shape(lambda: build_model(name, variant, num_classes=num_classes,
                                             in_channels=in_channels, seed=0,
                                             compute_dtype=compute_dtype, kwargs=kwargs))
  model_def, params, model_state = step_lib.split_model(model)
  abstract = lambda tree: checkpoint_lib.abstract(tree, jax.tree.map(lambda _: replicated, tree))
  params, model_state, where = checkpoint_lib.restore_model(path, abstract(params),
                                                            abstract(model_state))
  return model_def, params, model_state, where


def _pipeline_for(config, mesh):
  from n2uq_jax import data  # pylint: disable=g-import-not-at-top
  per_host = config.global_batch_size // jax.process_count()
  return data.create_pipeline(config.data, per_host_batch_size=per_host, seed=config.seed)


def train_and_evaluate(config, workdir: str, *, pipeline=None, mesh=None,
                       stop_after_step: int | None = None) -> dict[str, Any]:
  """Trains the single variant of ``config`` in ``workdir`` and evaluates it.

  Args:
    config: a training config naming exactly one variant (see :func:`run`).
    workdir: the run directory (created; resumed if it holds a checkpoint).
    pipeline: an input pipeline with the interface of ``n2uq_jax.data.Pipeline``
      (default: built from ``config.data``).
    mesh: the device mesh (default: all devices, ``config.mesh.fsdp``).
    stop_after_step: stop after this step, after its checkpoint if one is due (to
      simulate a preemption in tests).

  SIGTERM or SIGINT (see :mod:`n2uq_jax.train.preemption`) stops the run after the
  current step (the same step on every process), checkpoints that step with the data
  iterator state, waits for the checkpoint to commit and returns with ``preempted``
  set; running again resumes from there.

  Returns:
    The summary: ``variant``, ``final_eval_accuracy``, ``best_eval_accuracy``,
    ``step``, ``train_seconds``, ``workdir``, ``preempted`` (the signal's name or
    None), ``nonfinite_steps`` (steps skipped for a NaN/inf, this session),
    ``already_finished`` (the workdir held its last step before this call).

  Raises:
    n2uq_jax.train.step.DivergenceError: a non-finite step with
      ``nonfinite_policy='stop'`` (naming the step; no checkpoint is written after it).
    n2uq_jax.train.checkpoint.CheckpointSaveError: a checkpoint could not be written.
  """
  config_lib.validate(config)
  run_variants = config_lib.variants(config)
  if len(run_variants) != 1:
    raise ValueError(f'train_and_evaluate trains one variant, got variants={config.variants!r}; '
                     'use run() for several')
  variant = run_variants[0]
  workdir = os.path.abspath(workdir)
  mesh = mesh or sharding.create_mesh(config.mesh.fsdp)
  sharding.check_batch_size(config.global_batch_size, mesh)
  is_main = jax.process_index() == 0
  if config.loss == 'kd' and not config.teacher_checkpoint:
    raise ValueError(
        "loss='kd' needs teacher_checkpoint: a run directory or checkpoint of "
        f"teacher_model={config.teacher_model or config.fp_model!r}; set "
        "--config.teacher_checkpoint=DIR, or --config.loss=ce")
  _check_workdir_config(workdir, config)
  if pipeline is None:
    pipeline = _pipeline_for(config, mesh)
  steps_per_epoch = pipeline.steps_per_epoch
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  evaluate_during = config.eval_every_steps >= 0
  eval_every = config.eval_every_steps or steps_per_epoch
  dtype = step_lib.compute_dtype(config.compute_dtype)
  num_classes, in_channels = pipeline.num_classes, pipeline.image_shape[-1]

  name = config_lib.model_name(config, variant)
  model = build_model(name, variant, num_classes=num_classes, in_channels=in_channels,
                      seed=config.seed, compute_dtype=dtype,
                      kwargs=config_lib.model_kwargs(config, variant))
  if config.init_checkpoint:
    src_def, src_params, src_state, where = _restore_fp_model(
        config.init_checkpoint, config.init_model or config.fp_model, num_classes=num_classes,
        in_channels=in_channels, compute_dtype=dtype, mesh=mesh)
    copied = models.transfer_params(src_def.merge(src_params, src_state, train=True), model)
    _say(f'[{variant.name}] initialised {len(copied)} variables of {name} from {where}')
    if not copied:
      raise ValueError(f'init_checkpoint={config.init_checkpoint!r} (model '
                       f'{config.init_model or config.fp_model!r}) shares no variable with '
                       f'{name!r}; set init_model to the model that wrote the checkpoint')

  teacher_def = teacher = None
  if config.loss == 'kd':
    teacher_def, t_params, t_state, where = _restore_fp_model(
        config.teacher_checkpoint, config.teacher_model or config.fp_model,
        num_classes=num_classes, in_channels=in_channels, compute_dtype=dtype, mesh=mesh)
    teacher = {'params': t_params, 'model_state': t_state}
    _say(f'[{variant.name}] teacher {config.teacher_model or config.fp_model} from {where}')

  labels = optimizer_lib.param_labels(model, quirk_q1=config.quirk_q1, model_name=name)
  schedule = optimizer_lib.make_schedule(config, steps_per_epoch, total_steps)
  tx = optimizer_lib.make_optimizer(config, labels, schedule)
  model_def, params, model_state = step_lib.split_model(model)
  has_n2uq = any(isinstance(n, nn.N2UQActivation) for _, n in nnx.iter_graph(model))
  del model

  min_size = config.mesh.fsdp_min_size
  replicated = sharding.replicated(mesh)
  abstract_state = jax.eval_shape(lambda p, s: step_lib.init_state(p, s, tx), params, model_state)
  state_shardings = step_lib.TrainState(
      step=replicated,
      params=sharding.tree_shardings(abstract_state.params, mesh, min_size=min_size),
      model_state=sharding.tree_shardings(abstract_state.model_state, mesh, min_size=min_size),
      opt_state=sharding.tree_shardings(abstract_state.opt_state, mesh, min_size=min_size))
  state = jax.jit(lambda p, s: step_lib.init_state(p, s, tx),
                  out_shardings=state_shardings)(params, model_state)

  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                                     async_save=config.async_checkpointing)
  it = pipeline.train_iterator()
  start_step = 0
  if ckpt.latest_step() is not None:
    state, data_state, start_step = ckpt.restore(
        checkpoint_lib.abstract(state, state_shardings))
    it.set_state(data_state)
    _say(f'[{variant.name}] {workdir} is already finished at step {start_step}'
         if start_step >= total_steps else
         f'[{variant.name}] resumed {workdir} from step {start_step}')
  best_accuracy = ckpt.best_accuracy()

  train_step = jax.jit(
      step_lib.make_train_step(model_def, tx, schedule, loss=config.loss,
                               label_smoothing=config.label_smoothing,
                               kd_temperature=config.kd_temperature, teacher_def=teacher_def),
      out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  eval_step = distributed.SyncedJit(
      jax.jit(step_lib.make_eval_step(model_def), out_shardings=replicated), 'eval_step')
  stats_fn = distributed.SyncedJit(
      jax.jit(step_lib.make_quantizer_stats_fn(model_def), out_shardings=replicated),
      'quantizer_stats')

  writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.tensorboard, enabled=is_main)

  def evaluate(state, step):
    totals = None
    quantizers = None
    for batch in pipeline.eval_batches():
      batch = sharding.global_batch(batch, mesh)
      sums = eval_step(state.params, state.model_state, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      if quantizers is None and has_n2uq:
        quantizers = stats_fn(state.params, state.model_state, batch['image'], batch['mask'])
    totals = jax.device_get(totals)
    count = max(float(totals['count']), 1.0)
    record = {'step': step, 'eval_accuracy': float(totals['correct']) / count,
              'eval_loss': float(totals['loss']) / count}
    if quantizers is not None:
      record['quantizers'] = metrics_lib.quantizer_summary(jax.device_get(quantizers))
    writer.write(record)
    return record

  show_bar = bool(config.progress_bar) and is_main
  bar = None
  if show_bar:
    from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
    bar = tqdm_auto.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                         desc=variant.name, smoothing=0.1)
  compiled = None
  pending = []
  postfix = {}
  eval_seconds = 0.0
  loop_start = window_start = time.perf_counter()
  window_steps = 0
  last_eval = None
  step = start_step
  nonfinite_steps = 0
  stopped_by = None
  checked = 0  # entries of `pending` whose `finite` flag has been checked

  def check_finite():
    """Raises DivergenceError (policy 'stop') if a pending step was not finite."""
    nonlocal checked
    if config.nonfinite_policy != 'stop' or checked == len(pending):
      return
    flags = jax.device_get([m['finite'] for _, m in pending[checked:]])
    for (bad_step, _), flag in zip(pending[checked:], flags):
      if not flag:
        raise step_lib.DivergenceError(
            f'[{variant.name}] non-finite loss or gradient at step {bad_step}; the update was '
            f'not applied and the run stops (latest checkpoint: step '
            f'{ckpt.latest_step()}). Lower the learning rate, or set '
            "--config.nonfinite_policy=skip to skip such steps")
    checked = len(pending)

  def save_checkpoint(state, step):
    check_finite()
    if ckpt.latest_step() != step:
      ckpt.save(step, state, it.get_state())

  def eval_and_keep_best(state, step):
    nonlocal best_accuracy, eval_seconds
    t0 = time.perf_counter()
    record = evaluate(state, step)
    if best_accuracy is None or record['eval_accuracy'] > best_accuracy:
      if ckpt.save_best(step, state, record['eval_accuracy']):
        best_accuracy = record['eval_accuracy']
    eval_seconds += time.perf_counter() - t0
    return record

  stop = preemption.StopRequest(mesh)
  stop.install()
  try:
    while step < total_steps:
      batch = sharding.global_batch(next(it), mesh)
      if compiled is None:
        t0 = time.perf_counter()
        compiled = distributed.SyncedJit(train_step, 'train_step').compile(state, batch, teacher)
        compile_seconds = time.perf_counter() - t0
        writer.write({'step': step, 'compile_seconds': round(compile_seconds, 3)})
        loop_start = window_start = time.perf_counter()
      state, step_metrics = compiled(state, batch, teacher)
      step += 1
      pending.append((step, step_metrics))
      window_steps += 1
      if bar is not None:
        bar.update(1)
      if step % config.log_every_steps == 0 or step == total_steps:
        check_finite()
        values = jax.device_get([m for _, m in pending])
        elapsed = time.perf_counter() - window_start
        record = {'step': step}
        applied = [v for v in values if v['finite']] or values
        for key in ('loss', 'accuracy', 'learning_rate'):
          record[key] = float(np.mean([v[key] for v in applied]))
        record['images_per_second'] = window_steps * config.global_batch_size / max(elapsed, 1e-9)
        skipped = sum(not v['finite'] for v in values)
        if skipped:
          nonfinite_steps += skipped
          record['nonfinite_steps'] = skipped
          logging.warning('[%s] skipped %d non-finite step(s) up to step %d', variant.name,
                          skipped, step)
        writer.write(record)
        if bar is not None:
          postfix.update(loss=f'{record["loss"]:.4f}', acc=f'{record["accuracy"]:.3f}',
                         img_s=f'{record["images_per_second"]:.0f}')
          bar.set_postfix(postfix)
        pending, checked = [], 0
        window_start, window_steps = time.perf_counter(), 0
      if evaluate_during and (step % eval_every == 0 or step == total_steps):
        check_finite()
        last_eval = eval_and_keep_best(state, step)
        if bar is not None:
          postfix['eval_acc'] = f'{last_eval["eval_accuracy"]:.4f}'
          bar.set_postfix(postfix)
        window_start, window_steps = time.perf_counter(), 0
      if step % config.checkpoint_every_steps == 0 or step == total_steps:
        save_checkpoint(state, step)
        window_start, window_steps = time.perf_counter(), 0
      if stop.should_stop() and step < total_steps:
        stopped_by = stop.signal_name or 'a stop request of another process'
        save_checkpoint(state, step)
        break
      if stop_after_step is not None and step >= stop_after_step and step < total_steps:
        break
    train_seconds = time.perf_counter() - loop_start - eval_seconds
    if stopped_by is None and evaluate_during and (last_eval is None or
                                                   last_eval['step'] != step):
      last_eval = eval_and_keep_best(state, step)
    ckpt.wait()
    if stopped_by is not None:
      _say(f'[{variant.name}] stopped by {stopped_by} after step {step} of {total_steps}; '
           f'checkpoint {step} saved in {os.path.join(workdir, "checkpoints")}. Run the same '
           'command again to resume')
  finally:
    stop.uninstall()
    if bar is not None:
      bar.close()
    ckpt.close()
    if hasattr(it, 'close'):
      it.close()
  summary = {
      'summary': True,
      'variant': variant.name,
      'model': name,
      'step': int(step),
      'total_steps': int(total_steps),
      'final_eval_accuracy': last_eval['eval_accuracy'] if last_eval else None,
      'final_eval_loss': last_eval['eval_loss'] if last_eval else None,
      'best_eval_accuracy': best_accuracy,
      'train_seconds': round(train_seconds, 3),
      'already_finished': start_step >= total_steps,
      'workdir': workdir,
      'preempted': stopped_by,
      'nonfinite_steps': nonfinite_steps,
  }
  writer.write(summary)
  writer.close()
  return summary


def run(config, workdir: str, *, pipeline=None) -> list[dict[str, Any]]:
  """Trains every variant of ``config.variants`` in order, each in
  ``<workdir>/<variant name>``; with ``chain_variants``, the quantized variants
  initialise from the FP variant of the same run and, unless ``teacher_checkpoint`` is
  set, distil from it.

  Returns:
    One summary per variant (see :func:`train_and_evaluate`).
  """
  config_lib.validate(config)
  initialize_distributed(config)
  configure_compilation_cache(config.compilation_cache_dir)
  summaries = []
  fp_workdir = None
  for variant in config_lib.variants(config):
    variant_dir = os.path.join(os.path.abspath(workdir), variant.name)
    variant_config = config_lib.variant_config(config, variant, fp_workdir)
    summaries.append(train_and_evaluate(variant_config, variant_dir, pipeline=pipeline))
    if summaries[-1]['preempted']:
      break  # the later variants run when the same command is run again
    if variant.is_full_precision:
      fp_workdir = variant_dir
  return summaries
