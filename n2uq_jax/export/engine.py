"""The integer engine: runs an export from its tables alone (SPEC 8, docs/EXPORT.md).

:class:`IntegerModel` interprets the graph of ``manifest.json`` on the tensors of
``tables.safetensors``. Quantized convs run on uint8 activation codes and odd
integer weights ``2q - K`` with exact integer sums; the next codes come from
float thresholds on the float stream or from integer thresholds (one- or
two-sided) on the int32 accumulator where the chain folds. Everything else (stem, BatchNorm, RPReLU,
residual adds, pooling, classifier) is float32. Two backends:

* NumPy (:meth:`IntegerModel.logits`, :meth:`IntegerModel.codes`): the integer
  sums are float64 matrix products of integer-valued arrays, exact because every
  partial sum is an integer far below ``2**53``;
* JAX (:meth:`IntegerModel.jax_logits`, :meth:`IntegerModel.jax_codes`): one
  ``jax.jit`` function whose quantized convs are ``lax.conv_general_dilated`` on
  int8 codes and weights with ``preferred_element_type=int32``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from n2uq_jax.export import packing, tables
from n2uq_jax.export.graph import Graph, acc_scale


def _windows(x: np.ndarray, kh: int, kw: int, strides, padding, pad_value=0) -> np.ndarray:
  """``(N, H', W', kh, kw, C)`` strided windows of NHWC ``x`` after zero padding."""
  (pt, pb), (pl, pr) = padding
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
  win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
  win = win[:, ::strides[0], ::strides[1]]
  return np.moveaxis(win, 5, 3).swapaxes(4, 5).swapaxes(3, 4)  # N,H',W',kh,kw,C


def _np_conv(x: np.ndarray, kernel: np.ndarray, strides, padding, groups: int,
             dtype) -> np.ndarray:
  """NHWC x HWIO convolution as a matrix product in ``dtype``."""
  kh, kw, cin_g, cout = kernel.shape
  win = _windows(x, kh, kw, strides, padding).astype(dtype)
  n, ho, wo = win.shape[:3]
  if groups == 1:
    cols = win.reshape(n * ho * wo, kh * kw * cin_g)
    return (cols @ kernel.astype(dtype).reshape(-1, cout)).reshape(n, ho, wo, cout)
  cout_g = cout // groups
  win = win.reshape(n, ho, wo, kh, kw, groups, cin_g)
  k = kernel.astype(dtype).reshape(kh, kw, cin_g, groups, cout_g)
  out = np.einsum('nhwijgc,ijcgo->nhwgo', win, k, optimize=True)
  return out.reshape(n, ho, wo, cout)


def _max_pool(x: np.ndarray) -> np.ndarray:
  win = _windows(x, 3, 3, (2, 2), ((1, 1), (1, 1)), pad_value=-np.inf)
  return win.max(axis=(3, 4))


class IntegerModel:
  """An exported model, run from ``tables.safetensors`` and ``manifest.json`` only.

  Use :meth:`load`. Images are NHWC float32, normalised as the data pipeline
  yields them.
  """

  def __init__(self, manifest, graph: Graph):
    self.manifest = manifest
    self.graph = graph
    t = graph.tensors
    self._weights = {}
    for node in graph.nodes:
      if node.op == 'qconv':
        name = node.tensors['weight_codes']
        info = graph.packed[name]
        q = packing.unpack(t[name], info['bits'], info['shape']).astype(np.int16)
        self._weights[node.name] = odd_weights(q, info['bits'])
      elif node.op == 'dequantize':
        self._weights[node.output + '/acc_scale'] = acc_scale(t, node)
    self.quantized_layers = tuple(n.name for n in graph.nodes if n.op in ('quantize',
                                                                            'threshold'))
    self._jit = jax.jit(self.jax_function)

  @classmethod
  def load(cls, export_dir: str) -> 'IntegerModel':
    """Reads an export directory written by ``python -m n2uq_jax.export``."""
    manifest, graph = tables.read_tables(export_dir)
    return cls(manifest, graph)

  def _check(self, images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    channels = self.manifest['in_channels']
    if images.ndim != 4 or images.shape[-1] != channels:
      raise ValueError(f'images must be NHWC with {channels} channels, got shape '
                       f'{images.shape}')
    return images

  def run(self, images, *, forced_codes=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(logits (N, classes) float32, {layer: uint8 codes NHWC})`` with NumPy.

    ``forced_codes`` (``{layer: codes}``, e.g. from
    :func:`~n2uq_jax.export.fake_quantized_codes`) replaces each listed layer's
    codes after they are computed and returned, so every layer is compared on
    the reference's inputs: in a deep network one code that differs within
    float rounding of a threshold otherwise changes everything after it.
    """
    return _run(self, np, self._check(images), forced_codes)

  def logits(self, images) -> np.ndarray:
    """``(N, num_classes)`` float32 logits (NumPy backend)."""
    return self.run(images)[0]

  def codes(self, images) -> dict[str, np.ndarray]:
    """Activation codes (uint8, NHWC) of every quantized layer's input, by the
    layer's dotted name (NumPy backend)."""
    return self.run(images)[1]

  def jax_run(self, images):
    """``(logits, codes)`` from the jit-compiled JAX twin (integer convs)."""
    return self._jit(jnp.asarray(self._check(images)))

  def jax_function(self, images):
    """The JAX twin's ``(logits, codes)`` as a traceable function of a JAX array
    (for ``jax.jit``, ``jax.export``); :meth:`jax_run` is its jitted form."""
    return _run(self, jnp, images)

  def jax_logits(self, images) -> np.ndarray:
    return np.asarray(self.jax_run(images)[0])

  def jax_codes(self, images) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in self.jax_run(images)[1].items()}


def odd_weights(q: np.ndarray, bits: int) -> np.ndarray:
  """``2q - K`` (SPEC 8): int8 up to 7 bits, int16 for 8 bits (range -255..255)."""
  dtype = np.int8 if bits < 8 else np.int16
  return (2 * q.astype(np.int16) - (2 ** bits - 1)).astype(dtype)


def _batch_norm(xp, x, t, tensors, epsilon):
  mul = (1.0 / xp.sqrt(t[tensors['var']] + np.float32(epsilon))) * t[tensors['scale']]
  return (x - t[tensors['mean']]) * mul + t[tensors['bias']]


def _rprelu(xp, x, t, tensors):
  z = x + t[tensors['bias_in']]
  return xp.where(z > 0, z, t[tensors['slope']] * z) + t[tensors['bias_out']]


def _count_above(xp, u, thresholds):
  codes = xp.zeros(u.shape, xp.int32)
  for i in range(thresholds.shape[-1]):
    codes = codes + (u > thresholds[..., i]).astype(xp.int32)
  return codes.astype(xp.uint8)


def _folded_codes(xp, acc, direction, lo, hi):
  """Codes of a folded quantizer from the int32 accumulator (rules of
  :data:`~n2uq_jax.export.folding.DIRECTION_RULES`)."""
  two_sided = xp.abs(direction) == 2
  outside = direction == 2
  v = acc * xp.where(two_sided, 1, direction)
  codes = xp.zeros(acc.shape, xp.int32)
  for i in range(lo.shape[-1]):
    ge = v >= lo[:, i]
    inside = ge & (acc <= hi[:, i])
    codes = codes + xp.where(two_sided, inside != outside, ge).astype(xp.int32)
  return codes.astype(xp.uint8)


def _qconv(xp, model, node, codes):
  weights = model._weights[node.name]
  a = node.attrs
  if xp is np:
    return _np_conv(codes, weights, a['strides'], a['padding'], a['groups'],
                    np.float64).astype(np.int32)
  small = a['activation_bits'] < 8 and a['weight_bits'] < 8
  dtype = jnp.int8 if small else jnp.int16
  return jax.lax.conv_general_dilated(
      codes.astype(dtype), jnp.asarray(weights, dtype), window_strides=a['strides'],
      padding=[tuple(p) for p in a['padding']], dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=a['groups'], preferred_element_type=jnp.int32)


def _run(model: IntegerModel, xp, images, forced_codes=None):
  """Interprets the graph with ``xp`` (``numpy`` or ``jax.numpy``)."""
  t = {k: (v if xp is np else jnp.asarray(v)) for k, v in model.graph.tensors.items()}
  values = {model.graph.input: images}
  codes_out = {}
  for node in model.graph.nodes:
    x = values[node.inputs[0]]
    a, ts = node.attrs, node.tensors
    if node.op == 'conv':
      if xp is np:
        y = _np_conv(x, t[ts['kernel']], a['strides'], a['padding'], a['groups'], np.float32)
      else:
        y = jax.lax.conv_general_dilated(
            x, t[ts['kernel']], window_strides=a['strides'],
            padding=[tuple(p) for p in a['padding']],
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=a['groups'])
      if 'bias' in ts:
        y = y + t[ts['bias']]
    elif node.op == 'batch_norm':
      y = _batch_norm(xp, x, t, ts, a['epsilon'])
    elif node.op == 'rprelu':
      y = _rprelu(xp, x, t, ts)
    elif node.op == 'relu':
      y = xp.maximum(x, np.float32(0))
    elif node.op == 'relu6':
      y = xp.clip(x, np.float32(0), np.float32(6))
    elif node.op == 'max_pool':
      y = _max_pool(x) if xp is np else jax.lax.reduce_window(
          x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
          ((0, 0), (1, 1), (1, 1), (0, 0)))
    elif node.op == 'global_avg_pool':
      y = xp.mean(x, axis=(1, 2))
    elif node.op == 'add':
      y = x + values[node.inputs[1]]
    elif node.op == 'dense':
      y = x @ t[ts['kernel']]
      if 'bias' in ts:
        y = y + t[ts['bias']]
    elif node.op == 'quantize':
      y = _count_above(xp, t[ts['input_scale']] * x, t[ts['thresholds']])
      codes_out[node.name] = y
      if forced_codes is not None and node.name in forced_codes:
        y = np.asarray(forced_codes[node.name], np.uint8)
    elif node.op == 'qconv':
      y = _qconv(xp, model, node, x)
    elif node.op == 'dequantize':
      y = x.astype(xp.float32) * xp.asarray(model._weights[node.output + '/acc_scale'])
    elif node.op == 'threshold':
      y = _folded_codes(xp, x, t[ts['direction']].astype(xp.int32), t[ts['int_thresholds']],
                        t[ts['int_thresholds_hi']])
      codes_out[node.name] = y
      if forced_codes is not None and node.name in forced_codes:
        y = np.asarray(forced_codes[node.name], np.uint8)
    else:
      raise ValueError(f'unknown op {node.op!r} in node {node.name!r}')
    values[node.output] = y
  return values[model.graph.output], codes_out
