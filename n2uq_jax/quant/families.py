"""The quantizer families by name: one registry for the NNX layers
(:mod:`n2uq_jax.nn`), the Qwix provider (:mod:`n2uq_jax.qwix`) and the training
methods (:data:`METHODS`).

A family is a pure quantizer with its learned parameters named: ``init`` gives their
initial values, ``apply`` quantizes an operand with them. A layer holds the parameters
as ``nnx`` variables; the Qwix provider creates them on the intercepted module; both
call the same ``apply``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from n2uq_jax.quant import activation, baselines, signed, weight

NONE = 'none'
"""The family of an operand that is not quantized."""

PACT_INIT_ALPHA = 2.0
"""PACT's initial clip, the N2UQ output range."""
LSQ_INIT_RANGE = 2.0
"""LSQ's initial activation range: the step starts at ``LSQ_INIT_RANGE / Q_p``."""
UNIFORM_UPPER = 2.0
"""Upper end of the fixed uniform activation quantizer, ``[0, UNIFORM_UPPER]``."""


@dataclasses.dataclass(frozen=True)
class Family:
  """One quantizer family.

  Attributes:
    name: the family's name in specs, rules and methods.
    description: one line for error messages and docs.
    param_names: the learned parameters, in the order ``init`` creates them.
    init: ``init(bits, operand, dtype) -> {name: value}``; ``operand`` is the tensor
      to quantize (LSQ's weight step is initialised from the kernel).
    apply: ``apply(x, params, bits, channel_axes) -> x_q`` with ``params`` a mapping
      of ``param_names``; ``channel_axes`` (weights only) are the output-channel axes.
  """
  name: str
  description: str
  param_names: tuple[str, ...]
  init: Callable[[int, jax.Array | None, Any], dict[str, jax.Array]]
  apply: Callable[[jax.Array, Mapping[str, jax.Array], int, Sequence[int]], jax.Array]


def _no_params(bits, operand, dtype):
  del bits, operand, dtype
  return {}


def _n2uq_init(initial):
  def init(bits, operand, dtype):
    del operand
    return dict(zip(activation.ActivationParams._fields, initial(bits, dtype)))
  return init


def _n2uq_params(params) -> activation.ActivationParams:
  return activation.ActivationParams(*(params[f] for f in activation.ActivationParams._fields))


def _lsq_activation(x, params, bits, channel_axes):
  del channel_axes
  _, high = baselines.lsq_levels(bits, signed=False)
  features = math.prod(x.shape[1:]) if x.ndim > 1 else x.size
  return baselines.lsq_quantize(x, params['step_size'], bits=bits, signed=False,
                                grad_scale=1.0 / math.sqrt(max(features, 1) * high))


def _lsq_activation_init(bits, operand, dtype):
  del operand
  _, high = baselines.lsq_levels(bits, signed=False)
  return {'step_size': jnp.asarray(LSQ_INIT_RANGE / high, dtype)}


def _n2uq_weight(w, params, bits, channel_axes):
  """:func:`n2uq_weight` with one scale per element of ``channel_axes`` (statistics
  over all other axes)."""
  del params
  channel_axes = tuple(a % w.ndim for a in channel_axes)
  if len(channel_axes) == 1:
    return weight.n2uq_weight(w, bits=bits, channel_axis=channel_axes[0])
  reduce_axes = [i for i in range(w.ndim) if i not in channel_axes]
  order = (*reduce_axes, *channel_axes)
  moved = jnp.transpose(w, order)
  rows = math.prod(moved.shape[:len(reduce_axes)])
  flat = weight.n2uq_weight(moved.reshape(rows, -1), bits=bits, channel_axis=-1)
  return jnp.transpose(flat.reshape(moved.shape), [order.index(i) for i in range(w.ndim)])


def _lsq_weight_init(bits, operand, dtype):
  _, high = baselines.lsq_levels(bits, signed=True)
  return {'step_size': 2 * jnp.mean(jnp.abs(jnp.asarray(operand, dtype))) / math.sqrt(high)}


ACTIVATION_FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family('n2uq', 'N2UQ learned thresholds, uniform output levels (SPEC 2)',
           activation.ActivationParams._fields, _n2uq_init(activation.init_n2uq_activation),
           lambda x, p, bits, _: activation.n2uq_activation(x, *_n2uq_params(p), bits=bits)),
    Family('n2uq_signed', "N2UQ for inputs with a negative half (this project's extension)",
           activation.ActivationParams._fields, _n2uq_init(signed.init_n2uq_activation_signed),
           lambda x, p, bits, _: signed.n2uq_activation_signed(x, *_n2uq_params(p), bits=bits)),
    Family('dorefa', 'DoReFa on [0, 1]', (), _no_params,
           lambda x, p, bits, _: baselines.dorefa_activation(x, bits=bits)),
    Family('pact', 'PACT with a learned clip', ('alpha',),
           lambda bits, operand, dtype: {'alpha': jnp.asarray(PACT_INIT_ALPHA, dtype)},
           lambda x, p, bits, _: baselines.pact_activation(x, p['alpha'], bits=bits)),
    Family('pact_n2uq_mbv2', "PACT with the official N2UQ MobileNetV2's gradient (SPEC 4.5)",
           ('alpha',), lambda bits, operand, dtype: {'alpha': jnp.asarray(PACT_INIT_ALPHA, dtype)},
           lambda x, p, bits, _: baselines.pact_activation_n2uq_mbv2(x, p['alpha'], bits=bits)),
    Family('lsq', 'LSQ, unsigned, with a learned step', ('step_size',), _lsq_activation_init,
           _lsq_activation),
    Family('uniform', f'fixed uniform levels on [0, {UNIFORM_UPPER}]', (), _no_params,
           lambda x, p, bits, _: baselines.uniform_quantize(x, bits=bits, lower=0.0,
                                                            upper=UNIFORM_UPPER)),
    Family(NONE, 'not quantized', (), _no_params, lambda x, p, bits, _: x),
)}
"""Activation quantizer families by name."""

WEIGHT_FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family('n2uq', 'N2UQ entropy-preserving, per output channel (SPEC 3)', (), _no_params,
           _n2uq_weight),
    Family('dorefa', 'DoReFa, per tensor', (), _no_params,
           lambda w, p, bits, _: baselines.dorefa_weight(w, bits=bits)),
    Family('lsq', 'LSQ, signed, with a learned step', ('step_size',), _lsq_weight_init,
           lambda w, p, bits, _: baselines.lsq_quantize(w, p['step_size'], bits=bits,
                                                        signed=True)),
    Family(NONE, 'not quantized', (), _no_params, lambda w, p, bits, _: w),
)}
"""Weight quantizer families by name."""

METHODS: dict[str, tuple[str, str]] = {
    'n2uq': ('n2uq', 'n2uq'),
    'dorefa': ('dorefa', 'dorefa'),
    'lsq': ('lsq', 'lsq'),
    'pact': ('pact', 'dorefa'),
    'n2uq_dorefa_weights': ('n2uq', 'dorefa'),
    'dorefa_n2uq_weights': ('dorefa', 'n2uq'),
    'uniform': ('uniform', 'n2uq'),
}
"""The training methods: ``method: (activation family, weight family)`` (the paper's
method, its baselines, and SPEC 6.4's two ablations)."""


def _lookup(families: dict[str, Family], name: str, what: str) -> Family:
  if name not in families:
    raise ValueError(f'{what} quantizer must be one of {tuple(families)}, got {name!r}')
  return families[name]


def activation_family(name: str) -> Family:
  """The activation family ``name``; a ``ValueError`` names the valid ones."""
  return _lookup(ACTIVATION_FAMILIES, name, 'activation')


def weight_family(name: str) -> Family:
  """The weight family ``name``; a ``ValueError`` names the valid ones."""
  return _lookup(WEIGHT_FAMILIES, name, 'weight')
