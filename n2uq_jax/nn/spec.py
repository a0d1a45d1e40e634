"""Which quantizer each layer uses: a per-layer spec and a policy with overrides.

A :class:`QuantSpec` names the activation and weight quantizer families and
their bit-widths for one quantized layer. A :class:`QuantPolicy` gives the spec
of every layer by its dotted name (``"layer1.0.conv2"``), from a default and
``fnmatch`` overrides, so a config can, for example, run N2UQ everywhere but
DoReFa in one stage, or keep a layer at 8 bits.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Mapping

from n2uq_jax import quant

ACTIVATION_QUANTIZERS = tuple(quant.ACTIVATION_FAMILIES)
"""Activation quantizer families (:data:`n2uq_jax.quant.ACTIVATION_FAMILIES`): N2UQ
(SPEC 2), its signed extension, the baselines, or none."""

WEIGHT_QUANTIZERS = tuple(quant.WEIGHT_FAMILIES)
"""Weight quantizer families (:data:`n2uq_jax.quant.WEIGHT_FAMILIES`): N2UQ
entropy-preserving (SPEC 3), DoReFa, LSQ, or none."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """Quantizers of one layer.

  Attributes:
    activation: family of the input (activation) quantizer, one of
      :data:`ACTIVATION_QUANTIZERS`.
    weight: family of the weight quantizer, one of :data:`WEIGHT_QUANTIZERS`.
    activation_bits: bit-width of the input quantizer, 1..8.
    weight_bits: bit-width of the weight quantizer, 1..8.
  """
  activation: str = 'n2uq'
  weight: str = 'n2uq'
  activation_bits: int = 2
  weight_bits: int = 2

  def __post_init__(self):
    quant.activation_family(self.activation)
    quant.weight_family(self.weight)
    quant.check_bits(self.activation_bits)
    quant.check_bits(self.weight_bits)

  @classmethod
  def uniform_bits(cls, bits: int, activation: str = 'n2uq', weight: str = 'n2uq') -> 'QuantSpec':
    """The same bit-width for weights and activations (the paper's W{n}A{n})."""
    return cls(activation=activation, weight=weight, activation_bits=bits, weight_bits=bits)

  @property
  def is_full_precision(self) -> bool:
    return self.activation == 'none' and self.weight == 'none'


FULL_PRECISION = QuantSpec(activation='none', weight='none')
"""A layer that is not quantized at all."""


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
  """The spec of every quantized layer of a model, by dotted layer name.

  Attributes:
    default: the spec of layers no override matches.
    overrides: ``{fnmatch pattern: spec}``; the first matching pattern wins, in
      insertion order. Patterns match names such as ``"layer2.1.conv1"``.
  """
  default: QuantSpec = QuantSpec()
  overrides: Mapping[str, QuantSpec] = dataclasses.field(default_factory=dict)

  def for_layer(self, name: str) -> QuantSpec:
    """The spec of the layer called ``name``."""
    for pattern, spec in self.overrides.items():
      if fnmatch.fnmatchcase(name, pattern):
        return spec
    return self.default

  @classmethod
  def full_precision(cls) -> 'QuantPolicy':
    return cls(default=FULL_PRECISION)
