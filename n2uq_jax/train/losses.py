"""Losses: cross-entropy with label smoothing, and knowledge distillation (SPEC 5).

All losses take float32 logits ``(B, C)`` and return the mean over the batch; an
optional boolean ``mask`` ``(B,)`` drops padded rows from the mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return jnp.mean(values)
  weights = mask.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                  mask: jax.Array | None = None) -> jax.Array:
  """``mean_b -sum_c q_bc log softmax(z_b)_c`` with ``q = (1 - eps) onehot + eps / C``.

  Args:
    logits: ``(B, C)``.
    labels: int ``(B,)`` in ``0..C-1``.
    label_smoothing: ``eps`` in ``[0, 1)``.
    mask: optional bool ``(B,)``.
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  return _masked_mean(per_example, mask)


def distillation(student_logits: jax.Array, teacher_logits: jax.Array, *,
                 temperature: float = 1.0, mask: jax.Array | None = None) -> jax.Array:
  """The official KD loss (SPEC 5): ``T^2 mean_b -sum_c p_bc log q_bc`` with
  ``p = softmax(z_teacher / T)`` and ``q = softmax(z_student / T)``.

  At ``T = 1`` (the recipe) this is exactly the soft-target cross-entropy of the
  official code, without a hard-label term. The teacher receives no gradient.

  Args:
    student_logits, teacher_logits: ``(B, C)``.
    temperature: ``T > 0``.
    mask: optional bool ``(B,)``.
  """
  if temperature <= 0:
    raise ValueError(f'temperature={temperature!r} must be positive')
  teacher = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  targets = jax.nn.softmax(teacher / temperature, axis=-1)
  log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  per_example = -jnp.sum(targets * log_probs, axis=-1)
  return temperature ** 2 * _masked_mean(per_example, mask)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Top-1 hits, float32 ``(B,)``."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
