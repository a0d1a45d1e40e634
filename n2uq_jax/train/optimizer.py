"""Optimizer: parameter groups, learning-rate schedules, optax transformation (SPEC 5).

Parameters are pure nested dicts (``nnx.to_pure_dict`` of the ``nnx.Param`` state).
Two groups:

* ``'quantizer'``: every :class:`n2uq_jax.nn.QuantizerParam` (offsets, intervals,
  scales, PACT clips, LSQ steps), at ``quantizer_lr_multiplier`` (0.1) times the LR;
* ``'default'``: everything else, at the LR.

Weight decay (``weight_decay > 0``, L2 added to the gradient as in PyTorch's Adam) applies
only to the 4-D convolution kernels, in either group: the official ``train.py`` passes
``weight_decay`` to its group of 4-D weights alone (SPEC 5, optimizer groups), so dense
kernels, biases, BatchNorm and RPReLU parameters and quantizer parameters are never decayed.

With ``quirk_q1`` (SPEC 7, Q1) the official ResNet script's grouping is copied: the
``intervals`` of every activation quantizer other than those of ``conv1`` and ``conv2``
(so ``conv3`` of the bottlenecks and the quantized downsample convs) train at the full
LR; their offsets and scales stay at lr/10. For MobileNetV2 the official groups put
``conv1``..``conv3`` intervals at lr/10 and the last conv's PACT clip in the full-LR
group.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from n2uq_jax import nn

QUANTIZER = 'quantizer'
DEFAULT = 'default'

Q1_FULL_LR_PATTERNS = {
    'resnet': ('*.input_quantizer.intervals',),
    'mobilenet_v2': ('*.alpha', '*.input_quantizer.intervals'),
}
"""Under Q1, quantizer parameters (dotted paths) at the full LR, unless also matched by
:data:`Q1_REDUCED_LR_PATTERNS`."""

Q1_REDUCED_LR_PATTERNS = {
    'resnet': ('*.conv1.input_quantizer.intervals', '*.conv2.input_quantizer.intervals'),
    'mobilenet_v2': ('*.conv1.input_quantizer.intervals', '*.conv2.input_quantizer.intervals',
                     '*.conv3.input_quantizer.intervals'),
}


def _family(model_name: str) -> str | None:
  if model_name.startswith('resnet'):
    return 'resnet'
  if model_name.startswith('mobilenet_v2'):
    return 'mobilenet_v2'
  return None


def _path_name(path) -> str:
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '.'.join(parts)


def param_labels(model: nnx.Module, *, quirk_q1: bool = False, model_name: str = '') -> dict:
  """Group label of every parameter, as a nested dict shaped like the pure params.

  Args:
    model: the model (concrete or abstract).
    quirk_q1: copy the official code's grouping of ``intervals`` (SPEC 7, Q1).
    model_name: registry name, which selects the Q1 rules (ResNets, MobileNetV2).
  """
  state = nnx.state(model, nnx.Param)
  family = _family(model_name)
  full = Q1_FULL_LR_PATTERNS.get(family, ()) if quirk_q1 else ()
  reduced = Q1_REDUCED_LR_PATTERNS.get(family, ()) if quirk_q1 else ()

  def label(path, variable):
    if not isinstance(variable, nn.QuantizerParam):
      return DEFAULT
    name = _path_name(path)
    if any(fnmatch.fnmatchcase(name, p) for p in full) and not any(
        fnmatch.fnmatchcase(name, p) for p in reduced):
      return DEFAULT
    return QUANTIZER

  labelled = jax.tree_util.tree_map_with_path(
      label, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(labelled) if isinstance(labelled, nnx.State) else labelled


def labels_by_name(labels: dict) -> dict[str, str]:
  """``{dotted path: label}`` of a labels tree (for logs and tests)."""
  flat = jax.tree_util.tree_flatten_with_path(labels)[0]
  return {_path_name(path): value for path, value in flat}


def per_epoch_linear_decay(base_lr: float, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
  """The official schedule (SPEC 5, Q5): epoch ``e`` (0-based) trains at
  ``base_lr * (1 - (e + 1) / num_epochs)``, so the last epoch runs at 0.

  ``step`` counts optimizer steps from 0; epoch ``e`` is ``floor(step / steps_per_epoch)``.
  """
  if steps_per_epoch < 1 or num_epochs < 1:
    raise ValueError(f'steps_per_epoch={steps_per_epoch} and num_epochs={num_epochs} must be >= 1')

  def schedule(step):
    epoch = jnp.floor_divide(jnp.asarray(step), steps_per_epoch)
    return base_lr * jnp.maximum(0.0, 1.0 - (epoch + 1.0) / num_epochs)

  return schedule


def make_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of ``config.schedule`` over ``total_steps`` steps.

  ``epoch_linear``: :func:`per_epoch_linear_decay` over ``ceil(total_steps /
  steps_per_epoch)`` epochs; ``linear``: per-step linear decay to 0; ``cosine``: linear
  warmup over ``warmup_epochs`` then cosine decay to 0; ``constant``.
  """
  lr = float(config.learning_rate)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  if config.schedule == 'epoch_linear':
    epochs = max(1, math.ceil(total_steps / steps_per_epoch))
    return per_epoch_linear_decay(lr, steps_per_epoch, epochs)
  if config.schedule == 'linear':
    decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
  elif config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  elif config.schedule == 'constant':
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f'schedule={config.schedule!r} is not valid; choose one of '
                     "('epoch_linear', 'linear', 'cosine', 'constant')")
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def conv_kernel_mask(params) -> Any:
  """``True`` for the 4-D parameters (the convolution kernels, HWIO), ``False`` for the
  rest: the parameters the official code decays (SPEC 5)."""
  return jax.tree.map(lambda p: jnp.ndim(p) == 4, params)


def _base_optimizer(config, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  parts = []
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, mask=conv_kernel_mask))
  if config.optimizer == 'adam':
    parts.append(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
  elif config.optimizer == 'sgd':
    parts.append(optax.trace(decay=config.momentum))
  else:
    raise ValueError(f"optimizer={config.optimizer!r} is not valid; choose one of ('adam', 'sgd')")
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def make_optimizer(config, labels: dict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam (or SGD) with the quantizer group at ``quantizer_lr_multiplier`` x the LR and
  ``weight_decay`` on the convolution kernels only (:func:`conv_kernel_mask`).

  Args:
    config: the training config (``optimizer``, ``adam_*``, ``momentum``,
      ``weight_decay``, ``quantizer_lr_multiplier``).
    labels: from :func:`param_labels`.
    schedule: the base learning rate by step.
  """
  multiplier = float(config.quantizer_lr_multiplier)
  return optax.multi_transform(
      {
          DEFAULT: _base_optimizer(config, schedule),
          QUANTIZER: _base_optimizer(config, lambda step: multiplier * schedule(step)),
      },
      labels)
