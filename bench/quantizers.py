"""Cost of the quantizers relative to a ReLU, forward + backward, jit-compiled.

Times ``n2uq_activation`` forward+backward with every gradient (input, offset,
intervals, input scale, output scale) on an NHWC float32 tensor against
the fused loss-gradient ReLU ``jax.jit(jax.grad(lambda x: jnp.sum(jax.nn.relu(x) * r)))``
on the same tensor in the same process, and the entropy-preserving weight quantizer on
a 3x3x512x512 kernel against a plain ``w * c`` forward+backward.

Load from other processes only ever adds time, so each pair is timed alternately many
times and the ratio is taken of the minima (the least-disturbed run of each), with the
10th percentile and the median beside it to show the spread.

Usage::

  python bench/quantizers.py [--shape 32 56 56 64] [--repeats 100] [--bits 2 4]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from n2uq_jax import quant


def _seconds(fn, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def interleaved_times(baseline, candidate, repeats: int) -> tuple[np.ndarray, np.ndarray]:
  """``repeats`` timings in seconds of two ``(fn, args)`` pairs, run alternately after
  three warm-up calls each, so that load from other processes hits both alike."""
  for _ in range(3):
    for fn, args in (baseline, candidate):
      jax.block_until_ready(fn(*args))
  base_times, times = [], []
  for _ in range(repeats):
    base_times.append(_seconds(*baseline))
    times.append(_seconds(*candidate))
  return np.asarray(base_times), np.asarray(times)


def describe(base: np.ndarray, times: np.ndarray, name: str, base_name: str) -> str:
  """One line: min / p10 / median of both, in ms, and the ratios of the min and p10."""
  stats = lambda t: np.percentile(t, [0, 10, 50]) * 1e3
  b, c = stats(base), stats(times)
  return (f'{name:<28} min {c[0]:7.2f} p10 {c[1]:7.2f} med {c[2]:7.2f} ms | {base_name} '
          f'min {b[0]:6.2f} p10 {b[1]:6.2f} med {b[2]:6.2f} ms | ratio min {c[0] / b[0]:5.2f}x '
          f'p10 {c[1] / b[1]:5.2f}x')


def relu_step():
  def loss(x, upstream):
    return jnp.sum(jax.nn.relu(x) * upstream)
  return jax.jit(jax.grad(loss))


def n2uq_step(bits: int):
  def loss(x, params, upstream):
    return jnp.vdot(quant.n2uq_activation(x, *params, bits=bits), upstream)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def scale_step():
  def loss(w, upstream):
    return jnp.vdot(w * 0.5, upstream)
  return jax.jit(jax.grad(loss))


def weight_step(bits: int):
  def loss(w, upstream):
    return jnp.vdot(quant.n2uq_weight(w, bits=bits), upstream)
  return jax.jit(jax.grad(loss))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shape', type=int, nargs=4, default=[32, 56, 56, 64],
                      help='NHWC activation shape (default: 32 56 56 64)')
  parser.add_argument('--kernel', type=int, nargs=4, default=[3, 3, 512, 512],
                      help='HWIO weight shape (default: 3 3 512 512)')
  parser.add_argument('--bits', type=int, nargs='+', default=[2, 4])
  parser.add_argument('--repeats', type=int, default=100)
  args = parser.parse_args()

  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], args.shape, jnp.float32) + 0.5
  upstream = jax.random.normal(keys[1], args.shape, jnp.float32)
  w = jax.random.normal(keys[2], args.kernel, jnp.float32) * 0.02
  w_upstream = jax.random.normal(keys[3], args.kernel, jnp.float32)

  print(f'jax {jax.__version__} on {jax.devices()[0].platform}, '
        f'{jax.device_count()} device(s); activation {tuple(args.shape)}, '
        f'kernel {tuple(args.kernel)}; {args.repeats} interleaved runs per pair')
  relu = (relu_step(), (x, upstream))
  for bits in args.bits:
    step = (n2uq_step(bits), (x, quant.init_n2uq_activation(bits), upstream))
    print(describe(*interleaved_times(relu, step, args.repeats),
                   f'n2uq_activation bits={bits}', 'relu'), flush=True)
  scale = (scale_step(), (w, w_upstream))
  for bits in args.bits:
    step = (weight_step(bits), (w, w_upstream))
    print(describe(*interleaved_times(scale, step, args.repeats),
                   f'n2uq_weight bits={bits}', 'w*c'), flush=True)


if __name__ == '__main__':
  main()
