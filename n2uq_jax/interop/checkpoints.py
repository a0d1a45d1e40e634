"""PyTorch checkpoints as the ``init_checkpoint`` / ``teacher_checkpoint`` of a
training config: ``torchvision:PATH`` and ``n2uq-official:PATH``.

- ``torchvision:PATH``: a torchvision state_dict for the config's model of that
  role (``init_model`` / ``teacher_model``, default ``fp_model``), which must be
  a twin: ``resnet18_fp``, ``resnet34_fp``, ``resnet50_fp``, ``resnet101_fp``,
  ``mobilenet_v2_fp``.
- ``n2uq-official:PATH``: a state_dict of the official N2UQ code for the same
  architecture (``resnet18_fp`` and ``resnet18`` both mean ``resnet18``); its
  bit-width and shortcut setting are read from the state_dict.
"""

from __future__ import annotations

from flax import nnx

from n2uq_jax.interop import official, torchvision
from n2uq_jax.interop.state_dict import SUFFIXES, read_state_dict

TORCHVISION = 'torchvision'
OFFICIAL = 'n2uq-official'
FORMATS = (TORCHVISION, OFFICIAL)


def parse(value: str) -> tuple[str, str] | None:
  """``(format, path)`` of ``"torchvision:PATH"`` / ``"n2uq-official:PATH"``;
  ``None`` for anything else (a checkpoint of this project)."""
  for fmt in FORMATS:
    if value.startswith(fmt + ':'):
      return fmt, value[len(fmt) + 1:]
  return None


def _arch(fmt: str, model_name: str) -> str | None:
  if fmt == TORCHVISION:
    arch = model_name.removesuffix(torchvision.TWIN_SUFFIX)
    return arch if model_name.endswith(torchvision.TWIN_SUFFIX) and (
        arch in torchvision.ARCHS) else None
  arch = model_name.removesuffix(':fp').removesuffix(torchvision.TWIN_SUFFIX)
  return arch if arch in official.ARCHS else None


def check(field: str, value: str, model_name: str) -> None:
  """Checks a prefixed ``value`` of config ``field`` for the model ``model_name``
  without reading the file (config validation); other values pass.

  Raises:
    ValueError: an empty path, another suffix, or a model that the format does
      not describe.
  """
  parsed = parse(value)
  if parsed is None:
    return
  fmt, path = parsed
  if not path.endswith(SUFFIXES):
    raise ValueError(f'{field}={value!r}: {fmt}:PATH needs a PyTorch file ending in '
                     f'{", ".join(SUFFIXES)}')
  if _arch(fmt, model_name) is None:
    valid = ([a + torchvision.TWIN_SUFFIX for a in torchvision.ARCHS] if fmt == TORCHVISION
             else list(official.ARCHS))
    role = 'teacher_model' if field.startswith('teacher') else 'init_model'
    raise ValueError(f'{field}={value!r} is read into model {model_name!r}, which {fmt} '
                     f'checkpoints do not describe; set {role} to one of {valid}')


def load(value: str, *, model_name: str, num_classes: int, dtype=None) -> nnx.Module:
  """The model of a prefixed checkpoint ``value`` (see the module docstring), in
  evaluation mode, computing in ``dtype``."""
  fmt, path = parse(value)
  arch = _arch(fmt, model_name)
  if arch is None:
    check('checkpoint', value, model_name)
  state = read_state_dict(path)
  if fmt == TORCHVISION:
    return torchvision.model_from_state_dict(state, arch=arch, num_classes=num_classes,
                                             dtype=dtype)
  bits, quantize_downsample = official.infer_options(state)
  return official.model_from_state_dict(state, arch=arch, bits=bits,
                                        quantize_downsample=quantize_downsample,
                                        num_classes=num_classes, dtype=dtype)
