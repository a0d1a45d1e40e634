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

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from qwix._src.utils import flax_util

from n2uq_jax import quant
from n2uq_jax.nn.quantizers import QuantizerParam
from n2uq_jax.qwix.rule import N2UQRule

PARAM_DTYPE = jnp.float32
"""Quantizer parameters and arithmetic stay in float32 (the project's convention)."""


def _param(name: str, init: Callable[[], jax.Array]) -> jax.Array:
  """The value of quantizer parameter ``name`` of the current module, created
  from ``init()`` on first use."""
  return flax_util.get_or_create_param(name, init, nnx_param_type=QuantizerParam)


def _quantize(family: quant.Family, operand: jax.Array, bits: int, prefix: str,
              channel_axes: Sequence[int] = ()) -> jax.Array:
  """``operand`` through ``family``, its learned parameters ``<prefix>_<name>``
  created on first use from the family's initial values."""
  params = {name: _param(f'{prefix}_{name}',
                         lambda name=name: family.init(bits, operand, PARAM_DTYPE)[name])
            for name in family.param_names}
  return family.apply(operand, params, bits, channel_axes)


def quantize_activation(x: jax.Array, rule: N2UQRule, op_id: str) -> jax.Array:
  """The activation operand ``x`` through ``rule.act_method`` at ``rule.act_bits``."""
  return _quantize(quant.activation_family(rule.act_method), x, rule.act_bits, f'{op_id}_act')


def quantize_weight(w: jax.Array, rule: N2UQRule, op_id: str,
                    channel_axes: Sequence[int]) -> jax.Array:
  """The weight operand ``w`` through ``rule.weight_method`` at ``rule.weight_bits``.

  ``channel_axes`` are the output-channel axes of ``w`` (those not contracted:
  the last axis of an HWIO or ``(in, out)`` kernel); N2UQ scales each of their
  elements separately, DoReFa and LSQ use one scale per tensor.
  """
  return _quantize(quant.weight_family(rule.weight_method), w, rule.weight_bits,
                   f'{op_id}_weight', channel_axes)
