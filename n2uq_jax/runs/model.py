"""Variant -> model: the variants a config names, their quantizer policies, and the
registry model each one trains, built here for training and for every reader of a run.

A variant is ``fp`` (full precision) or ``w{n}a{m}`` with a method (``n2uq``, the
baselines, the ablations of SPEC 6.4); its sub-directory of a workdir is
:attr:`Variant.name` (``fp``, ``w2a2``, ``w2a2_dorefa``, ...).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax.numpy as jnp
from flax import nnx

from n2uq_jax import models, nn, quant

METHODS = tuple(quant.METHODS)
"""Quantization methods of the quantized variants (:data:`n2uq_jax.quant.METHODS`)."""

BITS_TOKEN = re.compile(r'^w([1-8])a([1-8])$')


@dataclasses.dataclass(frozen=True)
class Variant:
  """One model to train: full precision, or quantized with a method at some bits."""
  weight_bits: int | None  # None: full precision
  activation_bits: int | None
  method: str = 'n2uq'

  @property
  def is_full_precision(self) -> bool:
    return self.weight_bits is None

  @property
  def name(self) -> str:
    if self.is_full_precision:
      return 'fp'
    name = f'w{self.weight_bits}a{self.activation_bits}'
    return name if self.method == 'n2uq' else f'{name}_{self.method}'


def parse_variant(token: str, method: str = 'n2uq') -> Variant:
  """``'fp'`` or ``'w{n}a{m}'`` (with a method) as a :class:`Variant`."""
  if token == 'fp':
    return Variant(None, None, method)
  match = BITS_TOKEN.match(token)
  if not match:
    raise ValueError(f'variant {token!r} must be "fp" or "w{{n}}a{{m}}" with n, m in 1..8')
  if method not in METHODS:
    raise ValueError(f'method {method!r} must be one of {METHODS}')
  return Variant(int(match.group(1)), int(match.group(2)), method)


def variants(config) -> tuple[Variant, ...]:
  """The variants of ``config.variants`` (a comma-separated string), FP first."""
  tokens = [t.strip() for t in str(config.variants).split(',') if t.strip()]
  if not tokens:
    raise ValueError(f'variants={config.variants!r} names no variant (e.g. "fp,w2a2")')
  result = [parse_variant(t, config.method) for t in tokens]
  return tuple(sorted(result, key=lambda v: not v.is_full_precision))


def quant_policy(variant: Variant) -> nn.QuantPolicy:
  """The quantizer policy of a variant: the same spec for every quantized layer."""
  if variant.is_full_precision:
    return nn.QuantPolicy.full_precision()
  activation, weight = quant.METHODS[variant.method]
  return nn.QuantPolicy(default=nn.QuantSpec(
      activation=activation, weight=weight, activation_bits=variant.activation_bits,
      weight_bits=variant.weight_bits))


def model_name(config, variant: Variant) -> str:
  """The registry name of the variant's model: ``fp_model`` for FP, else ``model``."""
  return config.fp_model if variant.is_full_precision else config.model


def model_kwargs(config, variant: Variant) -> dict[str, Any]:
  """Extra model arguments: ``config.model_kwargs`` for the quantized model only."""
  if variant.is_full_precision:
    return dict(config.get('fp_model_kwargs', {}) or {})
  return dict(config.model_kwargs or {})


def compute_dtype(name: str):
  """``'float32'`` -> ``None`` (the models' float32 default), ``'bfloat16'`` -> bf16."""
  return {'float32': None, 'bfloat16': jnp.bfloat16}[name]


def build_model(name: str, variant: Variant | None, *, num_classes: int, in_channels: int,
                seed: int, compute_dtype=None, kwargs=None) -> nnx.Module:
  """A registry model; ``variant`` None (or full precision) builds it unquantized."""
  policy = quant_policy(variant) if variant is not None else nn.QuantPolicy.full_precision()
  return models.create_model(name, num_classes=num_classes, policy=policy,
                             rngs=nnx.Rngs(seed), dtype=compute_dtype,
                             in_channels=in_channels, **(kwargs or {}))


def build_variant_model(config, variant: Variant, *, num_classes: int, in_channels: int,
                        seed: int | None = None) -> tuple[str, nnx.Module]:
  """``(registry name, model)`` of ``variant`` as ``config`` describes it (its model
  name, kwargs and compute dtype)."""
  name = model_name(config, variant)
  return name, build_model(
      name, None if variant.is_full_precision else variant, num_classes=num_classes,
      in_channels=in_channels, seed=config.seed if seed is None else seed,
      compute_dtype=compute_dtype(config.compute_dtype), kwargs=model_kwargs(config, variant))


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static graph definitions of one model in training and evaluation mode."""
  train: Any
  eval: Any

  def merge(self, params, model_state, *, train: bool) -> nnx.Module:
    return nnx.merge(self.train if train else self.eval, params, model_state)


def split_model(model: nnx.Module) -> tuple[ModelDef, dict, dict]:
  """``(ModelDef, params, model_state)`` of an NNX model; the model is left in
  training mode."""
  model.eval()
  eval_def, _, _ = nnx.split(model, nnx.Param, ...)
  model.train()
  train_def, params, rest = nnx.split(model, nnx.Param, ...)
  return ModelDef(train_def, eval_def), nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
