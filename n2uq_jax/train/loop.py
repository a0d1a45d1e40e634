"""The training loop: one variant (:func:`train_and_evaluate`) or the variants of a
config in order (:func:`run`).

Resuming: a run directory keeps ``config.json``. Starting again on the same directory
resumes from the latest checkpoint in ``checkpoints/`` (parameters, optimizer, step and
data-iterator state, so the continuation is bit-identical to an uninterrupted run on
the same devices). A config that differs from ``config.json`` in any field other than
:data:`n2uq_jax.runs.layout.RUNTIME_FIELDS` is refused with a ``ValueError`` that lists
the differences: a run is never silently overwritten. A ``config.json`` without any
checkpoint (a start that failed) is replaced.

The pieces, in the order :func:`train_and_evaluate` runs them: the checks and the
state (:mod:`n2uq_jax.train.setup`), the compiled steps (:func:`compile_steps`), the
steps themselves with their bookkeeping (:class:`Session`, :class:`StepLog`), and
:func:`evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from n2uq_jax.runs import model as model_lib
from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import config_lib, distributed, metrics as metrics_lib, preemption
from n2uq_jax.train import setup as setup_lib
from n2uq_jax.train import sharding, step as step_lib

say = setup_lib.say

SLOW_PHASE_SECONDS = 5.0
"""A compile or an evaluation still running after this long is announced on the console."""


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


@contextlib.contextmanager
def announce_if_slow(what: str):
  """Says ``what`` once it has run :data:`SLOW_PHASE_SECONDS`, and then how long it took,
  so that a long compile or evaluation is not a silent pause."""
  start = time.perf_counter()
  timer = threading.Timer(SLOW_PHASE_SECONDS, lambda: say(f'{what} ...'))
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()
    if time.perf_counter() - start >= SLOW_PHASE_SECONDS:
      say(f'{what}: done in {time.perf_counter() - start:.1f} s')


@dataclasses.dataclass(frozen=True)
class Steps:
  """The jitted steps of one run."""
  train: distributed.SyncedJit
  eval: distributed.SyncedJit
  quantizer_stats: distributed.SyncedJit


def compile_steps(config, setup: setup_lib.TrainSetup, teacher_def, mesh) -> Steps:
  """The train, evaluation and quantizer-statistics steps (compiled on first use).

  Each is a :class:`~n2uq_jax.train.distributed.SyncedJit`: with several processes,
  every process compiles before any runs, so a slow compile on one host does not make
  the first collective of the others time out.
  """
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(
      step_lib.make_train_step(setup.model_def, setup.tx, setup.schedule, loss=config.loss,
                               label_smoothing=config.label_smoothing,
                               kd_temperature=config.kd_temperature, teacher_def=teacher_def),
      out_shardings=(setup.state_shardings, replicated), donate_argnums=(0,))
  eval_step = jax.jit(step_lib.make_eval_step(setup.model_def), out_shardings=replicated)
  stats = jax.jit(step_lib.make_quantizer_stats_fn(setup.model_def), out_shardings=replicated)
  return Steps(distributed.SyncedJit(train_step, 'train_step'),
               distributed.SyncedJit(eval_step, 'eval_step'),
               distributed.SyncedJit(stats, 'quantizer_stats'))


def evaluate(steps: Steps, state, pipeline, mesh, *, with_quantizers: bool) -> dict[str, Any]:
  """``{'eval_accuracy', 'eval_loss'}`` over every evaluation example (padding masked),
  and with ``with_quantizers`` the N2UQ layers' thresholds and level occupancy on the
  first batch (``quantizers``, see :func:`n2uq_jax.train.metrics.quantizer_summary`)."""
  totals = quantizers = None
  for batch in pipeline.eval_batches():
    batch = sharding.global_batch(batch, mesh)
    sums = steps.eval(state.params, state.model_state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if quantizers is None and with_quantizers:
      quantizers = steps.quantizer_stats(state.params, state.model_state, batch['image'],
                                         batch['mask'])
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  record = {'eval_accuracy': float(totals['correct']) / count,
            'eval_loss': float(totals['loss']) / count}
  if quantizers is not None:
    record['quantizers'] = metrics_lib.quantizer_summary(jax.device_get(quantizers))
  return record


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class StepLog:
  """The steps since the last log line: their metrics stay on the device until the
  line is written (fetching them every step would make the host wait for each step),
  and their ``finite`` flags are checked there, or before anything is saved.

  Args:
    label: the variant's name, for messages.
    stop_on_nonfinite: ``nonfinite_policy == 'stop'``.
    batch_size: the global batch size (for images per second).
    latest_checkpoint: returns the latest checkpoint step (named in the error).
  """

  def __init__(self, label: str, *, stop_on_nonfinite: bool, batch_size: int,
               latest_checkpoint: Callable[[], int | None]):
    self.label = label
    self.stop_on_nonfinite = stop_on_nonfinite
    self.batch_size = batch_size
    self.latest_checkpoint = latest_checkpoint
    self.pending: list[tuple[int, Any]] = []
    self.checked = 0  # entries of `pending` whose `finite` flag has been checked
    self.nonfinite_steps = 0
    self.restart_clock()

  def restart_clock(self) -> None:
    """Starts timing the window anew (after an evaluation or a checkpoint)."""
    self.window_start, self.window_steps = time.perf_counter(), 0

  def add(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))
    self.window_steps += 1

  def check_finite(self) -> None:
    """Raises DivergenceError (policy 'stop') if a pending step was not finite."""
    if not self.stop_on_nonfinite or self.checked == len(self.pending):
      return
    flags = jax.device_get([m['finite'] for _, m in self.pending[self.checked:]])
    for (bad_step, _), flag in zip(self.pending[self.checked:], flags):
      if not flag:
        raise step_lib.DivergenceError(
            f'[{self.label}] non-finite loss or gradient at step {bad_step}; the update was '
            f'not applied and the run stops (latest checkpoint: step '
            f'{self.latest_checkpoint()}). Lower the learning rate, or set '
            "--config.nonfinite_policy=skip to skip such steps")
    self.checked = len(self.pending)

  def close_window(self, step: int) -> dict[str, Any]:
    """The log record of the window ending at ``step`` (means over the applied steps,
    images per second, skipped steps); starts the next window."""
    self.check_finite()
    values = jax.device_get([m for _, m in self.pending])
    elapsed = time.perf_counter() - self.window_start
    record = {'step': step}
    applied = [v for v in values if v['finite']] or values
    for key in ('loss', 'accuracy', 'learning_rate'):
      record[key] = float(np.mean([v[key] for v in applied]))
    record['images_per_second'] = self.window_steps * self.batch_size / max(elapsed, 1e-9)
    skipped = sum(not v['finite'] for v in values)
    if skipped:
      self.nonfinite_steps += skipped
      record['nonfinite_steps'] = skipped
      logging.warning('[%s] skipped %d non-finite step(s) up to step %d', self.label,
                      skipped, step)
    self.pending, self.checked = [], 0
    self.restart_clock()
    return record


class Session:
  """One session of one run: the steps from ``start_step`` to the end (or a stop), with
  logging, evaluation, the best checkpoint and the regular checkpoints.

  The loop body (:meth:`train`) runs one step and then the boundaries that fall on it,
  in this order: the log line, the evaluation, the checkpoint, a stop request.
  """

  def __init__(self, config, *, label: str, workdir: str, pipeline, mesh, steps: Steps,
               state, start_step: int, total_steps: int, teacher, with_quantizers: bool,
               ckpt: checkpoint_lib.Checkpointer, iterator, writer: metrics_lib.MetricsWriter):
    self.config, self.label, self.workdir = config, label, workdir
    self.pipeline, self.mesh, self.steps, self.teacher = pipeline, mesh, steps, teacher
    self.state, self.step, self.start_step = state, start_step, start_step
    self.total_steps, self.with_quantizers = total_steps, with_quantizers
    self.ckpt, self.iterator, self.writer = ckpt, iterator, writer
    self.evaluate_during = config.eval_every_steps >= 0
    self.eval_every = config.eval_every_steps or pipeline.steps_per_epoch
    self.best_accuracy = ckpt.best_accuracy()
    self.last_eval = None
    self.stopped_by = None
    self.eval_seconds = 0.0
    self.loop_start = time.perf_counter()
    self.log = StepLog(label, stop_on_nonfinite=config.nonfinite_policy == 'stop',
                       batch_size=config.global_batch_size,
                       latest_checkpoint=ckpt.latest_step)
    self.bar = self._progress_bar() if config.progress_bar and jax.process_index() == 0 else None
    self.postfix = {}

  def _progress_bar(self):
    # Imported here: tqdm is needed only when a bar is shown (never in tests).
    from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
    return tqdm_auto.tqdm(total=self.total_steps, initial=self.start_step, unit='step',
                          dynamic_ncols=True, desc=self.label, smoothing=0.1)

  def _compile(self, batch):
    with announce_if_slow(f'[{self.label}] compiling the train step (first step)'):
      t0 = time.perf_counter()
      compiled = self.steps.train.compile(self.state, batch, self.teacher)
      compile_seconds = time.perf_counter() - t0
    self.writer.write({'step': self.step, 'compile_seconds': round(compile_seconds, 3)})
    # The clocks start after the compile: it is not training time.
    self.loop_start = time.perf_counter()
    self.log.restart_clock()
    return compiled

  def train(self, stop: preemption.StopRequest, stop_after_step: int | None) -> None:
    """Runs steps until the end, a stop request, or ``stop_after_step``."""
    compiled = None
    while self.step < self.total_steps:
      batch = sharding.global_batch(next(self.iterator), self.mesh)
      if compiled is None:
        compiled = self._compile(batch)
      self.state, metrics = compiled(self.state, batch, self.teacher)
      self.step += 1
      self.log.add(self.step, metrics)
      if self.bar is not None:
        self.bar.update(1)
      self._boundaries()
      if stop.should_stop() and self.step < self.total_steps:
        self.stopped_by = stop.signal_name or 'a stop request of another process'
        self.save_checkpoint()
        return
      if stop_after_step is not None and stop_after_step <= self.step < self.total_steps:
        return

  def _due(self, every: int) -> bool:
    return self.step % every == 0 or self.step == self.total_steps

  def _boundaries(self) -> None:
    if self._due(self.config.log_every_steps):
      self._write_log(self.log.close_window(self.step))
    if self.evaluate_during and self._due(self.eval_every):
      self.log.check_finite()
      self.evaluate_and_keep_best()
      self.log.restart_clock()
    if self._due(self.config.checkpoint_every_steps):
      self.save_checkpoint()
      self.log.restart_clock()

  def _write_log(self, record: dict[str, Any]) -> None:
    self.writer.write(record)
    done = self.step - self.start_step
    train_time = time.perf_counter() - self.loop_start - self.eval_seconds
    eta = train_time / max(done, 1) * (self.total_steps - self.step)
    line = (f'[{self.label}] step {self.step}/{self.total_steps}: loss {record["loss"]:.4f}, '
            f'{record["images_per_second"]:.0f} images/s, ETA {_duration(eta)}')
    if self.bar is None:
      say(line)
    else:  # the bar shows the same numbers
      logging.info(line)
      self.postfix.update(loss=f'{record["loss"]:.4f}', acc=f'{record["accuracy"]:.3f}',
                          img_s=f'{record["images_per_second"]:.0f}')
      self.bar.set_postfix(self.postfix)

  def save_checkpoint(self) -> None:
    # Only steps known to be finite are saved: a checkpoint of a diverged step would
    # be resumed from.
    self.log.check_finite()
    if self.ckpt.latest_step() != self.step:
      self.ckpt.save(self.step, self.state, self.iterator.get_state())

  def evaluate_and_keep_best(self) -> dict[str, Any]:
    t0 = time.perf_counter()
    with announce_if_slow(f'[{self.label}] evaluating at step {self.step}'):
      record = {'step': self.step, **evaluate(self.steps, self.state, self.pipeline, self.mesh,
                                              with_quantizers=self.with_quantizers)}
    self.writer.write(record)
    accuracy = record['eval_accuracy']
    if self.best_accuracy is None or accuracy > self.best_accuracy:
      if self.ckpt.save_best(self.step, self.state, accuracy):
        self.best_accuracy = accuracy
    self.eval_seconds += time.perf_counter() - t0
    self.last_eval = record
    message = f'[{self.label}] step {self.step}: eval accuracy {accuracy:.4f}'
    if self.bar is None:
      say(message)
    else:
      logging.info(message)
      self.postfix['eval_acc'] = f'{accuracy:.4f}'
      self.bar.set_postfix(self.postfix)
    return record

  def finish(self) -> float:
    """The final evaluation (unless stopped or just evaluated); waits for the saves in
    flight. Returns the training seconds of this session (compile and evaluations
    excluded)."""
    train_seconds = time.perf_counter() - self.loop_start - self.eval_seconds
    if self.stopped_by is None and self.evaluate_during and (
        self.last_eval is None or self.last_eval['step'] != self.step):
      self.evaluate_and_keep_best()
    # The checkpoint of a stop must have committed before the process exits.
    self.ckpt.wait()
    if self.stopped_by is not None:
      say(f'[{self.label}] stopped by {self.stopped_by} after step {self.step} of '
          f'{self.total_steps}; checkpoint {self.step} saved in '
          f'{os.path.join(self.workdir, "checkpoints")}. Run the same command again to resume')
    return train_seconds

  def summary(self, *, model_name: str, train_seconds: float) -> dict[str, Any]:
    """The record that ends the session in ``metrics.jsonl`` (see :func:`train_and_evaluate`)."""
    last = self.last_eval or {}
    return {
        'summary': True, 'variant': self.label, 'model': model_name, 'step': int(self.step),
        'total_steps': int(self.total_steps),
        'final_eval_accuracy': last.get('eval_accuracy'), 'final_eval_loss': last.get('eval_loss'),
        'best_eval_accuracy': self.best_accuracy, 'train_seconds': round(train_seconds, 3),
        'already_finished': self.start_step >= self.total_steps,
        'workdir': self.workdir, 'preempted': self.stopped_by,
        'nonfinite_steps': self.log.nonfinite_steps,
    }

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    self.ckpt.close()
    setup_lib.close_iterator(self.iterator)


def _total_steps(config, steps_per_epoch: int) -> int:
  return (config.num_train_steps if config.num_train_steps > 0
          else config.num_epochs * steps_per_epoch)


def train_and_evaluate(config, workdir: str, *, pipeline=None, mesh=None,
                       stop_after_step: int | None = None) -> dict[str, Any]:
  """Trains the single variant of ``config`` in ``workdir`` and evaluates it.

  Args:
    config: a training config naming exactly one variant (see :func:`run`).
    workdir: the run directory (created once every check has passed; resumed if it
      holds a checkpoint).
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
  variant = setup_lib.check_arguments(config)
  workdir = os.path.abspath(workdir)
  mesh = mesh or sharding.create_mesh(config.mesh.fsdp)
  sharding.check_batch_size(config.global_batch_size, mesh)
  write_config = setup_lib.check_workdir(workdir, config)
  if pipeline is None:
    pipeline = setup_lib.create_pipeline(config)
  total_steps = _total_steps(config, pipeline.steps_per_epoch)
  num_classes, in_channels = pipeline.num_classes, pipeline.image_shape[-1]
  sources = setup_lib.restore_sources(config, num_classes=num_classes,
                                      in_channels=in_channels, mesh=mesh)
  name, model = model_lib.build_variant_model(config, variant, num_classes=num_classes,
                                              in_channels=in_channels)
  setup_lib.initialize_from(model, name, sources, config, variant.name)
  if sources.teacher is not None:
    say(f'[{variant.name}] teacher {config.teacher_model or config.fp_model} from '
        f'{sources.teacher_where}')
  setup = setup_lib.create_train_state(config, model, name, mesh=mesh, total_steps=total_steps,
                                       steps_per_epoch=pipeline.steps_per_epoch)
  del model
  # Every check has passed: only now does the workdir get its first file.
  setup_lib.claim_workdir(workdir, config, write_config)
  steps = compile_steps(config, setup, sources.teacher_def, mesh)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                                     async_save=config.async_checkpointing)
  iterator = pipeline.train_iterator()
  state, start_step = setup.state, 0
  if ckpt.latest_step() is not None:
    state, data_state, start_step = ckpt.restore(
        checkpoint_lib.abstract(state, setup.state_shardings))
    iterator.set_state(data_state)
    say(f'[{variant.name}] {workdir} is already finished at step {start_step}'
        if start_step >= total_steps else
        f'[{variant.name}] resumed {workdir} from step {start_step}')
  writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.tensorboard,
                                     enabled=jax.process_index() == 0)
  session = Session(config, label=variant.name, workdir=workdir, pipeline=pipeline, mesh=mesh,
                    steps=steps, state=state, start_step=start_step, total_steps=total_steps,
                    teacher=sources.teacher, with_quantizers=setup.has_n2uq, ckpt=ckpt,
                    iterator=iterator, writer=writer)
  stop = preemption.StopRequest(mesh)
  stop.install()
  try:
    session.train(stop, stop_after_step)
    train_seconds = session.finish()
  finally:
    stop.uninstall()
    session.close()
  summary = session.summary(model_name=name, train_seconds=train_seconds)
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
