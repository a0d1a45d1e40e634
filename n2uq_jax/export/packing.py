"""Bit-packing of integer codes (docs/EXPORT.md, "Packed codes").

Codes of ``bits`` bits, in C order of their array, form one little-endian bit
stream: code ``j`` occupies stream bits ``j*bits .. j*bits + bits - 1``, least
significant bit first, and stream bit ``m`` is bit ``m % 8`` (LSB = 0) of byte
``m // 8``. The last byte is zero-padded. For 2 bits this puts four codes in a
byte, the first in the two lowest bits.
"""

from __future__ import annotations

import math

import numpy as np


def packed_size(count: int, bits: int) -> int:
  """Bytes that ``count`` codes of ``bits`` bits take packed."""
  return math.ceil(count * bits / 8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
  """``codes`` (any shape, values in ``0..2**bits - 1``) -> uint8 ``(packed_size,)``."""
  codes = np.asarray(codes)
  if not 1 <= bits <= 8:
    raise ValueError(f'bits must be in 1..8, got {bits}')
  flat = codes.reshape(-1).astype(np.uint16)
  if flat.size and int(flat.max()) >= 2 ** bits:
    raise ValueError(f'a code {int(flat.max())} does not fit in {bits} bits')
  stream = ((flat[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
  return np.packbits(stream.reshape(-1), bitorder='little')


def unpack(packed: np.ndarray, bits: int, shape) -> np.ndarray:
  """Inverse of :func:`pack`: uint8 codes of ``shape``."""
  shape = tuple(int(s) for s in shape)
  count = math.prod(shape)
  packed = np.asarray(packed, np.uint8).reshape(-1)
  if packed.size != packed_size(count, bits):
    raise ValueError(f'{packed.size} packed bytes do not hold {count} codes of {bits} bits '
                     f'(need {packed_size(count, bits)})')
  stream = np.unpackbits(packed, bitorder='little')[:count * bits].reshape(count, bits)
  weights = (1 << np.arange(bits, dtype=np.uint16))
  return (stream.astype(np.uint16) @ weights).astype(np.uint8).reshape(shape)
