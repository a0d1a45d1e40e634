"""The quantizers an :class:`~n2uq_jax.qwix.N2UQProvider` applies to the two
operands of an intercepted op, with their learned parameters created on the
module that runs the op.

Parameters are named ``<op id>_act_<name>`` and ``<op id>_weight_<name>``, the
op id being Qwix's (``conv_general_dilated0``, ``dot_general1``, ``einsum0``:
the op name and its index among that module's ops of the same name). Under NNX
they are :class:`n2uq_jax.nn.QuantizerParam` attributes of the module, so
``nnx.state(model, QuantizerParam)`` selects them; under Linen they live in the
module's ``params`` collection.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from qwix._src.utils import flax_util

from n2uq_jax import quant
from n2uq_jax.nn.quantizers import QuantizerParam
from n2uq_jax.qwix.rule import N2UQRule

PARAM_DTYPE = jnp.float32
"""Quantizer parameters and arithmetic stay in float32 (the project's convention)."""

PACT_INIT_ALPHA = 2.0
"""PACT's initial clip, the N2UQ output range (as ``nn.PACTActivation``)."""

LSQ_INIT_RANGE = 2.0
"""LSQ's initial activation range, the step starting at ``2 / Q_p`` (as ``nn.LSQActivation``)."""

UNIFORM_UPPER = 2.0
"""Upper end of the fixed uniform activation quantizer, ``[0, 2]``."""


def _param(name: str, init: Callable[[], jax.Array]) -> jax.Array:
  """The value of quantizer parameter ``name`` of the current module, created
  from ``init()`` on first use."""
  return flax_util.get_or_create_param(name, init, nnx_param_type=QuantizerParam)


def _n2uq_params(prefix: str, init: quant.ActivationParams) -> quant.ActivationParams:
  return quant.ActivationParams(*(
      _param(f'{prefix}_{field}', lambda value=value: value)
      for field, value in zip(quant.ActivationParams._fields, init)))


def quantize_activation(x: jax.Array, rule: N2UQRule, op_id: str) -> jax.Array:
  """The activation operand ``x`` through ``rule.act_method`` at ``rule.act_bits``."""
  method, bits, prefix = rule.act_method, rule.act_bits, f'{op_id}_act'
  if method == 'none':
    return x
  if method == 'n2uq':
    params = _n2uq_params(prefix, quant.init_n2uq_activation(bits, PARAM_DTYPE))
    return quant.n2uq_activation(x, *params, bits=bits)
  if method == 'n2uq_signed':
    params = _n2uq_params(prefix, quant.init_n2uq_activation_signed(bits, PARAM_DTYPE))
    return quant.n2uq_activation_signed(x, *params, bits=bits)
  if method == 'dorefa':
    return quant.dorefa_activation(x, bits=bits)
  if method == 'pact':
    alpha = _param(f'{prefix}_alpha', lambda: jnp.asarray(PACT_INIT_ALPHA, PARAM_DTYPE))
    return quant.pact_activation(x, alpha, bits=bits)
  if method == 'lsq':
    _, high = quant.lsq_levels(bits, signed=False)
    step = _param(f'{prefix}_step_size', lambda: jnp.asarray(LSQ_INIT_RANGE / high, PARAM_DTYPE))
    features = math.prod(x.shape[1:]) if x.ndim > 1 else x.size
    return quant.lsq_quantize(x, step, bits=bits, signed=False,
                              grad_scale=1.0 / math.sqrt(max(features, 1) * high))
  if method == 'uniform':
    return quant.uniform_quantize(x, bits=bits, lower=0.0, upper=UNIFORM_UPPER)
  raise ValueError(f'unknown act_method {method!r}')  # N2UQRule validates it first


def _n2uq_weight_per_channel(w: jax.Array, bits: int, channel_axes: Sequence[int]) -> jax.Array:
  """:func:`quant.n2uq_weight` with one scale per element of ``channel_axes``
  (statistics over all other axes; no channel axis: one scale per tensor)."""
  if len(channel_axes) == 1:
    return quant.n2uq_weight(w, bits=bits, channel_axis=channel_axes[0])
  reduce_axes = [i for i in range(w.ndim) if i not in channel_axes]
  order = (*reduce_axes, *channel_axes)
  moved = jnp.transpose(w, order)
  rows = math.prod(moved.shape[:len(reduce_axes)])
  flat = quant.n2uq_weight(moved.reshape(rows, -1), bits=bits, channel_axis=-1)
  return jnp.transpose(flat.reshape(moved.shape), [order.index(i) for i in range(w.ndim)])


def quantize_weight(w: jax.Array, rule: N2UQRule, op_id: str,
                    channel_axes: Sequence[int]) -> jax.Array:
  """The weight operand ``w`` through ``rule.weight_method`` at ``rule.weight_bits``.

  ``channel_axes`` are the output-channel axes of ``w`` (those not contracted:
  the last axis of an HWIO or ``(in, out)`` kernel); N2UQ scales each of their
  elements separately, DoReFa and LSQ use one scale per tensor.
  """
  method, bits = rule.weight_method, rule.weight_bits
  if method == 'none':
    return w
  if method == 'n2uq':
    return _n2uq_weight_per_channel(w, bits, tuple(channel_axes))
  if method == 'dorefa':
    return quant.dorefa_weight(w, bits=bits)
  if method == 'lsq':
    _, high = quant.lsq_levels(bits, signed=True)
    step = _param(f'{op_id}_weight_step_size', lambda: (
        2 * jnp.mean(jnp.abs(jnp.asarray(w, PARAM_DTYPE))) / math.sqrt(high)))
    return quant.lsq_quantize(w, step, bits=bits, signed=True)
  raise ValueError(f'unknown weight_method {method!r}')  # N2UQRule validates it first
