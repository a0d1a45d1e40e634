"""The correspondence between the variables of a model of this project and the
names of a PyTorch state_dict, and the two directions of the copy.

A :class:`Layout` is built by walking a model: every layer that holds
variables gets a PyTorch module name from a *naming function* (one per family
of PyTorch code: torchvision, the official N2UQ code), and the layer type
decides the names and layouts of its variables (``p`` is the module name):

- ``QuantConv``: kernel HWIO -> ``p.weight`` OIHW (and ``p.bias``); an N2UQ
  weight quantizer adds ``p.clip_val`` (written as 2.0) and ``p.zero``;
- ``QuantDense``: kernel (I, O) -> ``p.weight`` (O, I), ``p.bias``;
- ``BatchNorm``: ``p.weight``, ``p.bias``, ``p.running_mean``, ``p.running_var``
  (and ``p.num_batches_tracked``, written as 0);
- ``N2UQActivation`` (SPEC 2.1): offset -> ``p.start`` (1), intervals -> ``p.a``
  (K), input scale -> ``p.scale1`` (1), output scale -> ``p.scale2`` (1) (and the
  constants ``p.two``, ``p.one``, ``p.zero``, ``p.minusone``, ``p.eps``);
- ``PACTActivation``: the learned clip alpha -> ``p.clip_val`` (1);
- ``RPReLU`` (SPEC 4.2), named by a triple ``(b1, s, b2)``: ``b1.bias``
  (1, C, 1, 1), the slope ``s.weight`` (C), ``b2.bias`` (1, C, 1, 1).

Constants the model does not hold are accepted when reading; those marked
``write`` are written on export, and those marked ``check`` must hold their value
(the weight quantizer's ``clip_val`` is the constant 2.0, SPEC 7 Q3).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Union

import jax.numpy as jnp
import numpy as np
from flax import nnx

from n2uq_jax import nn
from n2uq_jax.interop.state_dict import StateDictMismatchError

CONV, DENSE, CHANNEL_4D, SCALAR, SAME = 'conv', 'dense', 'channel_4d', 'scalar', 'same'
"""How a variable's array differs between the two layouts."""

WEIGHT_CLIP = 2.0
"""The official weight quantizer's constant ``clip_val`` (SPEC 3.1, Q3)."""
N2UQ_CONSTANTS = {'two': 2.0, 'one': 1.0, 'zero': 0.0, 'minusone': -1.0, 'eps': 1e-3}
"""Constants the official activation quantizer registers (SPEC 2.1)."""

Name = Union[str, tuple[str, str, str]]
NamingFunction = Callable[[str, nnx.Module], Name]
"""``(dotted module path, module) -> PyTorch module name``; a triple for an RPReLU."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One variable: PyTorch ``key``, the ``/``-joined model ``path``, the ``kind``
  of layout change."""
  key: str
  path: str
  kind: str


@dataclasses.dataclass(frozen=True)
class Constant:
  """A state_dict entry with a fixed value that the model does not hold."""
  key: str
  value: np.ndarray
  write: bool
  check: bool


@dataclasses.dataclass(frozen=True)
class Layout:
  entries: tuple[Entry, ...]
  constants: tuple[Constant, ...]


def to_torch_array(kind: str, value: np.ndarray) -> np.ndarray:
  """A model array in the PyTorch layout (a contiguous copy)."""
  if kind == CONV:
    value = value.transpose(3, 2, 0, 1)
  elif kind == DENSE:
    value = value.T
  elif kind == CHANNEL_4D:
    value = value.reshape(1, -1, 1, 1)
  elif kind == SCALAR:
    value = value.reshape(1)
  return np.array(value, copy=True, order='C')


def to_model_array(kind: str, value: np.ndarray) -> np.ndarray:
  """A PyTorch array in the layout of this project."""
  if kind == CONV:
    return value.transpose(2, 3, 1, 0)
  if kind == DENSE:
    return value.T
  if kind == CHANNEL_4D:
    return value.reshape(-1)
  if kind == SCALAR:
    return value.reshape(())
  return value


def torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a model variable of ``shape``."""
  shape = tuple(shape)
  if kind == CONV:
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == DENSE:
    return (shape[1], shape[0])
  if kind == CHANNEL_4D:
    return (1, shape[0], 1, 1)
  if kind == SCALAR:
    return (1,)
  return shape


def _constant(key: str, value, *, write: bool, check: bool, dtype=np.float32) -> Constant:
  return Constant(key, np.asarray(value, dtype), write, check)


def _layer_items(module: nnx.Module, path: str, name: Name) -> tuple[list[Entry], list[Constant]]:
  """The entries and constants of one layer (see the module docstring)."""
  def entry(attr, key, kind=SAME):
    return Entry(key, f'{path}/{attr}' if path else attr, kind)

  if isinstance(module, nn.RPReLU):
    first, slope, second = name
    return [entry('bias_in', f'{first}.bias', CHANNEL_4D), entry('slope', f'{slope}.weight'),
            entry('bias_out', f'{second}.bias', CHANNEL_4D)], []
  if isinstance(module, (nn.QuantConv, nn.QuantDense)):
    entries = [entry('kernel', f'{name}.weight', CONV if isinstance(module, nn.QuantConv)
                     else DENSE)]
    if module.bias is not None:
      entries.append(entry('bias', f'{name}.bias'))
    constants = []
    if module.weight_quantizer.family == 'n2uq':
      constants = [_constant(f'{name}.clip_val', [WEIGHT_CLIP], write=True, check=True),
                   _constant(f'{name}.zero', [0.0], write=False, check=False)]
    return entries, constants
  if isinstance(module, nnx.BatchNorm):
    return ([entry('scale', f'{name}.weight'), entry('bias', f'{name}.bias'),
             entry('mean', f'{name}.running_mean'), entry('var', f'{name}.running_var')],
            [_constant(f'{name}.num_batches_tracked', 0, write=True, check=False,
                       dtype=np.int64)])
  if isinstance(module, nn.N2UQActivation):
    return ([entry('offset', f'{name}.start', SCALAR), entry('intervals', f'{name}.a'),
             entry('input_scale', f'{name}.scale1', SCALAR),
             entry('output_scale', f'{name}.scale2', SCALAR)],
            [_constant(f'{name}.{key}', [value], write=False, check=False)
             for key, value in N2UQ_CONSTANTS.items()])
  if isinstance(module, nn.PACTActivation):
    return [entry('alpha', f'{name}.clip_val', SCALAR)], []
  return [], []


LAYER_TYPES = (nn.RPReLU, nn.QuantConv, nn.QuantDense, nnx.BatchNorm, nn.N2UQActivation,
               nn.PACTActivation)


def _path_str(path) -> str:
  return '/'.join(str(part) for part in path)


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  return {_path_str(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, nnx.Variable)}


def build_layout(model: nnx.Module, naming: NamingFunction, *, what: str) -> Layout:
  """The layout of ``model`` (concrete or from ``nnx.eval_shape``) under ``naming``.

  Raises:
    ValueError: the model holds a variable no layer type above accounts for
      (for example an LSQ step size), so that PyTorch code has no name for it.
  """
  entries, constants = [], []
  for path, node in nnx.iter_graph(model):
    if isinstance(node, LAYER_TYPES):
      layer_entries, layer_constants = _layer_items(
          node, _path_str(path), naming('.'.join(str(p) for p in path), node))
      entries += layer_entries
      constants += layer_constants
  unnamed = sorted(set(_variables(model)) - {e.path for e in entries})
  if unnamed:
    raise ValueError(f'{what} has variables without a PyTorch name: {", ".join(unnamed)}')
  return Layout(tuple(entries), tuple(constants))


def check_state_dict(layout: Layout, state: Mapping[str, np.ndarray],
                     model: nnx.Module, *, what: str) -> None:
  """Raises :class:`StateDictMismatchError` with every missing key, unexpected key,
  shape mismatch (both shapes) and wrong constant of ``state`` against ``layout``."""
  variables = _variables(model)
  missing, mismatched, bad_values = [], [], []
  for e in layout.entries:
    if e.key not in state:
      missing.append(e.key)
      continue
    want = torch_shape(e.kind, variables[e.path].get_value().shape)
    if tuple(state[e.key].shape) != want:
      mismatched.append((e.key, tuple(state[e.key].shape), want))
  for c in layout.constants:
    if not c.check or c.key not in state:
      continue
    if tuple(state[c.key].shape) != c.value.shape:
      mismatched.append((c.key, tuple(state[c.key].shape), c.value.shape))
    elif not np.allclose(state[c.key], c.value):
      bad_values.append((c.key, f'checkpoint {np.asarray(state[c.key]).tolist()}, the model '
                                f'supports only {c.value.tolist()}'))
  known = {e.key for e in layout.entries} | {c.key for c in layout.constants}
  unexpected = [key for key in state if key not in known]
  if missing or unexpected or mismatched or bad_values:
    raise StateDictMismatchError(what, missing=missing, unexpected=unexpected,
                                 mismatched=mismatched, bad_values=bad_values)


def fill_model(model: nnx.Module, layout: Layout, state: Mapping[str, np.ndarray], *,
               what: str) -> nnx.Module:
  """Sets every variable of ``model`` (concrete, or abstract from ``nnx.eval_shape``)
  from ``state`` after :func:`check_state_dict`; values are cast to each
  variable's dtype. Returns ``model``."""
  check_state_dict(layout, state, model, what=what)
  variables = _variables(model)
  for e in layout.entries:
    variable = variables[e.path]
    variable.set_value(jnp.asarray(to_model_array(e.kind, np.asarray(state[e.key])),
                                   dtype=variable.get_value().dtype))
  return model


def export_state_dict(model: nnx.Module, layout: Layout) -> dict[str, np.ndarray]:
  """``{PyTorch name: array}`` of ``model`` under ``layout``, with the constants
  marked ``write``."""
  variables = _variables(model)
  state = {e.key: to_torch_array(e.kind, np.asarray(variables[e.path].get_value()))
           for e in layout.entries}
  state.update({c.key: c.value.copy() for c in layout.constants if c.write})
  return state
