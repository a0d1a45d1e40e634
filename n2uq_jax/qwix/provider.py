"""``N2UQProvider``: a Qwix provider that puts the project's quantizers, with
their learned parameters, into the ops of any Flax (NNX or Linen) model.

Qwix intercepts ``jax.lax.conv_general_dilated``, ``jax.lax.dot_general`` and
``jax.numpy.einsum`` while the quantized model runs; this provider also takes
``jax.numpy.dot``, ``jax.numpy.matmul`` and the ``@`` operator, which reach
``dot_general`` inside their own ``jit``, whose cache would otherwise replay a
product traced without the quantizers (or keep one traced with them). Other
jitted library functions that contract a weight inside their own ``jit``
(``jnp.tensordot``, ``jnp.inner``) are not supported. For an op of a module that
a rule matches:

- the operand that is a parameter of the module is the weight: it goes through
  the weight quantizer (N2UQ: per output channel, the axes the op does not
  contract, so the last axis of an HWIO or ``(in, out)`` kernel);
- the other operand is the activation: it goes through the activation quantizer
  (N2UQ: ``n2uq_activation`` and its four learned parameters, one set per op);
- the op then runs in float on the two fake-quantized operands. Biases, added
  outside the op, stay in float.

Ops with no weight operand (attention's query-key and probability-value
products) and ops no rule matches run unchanged, in float. Only float
fake-quantization is produced, never integer dtypes.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import qwix
from qwix._src import interception
from qwix._src.utils import flax_util

from n2uq_jax.qwix import operands
from n2uq_jax.qwix.rule import N2UQRule


_OPERATOR_MATMUL = 'jax._src.numpy.tensor_contractions.matmul'
"""Where the ``@`` operator of jax arrays looks ``matmul`` up at each call."""


class N2UQProvider(qwix.QuantizationProvider):
  """Quantization-aware training with the project's quantizers, through Qwix.

  Usage::

    rules = [N2UQRule('blocks/.*', weight_bits=4, act_bits=4)]
    qmodel = qwix.quantize_model(model, N2UQProvider(rules), example_input)

  Args:
    rules: :class:`N2UQRule` s in order of precedence (the first match wins).
  """

  def __init__(self, rules: Sequence[N2UQRule]):
    if isinstance(rules, N2UQRule) or not isinstance(rules, Sequence):
      raise ValueError(f'rules must be a sequence of N2UQRule, got {rules!r}')
    super().__init__(rules)

  def _init_rule(self, rule):
    if not isinstance(rule, N2UQRule):
      raise ValueError(f'N2UQProvider takes N2UQRule rules, got {rule!r}')
    return rule

  def get_intercept_map(self):
    return super().get_intercept_map() | {
        'jax.lax.conv_general_dilated': self.conv_general_dilated,
        'jax.lax.dot_general': self.dot_general,
        'jax.numpy.einsum': self.einsum,
        'jax.numpy.dot': self.dot,
        'jax.numpy.matmul': self.matmul,
    } | ({_OPERATOR_MATMUL: self.matmul} if interception.has_attribute(_OPERATOR_MATMUL)
         else {})

  # -- conv ---------------------------------------------------------------------

  def conv_general_dilated(self, lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None, preferred_element_type=None,
                           **kwargs):
    """``jax.lax.conv_general_dilated`` with ``lhs`` as the activation and the
    parameter ``rhs`` as the kernel, quantized per output feature."""
    rule, op_id = self._get_current_rule_and_op_id('conv_general_dilated')
    if rule is not None and flax_util.find_param(rhs) is not None:
      numbers = jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs),
                                               dimension_numbers)
      lhs = operands.quantize_activation(lhs, rule, op_id)
      rhs = operands.quantize_weight(rhs, rule, op_id, (numbers.rhs_spec[0],))
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type, **kwargs)

  # -- dot_general, jnp.dot, jnp.matmul -------------------------------------------

  def _weight_side(self, lhs, rhs) -> int | None:
    """1 if ``rhs`` is a parameter of the current module, else 0 if ``lhs`` is,
    else ``None`` (a product of two activations)."""
    if flax_util.find_param(rhs) is not None:
      return 1
    if flax_util.find_param(lhs) is not None:
      return 0
    return None

  def _quantized_dot_general(self, rule, op_id, side, lhs, rhs, dimension_numbers, **kwargs):
    """``dot_general`` on quantized operands; ``side`` is the index of the
    weight operand, ``None`` for a product left in float."""
    if side is not None:
      contracting, _ = dimension_numbers
      ops = [lhs, rhs]
      weight = ops[side]
      channel_axes = tuple(i for i in range(jnp.ndim(weight)) if i not in contracting[side])
      ops[side] = operands.quantize_weight(weight, rule, op_id, channel_axes)
      ops[1 - side] = operands.quantize_activation(ops[1 - side], rule, op_id)
      lhs, rhs = ops
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, **kwargs)

  def dot_general(self, lhs, rhs, dimension_numbers, precision=None,
                  preferred_element_type=None, **kwargs):
    """``jax.lax.dot_general`` with its parameter operand quantized as a weight
    and the other as an activation."""
    rule, op_id = self._get_current_rule_and_op_id('dot_general')
    side = None if rule is None else self._weight_side(lhs, rhs)
    return self._quantized_dot_general(rule, op_id, side, lhs, rhs, dimension_numbers,
                                       precision=precision,
                                       preferred_element_type=preferred_element_type,
                                       **kwargs)

  def _dot_as_dot_general(self, original, a, b, precision, preferred_element_type, kwargs):
    """``jnp.dot``/``jnp.matmul`` with a weight operand and a 1-D or 2-D ``b``,
    as the ``dot_general`` they compute (``a``'s last axis against ``b``'s
    first); products without a weight through ``original``."""
    rule, op_id = self._get_current_rule_and_op_id('dot_general')
    side = None if rule is None else self._weight_side(a, b)
    a, b = jnp.asarray(a), jnp.asarray(b)
    if side is None or a.ndim == 0 or b.ndim == 0 or b.ndim > 2:
      if side is not None and b.ndim > 2:
        raise ValueError(
            f'N2UQProvider quantizes jnp.dot/jnp.matmul only with a 1-D or 2-D second '
            f'operand, got shapes {a.shape} and {b.shape}; write the product with '
            'jnp.einsum or jax.lax.dot_general')
      return original(a, b, precision=precision, preferred_element_type=preferred_element_type,
                      **kwargs)
    dtype = jnp.result_type(a, b)
    a, b = (x if x.dtype == dtype else x.astype(dtype) for x in (a, b))
    numbers = (((a.ndim - 1,), (0,)), ((), ()))
    out = self._quantized_dot_general(rule, op_id, side, a, b, numbers,
                                      precision=precision,
                                      preferred_element_type=preferred_element_type, **kwargs)
    return out if preferred_element_type is not None else out.astype(dtype)

  def dot(self, a, b, *, precision=None, preferred_element_type=None, **kwargs):
    """``jnp.dot``, quantized like ``dot_general``."""
    return self._dot_as_dot_general(jnp.dot, a, b, precision, preferred_element_type, kwargs)

  def matmul(self, a, b, *, precision=None, preferred_element_type=None, **kwargs):
    """``jnp.matmul``, quantized like ``dot_general``."""
    return self._dot_as_dot_general(jnp.matmul, a, b, precision, preferred_element_type,
                                    kwargs)

  # -- einsum -----------------------------------------------------------------------

  def einsum(self, subscripts, *args, **kwargs):
    """``jnp.einsum`` of two operands with its parameter operand quantized as a
    weight (one scale per element of its axes that reach the output) and the
    other as an activation."""
    rule, op_id = self._get_current_rule_and_op_id('einsum')
    if rule is None or not isinstance(subscripts, str) or len(args) != 2:
      return jnp.einsum(subscripts, *args, **kwargs)
    side = self._weight_side(*args)
    if side is None:
      return jnp.einsum(subscripts, *args, **kwargs)
    inputs, output = _parse_einsum(subscripts)
    weight_spec = inputs[side]
    if '.' in weight_spec:
      raise ValueError(f'N2UQProvider cannot quantize a weight with an ellipsis in its '
                       f'einsum subscripts, got {subscripts!r}; name its axes')
    ops = list(args)
    channel_axes = tuple(i for i, c in enumerate(weight_spec) if c in output)
    ops[side] = operands.quantize_weight(ops[side], rule, op_id, channel_axes)
    ops[1 - side] = operands.quantize_activation(ops[1 - side], rule, op_id)
    return jnp.einsum(subscripts, *ops, **kwargs)


def _parse_einsum(subscripts: str) -> tuple[list[str], str]:
  """``(input subscripts, output subscripts)``; an implicit output holds the
  letters that appear once, sorted (NumPy's rule)."""
  spec = subscripts.replace(' ', '')
  if '->' in spec:
    inputs, output = spec.split('->')
  else:
    inputs = spec
    letters = [c for c in inputs if c.isalpha()]
    output = ''.join(sorted(c for c in set(letters) if letters.count(c) == 1))
  return inputs.split(','), output
