"""Which ops of which modules an :class:`N2UQProvider` quantizes, at what bits,
by what method."""

from __future__ import annotations

import dataclasses
import re
from typing import Collection

from n2uq_jax import quant

ACTIVATION_METHODS = tuple(quant.ACTIVATION_FAMILIES)
"""Activation quantizers: N2UQ (SPEC 2), its signed extension
(:func:`n2uq_jax.quant.n2uq_activation_signed`), the baselines, or none: the families of
:data:`n2uq_jax.quant.ACTIVATION_FAMILIES`."""

WEIGHT_METHODS = tuple(quant.WEIGHT_FAMILIES)
"""Weight quantizers: N2UQ entropy-preserving per output channel (SPEC 3),
DoReFa per tensor, signed LSQ with a learned step, or none (:data:`n2uq_jax.quant.WEIGHT_FAMILIES`)."""

OP_NAMES = ('dot_general', 'conv_general_dilated', 'einsum')
"""The ops a rule can name. ``jnp.dot`` and ``jnp.matmul`` count as ``dot_general``."""


@dataclasses.dataclass(frozen=True)
class N2UQRule:
  """A quantization rule for :class:`~n2uq_jax.qwix.N2UQProvider`.

  Attributes:
    module_path: regex matched (``re.fullmatch``) against the path of the
      module that runs the op, its attribute names and list indices joined
      with ``/`` (``"blocks/0/mlp/fc1"``; Linen: the scope path, ``"Conv_0"``).
      As in Qwix, the first matching rule wins.
    weight_bits: bit-width of the weight quantizer, 1..8.
    act_bits: bit-width of the activation quantizer, 1..8.
    act_method: one of :data:`ACTIVATION_METHODS`.
    weight_method: one of :data:`WEIGHT_METHODS`.
    op_names: the ops the rule applies to, a subset of :data:`OP_NAMES`.
  """
  module_path: str = '.*'
  _: dataclasses.KW_ONLY
  weight_bits: int
  act_bits: int
  act_method: str = 'n2uq'
  weight_method: str = 'n2uq'
  op_names: Collection[str] = OP_NAMES

  def __post_init__(self):
    if not isinstance(self.module_path, str):
      raise ValueError(f'module_path must be a regex string, got {self.module_path!r}')
    try:
      re.compile(self.module_path)
    except re.error as e:
      raise ValueError(f'module_path {self.module_path!r} is not a valid regex: {e}') from None
    quant.check_bits(self.weight_bits)
    quant.check_bits(self.act_bits)
    if self.act_method not in ACTIVATION_METHODS:
      raise ValueError(f'act_method must be one of {ACTIVATION_METHODS}, '
                       f'got {self.act_method!r}')
    if self.weight_method not in WEIGHT_METHODS:
      raise ValueError(f'weight_method must be one of {WEIGHT_METHODS}, '
                       f'got {self.weight_method!r}')
    if isinstance(self.op_names, str):
      raise ValueError(f'op_names must be a collection of op names such as '
                       f'{OP_NAMES}, got the string {self.op_names!r}')
    unknown = [name for name in self.op_names if name not in OP_NAMES]
    if unknown or not self.op_names:
      raise ValueError(f'op_names must be a non-empty subset of {OP_NAMES}, '
                       f'got {tuple(self.op_names)!r}')
    object.__setattr__(self, 'op_names', tuple(self.op_names))
