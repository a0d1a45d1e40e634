"""Cost of the quantizers relative to a ReLU, forward + backward, jit-compiled.

Times ``n2uq_activation`` forward+backward with every gradient (input, offset,
intervals, input scale, output scale) on an NHWC float32 tensor against
``jax.nn.relu`` forward+backward on the same tensor in the same process, and
the entropy-preserving weight quantizer on a 3x3x512x512 kernel against a plain
``w * scale`` forward+backward. Reports medians of repeated runs and ratios.

Usage::

  python bench/quantizers.py [--shape 32 56 56 64] [--repeats 30] [--bits 2 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from n2uq_jax import quant


def _seconds(fn, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def interleaved_medians(baseline, candidate, repeats: int) -> tuple[float, float]:
  """Medians of ``repeats`` timings of two ``(fn, args)`` pairs, run alternately
  after a warm-up, so that load from other processes hits both alike."""
  for fn, args in (baseline, candidate):
    jax.block_until_ready(fn(*args))
  base_times, times = [], []
  for _ in range(repeats):
    base_times.append(_seconds(*baseline))
    times.append(_seconds(*candidate))
  return statistics.median(base_times), statistics.median(times)


def relu_step():
  def loss(x, upstream):
    return jnp.vdot(jax.nn.relu(x), upstream)
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
  parser.add_argument('--repeats', type=int, default=30)
  args = parser.parse_args()

  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], args.shape, jnp.float32) + 0.5
  upstream = jax.random.normal(keys[1], args.shape, jnp.float32)
  w = jax.random.normal(keys[2], args.kernel, jnp.float32) * 0.02
  w_upstream = jax.random.normal(keys[3], args.kernel, jnp.float32)

  print(f'jax {jax.__version__} on {jax.devices()[0].platform}, '
        f'{jax.device_count()} device(s); activation {tuple(args.shape)}, '
        f'kernel {tuple(args.kernel)}; medians of {args.repeats} interleaved runs')
  relu = (relu_step(), (x, upstream))
  for bits in args.bits:
    step = (n2uq_step(bits), (x, quant.init_n2uq_activation(bits), upstream))
    base, seconds = interleaved_medians(relu, step, args.repeats)
    print(f'n2uq_activation bits={bits} fwd+bwd {seconds * 1e3:8.2f} ms   '
          f'relu fwd+bwd {base * 1e3:7.2f} ms   ratio {seconds / base:6.2f}x')
  scale = (scale_step(), (w, w_upstream))
  for bits in args.bits:
    step = (weight_step(bits), (w, w_upstream))
    base, seconds = interleaved_medians(scale, step, args.repeats)
    print(f'n2uq_weight bits={bits} fwd+bwd     {seconds * 1e3:8.2f} ms   '
          f'w*c fwd+bwd  {base * 1e3:7.2f} ms   ratio {seconds / base:6.2f}x')


if __name__ == '__main__':
  main()
