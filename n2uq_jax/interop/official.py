"""State_dicts of the official N2UQ PyTorch code <-> the N2UQ models here.

The official module names (SPEC 4; the names are facts of its model code):

- ResNet stem ``conv1``/``bn1`` and classifier ``fc``: full precision, as in
  torchvision.
- In a block, group ``j`` (1, 2; 3 in the bottleneck) is ``biasj1`` -> ``preluj``
  -> ``biasj2`` (the RPReLU ``rprelu<j>`` here), the activation quantizer
  ``quanj`` (``conv<j>.input_quantizer`` here), the quantized conv ``convj``
  and ``bnj``. The RPReLU after the residual addition (``rprelu_out``) is
  ``bias31``/``prelu3``/``bias32`` in the basic block and ``bias01``/``prelu0``/
  ``bias02`` in the bottleneck.
- Quantized shortcut: ``downsample.0`` the activation quantizer, ``downsample.1``
  the quantized 1x1 conv, ``downsample.2`` the BatchNorm; full-precision
  shortcut: ``downsample.0`` the conv, ``downsample.1`` the BatchNorm.
- MobileNetV2 (4 bits): ``feature.0.conv1``/``bn1`` the stem, ``feature.1`` ..
  ``feature.17`` blocks named as above, ``feature.18.quan1`` (PACT, its
  ``clip_val`` is the learned clip), ``feature.18.conv1``/``bn1``, and ``fc``.

Activation quantizer parameters: ``start`` <-> offset, ``a`` <-> intervals,
``scale1`` <-> input scale, ``scale2`` <-> output scale, shape (1) there and ()
here except ``a`` (K). RPReLU biases are (1, C, 1, 1) there. The constant
buffers (``two``, ``one``, ``zero``, ``minusone``, ``eps``, the conv's ``zero``)
are accepted when read and not written; the conv's ``clip_val`` must be 2.0 and
is written as 2.0; ``num_batches_tracked`` is accepted and written as 0.
"""

from __future__ import annotations

import math
import re

import numpy as np
from flax import nnx

from n2uq_jax import models, nn
from n2uq_jax.interop import layout as layout_lib
from n2uq_jax.interop.state_dict import read_state_dict

ARCHS = ('resnet18', 'resnet34', 'resnet50', 'mobilenet_v2')
"""Architectures of the official code."""
MOBILENET_BITS = 4
"""The official MobileNetV2 is 4-bit only (SPEC 4.5)."""

_BLOCK_LAYER = re.compile(r'^(conv|bn|rprelu)(\d)$')


def check_arguments(arch: str, bits: int, quantize_downsample: bool) -> None:
  if arch not in ARCHS:
    raise ValueError(f'arch={arch!r} is not an official N2UQ model; valid: {", ".join(ARCHS)}')
  if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
    raise ValueError(f'bits={bits!r} must be an integer in 1..8')
  if arch == 'mobilenet_v2' and bits != MOBILENET_BITS:
    raise ValueError(f'bits={bits} for mobilenet_v2: the official MobileNetV2 has '
                     f'{MOBILENET_BITS} bits only (SPEC 4.5)')
  if not isinstance(quantize_downsample, bool):
    raise ValueError(f'quantize_downsample={quantize_downsample!r} must be True or False')


def _block_name(prefix: str, rest: list[str], out_group: int) -> layout_lib.Name:
  """Official name of ``rest`` (``["conv2"]``, ``["conv1", "input_quantizer"]``,
  ``["rprelu_out"]``) inside the block named ``prefix``."""
  if rest == ['rprelu_out']:
    group = out_group
  else:
    match = _BLOCK_LAYER.match(rest[0])
    if match is None:
      raise ValueError(f'no official name for {prefix}.{".".join(rest)}')
    kind, group = match.group(1), int(match.group(2))
    if kind == 'conv' and rest[1:] == ['input_quantizer']:
      return f'{prefix}.quan{group}'
    if kind != 'rprelu':
      return f'{prefix}.{kind}{group}'
  return (f'{prefix}.bias{group}1', f'{prefix}.prelu{group}', f'{prefix}.bias{group}2')


def _resnet_naming(model: models.ResNet) -> layout_lib.NamingFunction:
  out_group = 3 if isinstance(model.layer1[0], models.N2UQBasicBlock) else 0

  def name(dotted: str, module: nnx.Module) -> layout_lib.Name:
    del module
    parts = dotted.split('.')
    if len(parts) == 1:
      return dotted  # conv1, bn1, fc
    prefix, rest = '.'.join(parts[:2]), parts[2:]
    if rest[0] == 'downsample':
      block = getattr(model, parts[0])[int(parts[1])]
      quantized = block.downsample.conv.input_quantizer is not None
      index = {('conv', 'input_quantizer'): 0, ('conv',): 1, ('bn',): 2}[tuple(rest[1:])]
      return f'{prefix}.downsample.{index if quantized else index - 1}'
    return _block_name(prefix, rest, out_group)
  return name


def _mobilenet_name(dotted: str, module: nnx.Module) -> layout_lib.Name:
  del module
  if dotted == 'classifier':
    return 'fc'
  parts = dotted.split('.')
  prefix, rest = f'feature.{parts[1]}', parts[2:]
  if rest[0] in ('conv', 'bn'):  # features.0 and features.18
    return f'{prefix}.quan1' if rest[1:] == ['input_quantizer'] else f'{prefix}.{rest[0]}1'
  return _block_name(prefix, rest, out_group=0)


def _check_spec(path: str, spec: nn.QuantSpec, activation: str, bits: set[int]) -> None:
  if (spec.activation != activation or spec.weight != 'n2uq' or
      spec.activation_bits != spec.weight_bits):
    raise ValueError(
        f'{path} is quantized with {spec}; the official code has {activation} activations '
        'and N2UQ weights with equal bit-widths there')
  bits.add(spec.weight_bits)


def _check_official_model(model: nnx.Module) -> tuple[int, bool | None]:
  """``(bits, quantize_downsample)`` of an N2UQ model the official code can hold
  (``None`` for MobileNetV2); a ``ValueError`` otherwise."""
  if isinstance(model, models.ResNet):
    if not isinstance(model.layer1[0], (models.N2UQBasicBlock, models.N2UQBottleneck)):
      raise ValueError('expected an N2UQ ResNet, got the full-precision twin; it goes out '
                       'through to_torchvision_state_dict')
  elif isinstance(model, models.MobileNetV2):
    if not isinstance(model.features[1], models.N2UQInvertedResidual):
      raise ValueError('expected the N2UQ MobileNetV2, got the full-precision twin; it goes '
                       'out through to_torchvision_state_dict')
  else:
    raise ValueError(f'expected an N2UQ ResNet or MobileNetV2, got {type(model).__name__}')
  bits, downsample = set(), set()
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nn.QuantConv):
      continue
    name = '.'.join(str(p) for p in path)
    if name.endswith('downsample.conv'):
      downsample.add(not node.spec.is_full_precision)
      if not node.spec.is_full_precision:
        _check_spec(name, node.spec, 'n2uq', bits)
    elif name == 'features.18.conv':
      _check_spec(name, node.spec, 'pact_n2uq_mbv2', bits)
    elif re.search(r'\.conv\d$', name):
      _check_spec(name, node.spec, 'n2uq', bits)
  if len(bits) != 1:
    raise ValueError(f'the official code has one bit-width per model, got {sorted(bits)}')
  if len(downsample) > 1:
    raise ValueError('the official code quantizes either every shortcut conv or none; this '
                     'model mixes both')
  return bits.pop(), (downsample.pop() if downsample else None)


def official_layout(model: nnx.Module) -> layout_lib.Layout:
  """The official layout of an N2UQ ResNet or MobileNetV2 (N2UQ quantizers
  throughout, as the official code has)."""
  _check_official_model(model)
  naming = (_mobilenet_name if isinstance(model, models.MobileNetV2)
            else _resnet_naming(model))
  return layout_lib.build_layout(model, naming, what=type(model).__name__)


def model_from_state_dict(state, *, arch: str, bits: int, quantize_downsample: bool,
                          num_classes: int = 1000, dtype=None) -> nnx.Module:
  """The N2UQ model of ``arch`` holding ``state`` (a NumPy state_dict of the
  official code), in evaluation mode; ``dtype`` is the compute dtype."""
  check_arguments(arch, bits, quantize_downsample)
  kwargs = {} if arch == 'mobilenet_v2' else {'quantize_downsample': quantize_downsample}
  policy = nn.QuantPolicy(default=nn.QuantSpec.uniform_bits(bits))
  model = nnx.eval_shape(lambda: models.create_model(
      arch, num_classes=num_classes, policy=policy, rngs=nnx.Rngs(0), dtype=dtype, **kwargs))
  shortcut = ('' if arch == 'mobilenet_v2' else
              ', quantized downsample' if quantize_downsample else ', full-precision downsample')
  layout_lib.fill_model(model, official_layout(model), state,
                        what=f'official N2UQ {arch} ({bits} bits{shortcut}, {num_classes} '
                             'classes)')
  model.eval()
  return model


def infer_options(state) -> tuple[int, bool]:
  """``(bits, quantize_downsample)`` of an official state_dict: the bit-width from
  the length ``2**bits - 1`` of its ``quan1.a``, the shortcut from whether a
  ``downsample.2`` (the BatchNorm after a quantized conv) exists.

  Raises:
    ValueError: the state_dict has no ``quan1.a`` of a valid length.
  """
  lengths = {int(np.asarray(v).size) for k, v in state.items() if k.endswith('.quan1.a')}
  if len(lengths) != 1 or math.log2(next(iter(lengths)) + 1) % 1:
    raise ValueError(
        'not a state_dict of the official N2UQ code: expected quantizer intervals '
        f'"<block>.quan1.a" of one length 2**bits - 1, found lengths {sorted(lengths)}')
  bits = int(math.log2(lengths.pop() + 1))
  return bits, any('.downsample.2.' in k for k in state)


def load_official_n2uq(source, *, arch: str, bits: int, quantize_downsample: bool,
                       num_classes: int = 1000) -> nnx.Module:
  """The N2UQ model of a state_dict of the official PyTorch code.

  Args:
    source: a ``.pth``/``.pth.tar``/``.pt`` file (a training checkpoint with a
      ``"state_dict"`` key and ``"module."`` prefixes is fine) or a mapping of
      names to arrays.
    arch: ``resnet18``, ``resnet34``, ``resnet50`` or ``mobilenet_v2``.
    bits: the model's bit-width (weights and activations; 4 for mobilenet_v2).
    quantize_downsample: the official flag (SPEC 4.1): ``True`` for the N2UQ rows
      of the paper, ``False`` for N2UQ*; ignored for mobilenet_v2.
    num_classes: classifier outputs.

  Returns:
    ``models.create_model(arch, policy=W{bits}A{bits} N2UQ, quantize_downsample=...)``
    with every variable from ``source``, in evaluation mode.

  Raises:
    StateDictMismatchError: (a ``ValueError``) every missing key, unexpected key,
      shape mismatch and a ``clip_val`` other than 2.0, at once.
    ImportError: a file is given and PyTorch is not installed.
  """
  check_arguments(arch, bits, quantize_downsample)
  return model_from_state_dict(read_state_dict(source), arch=arch, bits=bits,
                               quantize_downsample=quantize_downsample,
                               num_classes=num_classes)


def to_official_n2uq_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The state_dict of the official code for an N2UQ model: the inverse of
  :func:`load_official_n2uq`. The official model accepts it with
  ``load_state_dict(sd, strict=False)``, which reports only the constant buffers
  as missing (``two``, ``one``, ``zero``, ``minusone``, ``eps``); ``clip_val`` is
  written as 2.0 and ``num_batches_tracked`` as 0.

  Raises:
    ValueError: ``model`` is not an N2UQ ResNet/MobileNetV2 with N2UQ quantizers
      of one bit-width (the official code has no other).
  """
  return layout_lib.export_state_dict(model, official_layout(model))
