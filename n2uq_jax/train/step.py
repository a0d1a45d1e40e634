"""The training state and the jitted train, eval and quantizer-statistics steps.

The model lives as pure pytrees: ``params`` (every ``nnx.Param``, quantizer
parameters included) and ``model_state`` (everything else, i.e. BatchNorm running
statistics), nested dicts from ``nnx.to_pure_dict``. Inside a step they are merged
back into the NNX module with a static graph definition (one for training mode, one
for evaluation mode), so the step is a pure function that ``jax.jit`` shards.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from n2uq_jax import nn, quant
from n2uq_jax.runs.model import ModelDef, compute_dtype, split_model  # pylint: disable=unused-import
from n2uq_jax.train import losses


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: pure dict of every ``nnx.Param`` (float32 master weights).
    model_state: pure dict of the other variables (BatchNorm statistics).
    opt_state: the optax state.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def init_state(params, model_state, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params))


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, loss: str = 'ce', label_smoothing: float = 0.0,
                    kd_temperature: float = 1.0,
                    teacher_def: ModelDef | None = None) -> Callable:
  """The (unjitted) train step ``(state, batch, teacher) -> (state, metrics)``.

  Args:
    model_def: graph definitions of the student.
    tx: the optimizer.
    schedule: base LR by step, only for the logged ``learning_rate``.
    loss: ``'kd'`` (soft targets from the teacher, SPEC 5) or ``'ce'``.
    label_smoothing, kd_temperature: loss options.
    teacher_def: graph definitions of the teacher (``loss='kd'``).

  The step's ``batch`` is ``{"image": (B, H, W, C) float32, "label": (B,) int32}``,
  ``teacher`` is ``{"params", "model_state"}`` of the frozen teacher or ``None``.
  Metrics: ``loss``, ``accuracy`` (training batch, before the update),
  ``learning_rate`` (the base LR of this update) and ``finite`` (bool: the loss, every
  gradient and every updated parameter are finite).

  A non-finite step is not applied: ``params``, ``model_state`` and ``opt_state`` stay
  as they were and only ``step`` advances (its batch is consumed). The training loop
  then stops or counts the skipped step (``nonfinite_policy``), and a checkpoint never
  holds non-finite parameters.
  """
  if loss == 'kd' and teacher_def is None:
    raise ValueError("loss='kd' needs a teacher")

  def train_step(state: TrainState, batch, teacher):
    images, labels = batch['image'], batch['label']
    if loss == 'kd':
      teacher_model = teacher_def.merge(teacher['params'], teacher['model_state'], train=False)
      teacher_logits = jax.lax.stop_gradient(teacher_model(images))

    def loss_fn(params):
      model = model_def.merge(params, state.model_state, train=True)
      logits = model(images)
      _, _, new_model_state = nnx.split(model, nnx.Param, ...)
      if loss == 'kd':
        value = losses.distillation(logits, teacher_logits, temperature=kd_temperature)
      else:
        value = losses.cross_entropy(logits, labels, label_smoothing=label_smoothing)
      return value, (logits, nnx.to_pure_dict(new_model_state))

    (value, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = all_finite((value, grads, params))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {
        'loss': value,
        'accuracy': jnp.mean(losses.correct(logits, labels)),
        'learning_rate': jnp.asarray(schedule(state.step), jnp.float32),
        'finite': finite,
    }
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              model_state=keep(model_state, state.model_state),
                              opt_state=keep(opt_state, state.opt_state))
    return new_state, metrics

  return train_step


def all_finite(tree) -> jax.Array:
  """Scalar bool: every element of every floating-point leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class DivergenceError(FloatingPointError):
  """Training met a non-finite loss or gradient with ``nonfinite_policy='stop'``."""


def make_eval_step(model_def: ModelDef) -> Callable:
  """``(params, model_state, batch) -> sums``: ``correct``, ``loss`` (cross-entropy)
  and ``count`` summed over the rows whose ``mask`` is true."""

  def eval_step(params, model_state, batch):
    model = model_def.merge(params, model_state, train=False)
    logits = model(batch['image'])
    mask = batch['mask'].astype(jnp.float32)
    targets = jax.nn.one_hot(batch['label'], logits.shape[-1], dtype=jnp.float32)
    per_example = optax.softmax_cross_entropy(logits, targets)
    return {
        'correct': jnp.sum(losses.correct(logits, batch['label']) * mask),
        'loss': jnp.sum(per_example * mask),
        'count': jnp.sum(mask),
    }

  return eval_step


def _layer_name(path) -> str:
  parts = [str(p) for p in path]
  if parts and parts[-1] == 'input_quantizer':
    parts = parts[:-1]
  return '.'.join(parts)


def make_quantizer_stats_fn(model_def: ModelDef) -> Callable:
  """``(params, model_state, images, mask) -> {layer: {"counts", "thresholds"}}`` for
  every N2UQ activation quantizer, on one batch in evaluation mode.

  ``counts`` (``2**bits``,) is the occupancy of each output level ``k`` over the
  quantizer's input tensor (rows with ``mask`` false excluded), from
  :func:`n2uq_jax.quant.n2uq_activation_codes`; ``thresholds`` (``2**bits - 1``,) are
  the learned thresholds in input units, ``T_i / input_scale`` (SPEC 2.2). Layers are
  named by the dotted path of the quantized conv (``"layer1.0.conv1"``).
  """

  def stats(params, model_state, images, mask):
    model = model_def.merge(params, model_state, train=False)
    found = {}
    for path, node in nnx.iter_graph(model):
      if isinstance(node, nn.N2UQActivation):
        found[_layer_name(path)] = node
    records = {}

    class _Recording(nn.N2UQActivation):
      # Replaces the class of the (fresh, traced) quantizer instances only.
      def __call__(self, x):
        codes = self.codes(x)
        weights = jnp.broadcast_to(
            mask.reshape((-1,) + (1,) * (codes.ndim - 1)), codes.shape).astype(jnp.float32)
        counts = jnp.zeros((2 ** self.bits,), jnp.float32).at[codes.reshape(-1)].add(
            weights.reshape(-1))
        p = self.params()
        records[names[id(self)]] = {
            'counts': counts,
            'thresholds': quant.thresholds(p.offset, p.intervals) / p.input_scale,
        }
        return super().__call__(x)

    names = {}
    for name, node in found.items():
      if type(node) is nn.N2UQActivation:
        node.__class__ = _Recording
        names[id(node)] = name
    model(images)
    return records

  return stats


jit_donating_state = functools.partial(jax.jit, donate_argnums=(0,))
