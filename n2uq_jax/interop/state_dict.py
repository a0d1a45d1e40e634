"""PyTorch state_dicts as plain NumPy mappings, and the error that lists every
way one fails to match a model.

A *source* is a path to a file written by ``torch.save`` (``.pth``,
``.pth.tar`` or ``.pt``) or a mapping of names to arrays (NumPy, JAX or torch
tensors). Either may wrap the state_dict in a ``"state_dict"`` key (the training
checkpoints of the official N2UQ code) and may prefix every name with
``"module."`` (``nn.DataParallel``); both are removed. Reading a file needs
PyTorch, an optional dependency (``pip install -e .[torch]``).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

import numpy as np

SUFFIXES = ('.pth', '.pth.tar', '.pt')
"""File names :func:`read_state_dict` reads."""

WRAPPER_KEY = 'state_dict'
DATA_PARALLEL_PREFIX = 'module.'
INSTALL_HINT = 'pip install -e .[torch]'


class StateDictMismatchError(ValueError):
  """A state_dict does not fit a model: every missing key, unexpected key, shape
  mismatch and unsupported constant, raised together.

  Attributes:
    missing: names the model needs and the state_dict lacks.
    unexpected: names of the state_dict the model has no place for.
    mismatched: ``(name, checkpoint shape, expected shape)``.
    bad_values: ``(name, message)`` for constants the model cannot represent.
  """

  def __init__(self, what: str, *, missing=(), unexpected=(), mismatched=(), bad_values=()):
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = sorted(mismatched)
    self.bad_values = sorted(bad_values)
    counts = [f'{len(items)} {label}' for items, label in (
        (self.missing, 'missing keys'), (self.unexpected, 'unexpected keys'),
        (self.mismatched, 'shape mismatches'), (self.bad_values, 'unsupported values'))
              if items]
    lines = [f'state_dict does not match {what}: {", ".join(counts)}']
    lines += [f'  missing: {name}' for name in self.missing]
    lines += [f'  unexpected: {name}' for name in self.unexpected]
    lines += [f'  shape mismatch: {name}: checkpoint {tuple(got)}, model expects {tuple(want)}'
              for name, got, want in self.mismatched]
    lines += [f'  unsupported value: {name}: {message}' for name, message in self.bad_values]
    super().__init__('\n'.join(lines))


def _import_torch(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path!r} needs PyTorch, an optional dependency: '
                      f'{INSTALL_HINT} (or pass a mapping of names to arrays)') from e
  return torch


def _load_file(path: str) -> Any:
  if not path.endswith(SUFFIXES):
    raise ValueError(f'{path!r} is not a PyTorch checkpoint file; valid suffixes: '
                     f'{", ".join(SUFFIXES)} (or pass a mapping of names to arrays)')
  if not os.path.isfile(path):
    raise ValueError(f'no such file: {path!r}')
  torch = _import_torch(path)
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(
        f'{path!r} holds Python objects other than tensors, which torch.load(weights_only=True) '
        'refuses; if you trust the file, load it yourself with torch.load(path, '
        'weights_only=False) and pass its state_dict (a mapping) instead') from e


def _to_numpy(name: str, value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor
    value = value.detach().cpu()
    if value.is_floating_point() and value.element_size() < 4:  # float16, bfloat16
      value = value.float()
    return value.numpy()
  try:
    array = np.asarray(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f'state_dict entry {name!r} is not an array: {type(value).__name__}') from e
  if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or
                                   array.dtype == np.bool_):
    raise ValueError(f'state_dict entry {name!r} is not a numeric array: {type(value).__name__}')
  return array


def read_state_dict(source) -> dict[str, np.ndarray]:
  """The state_dict of ``source`` as ``{name: np.ndarray}``.

  Args:
    source: a ``.pth`` / ``.pth.tar`` / ``.pt`` path, or a mapping of names to
      arrays; a ``"state_dict"`` wrapper and ``"module."`` prefixes are removed.

  Raises:
    ImportError: a file is given and PyTorch is not installed (the message says
      ``pip install -e .[torch]``).
    ValueError: a missing file, another suffix, or entries that are not arrays.
  """
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    contents = _load_file(path)
    what = path
  elif isinstance(source, Mapping):
    contents, what = source, 'the mapping'
  else:
    raise ValueError(f'source must be a path ({", ".join(SUFFIXES)}) or a mapping of names to '
                     f'arrays, got {type(source).__name__}')
  if not isinstance(contents, Mapping):
    raise ValueError(f'{what} holds a {type(contents).__name__}, not a state_dict mapping')
  if isinstance(contents.get(WRAPPER_KEY), Mapping):
    contents = contents[WRAPPER_KEY]
  state = {}
  for name, value in contents.items():
    name = str(name)
    if name.startswith(DATA_PARALLEL_PREFIX):
      name = name[len(DATA_PARALLEL_PREFIX):]
    state[name] = _to_numpy(name, value)
  return state
