"""N2UQ activation quantizer at the sizes where its code paths change, against
the float64 NumPy reference (SPEC 2.2, 2.3).

On CPU the backward runs in blocks of ``activation._BLOCK`` elements, the last
block shifted back to end at the tensor's end with its already-counted head
masked out of the sums; sizes one below, at and above a block, two blocks plus
a ragged tail and a few hundred thousand elements exercise the single block,
the shifted last block and many blocks. Above ``activation._UNROLL_LIMIT``
thresholds (6 bits and more) the level codes and the backward use a broadcast
instead; the broadcast backward is also the one other backends run.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2uq_jax import quant
from n2uq_jax.quant import activation
from tests.quant import reference

BLOCK = activation._BLOCK
GRAD_NAMES = ('dx', 'offset', 'intervals', 'input_scale', 'output_scale')


def _case(bits, shape, seed):
  """Distinct random parameters (one interval clamped for even seeds) and an
  input spread over every segment, below ``d_0`` and above ``d_K``."""
  rng = np.random.default_rng(seed)
  k = 2 ** bits - 1
  intervals = rng.uniform(0.05, 0.6, k)
  if k > 1 and seed % 2 == 0:
    intervals[rng.integers(k)] = 5e-4
  offset = rng.uniform(-0.3, 0.3)
  input_scale = rng.uniform(0.6, 1.4)
  output_scale = rng.uniform(0.5, 2.0)
  top = offset + np.sum(np.maximum(intervals, 1e-3))
  x = rng.uniform(offset - 0.5, top + 0.5, shape) / input_scale
  upstream = rng.normal(size=shape)
  return x, (offset, intervals, input_scale, output_scale), upstream


@functools.partial(jax.jit, static_argnums=2)
def _grads(x, params, bits, upstream):
  def loss(x, *params):
    return jnp.sum(quant.n2uq_activation(x, *params, bits=bits) * upstream)
  return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(x, *params)


def _assert_grads_match(got, want, size):
  """Checks every gradient and names all that differ."""
  wrong = []
  for name, g, w in zip(GRAD_NAMES, got, want):
    # The parameter gradients are sums over ``size`` terms of order one.
    if not np.allclose(np.asarray(g), w, rtol=1e-10, atol=1e-12 * size):
      wrong.append(f'{name}: got {np.asarray(g).ravel()[:4]}, want {np.ravel(w)[:4]}')
  assert not wrong, '\n'.join(wrong)


def test_vectorized_reference_matches_per_element_reference():
  x, params, upstream = _case(3, (9, 11), 4)
  for name, v, e in zip(('y',) + GRAD_NAMES,
                        reference.activation_vectorized(x, *params, 3, upstream),
                        reference.activation(x, *params, 3, upstream)):
    np.testing.assert_allclose(v, e, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize('bits', [2, 4])
@pytest.mark.parametrize('shape', [(BLOCK - 1,), (BLOCK,), (BLOCK + 1,), (2 * BLOCK + 7,),
                                   (3, 5, 2185), (300_001,)],
                         ids=['block-1', 'block', 'block+1', '2block+7', '3x5x2185', '300001'])
def test_cpu_blockwise_backward_matches_reference(x64, bits, shape):
  x, params, upstream = _case(bits, shape, seed=sum(shape) + bits)
  got = _grads(jnp.asarray(x), tuple(map(jnp.asarray, params)), bits, jnp.asarray(upstream))
  want = reference.activation_vectorized(x, *params, bits, upstream)[1:]
  _assert_grads_match(got, want, x.size)


@pytest.mark.parametrize('bits', [5, 6])
def test_both_sides_of_the_unroll_limit(x64, bits):
  """5 bits (31 thresholds) still unrolls the compare chain and runs the
  blockwise backward; 6 bits (63) broadcasts. Both on a ragged two-block tensor."""
  x, params, upstream = _case(bits, (2 * BLOCK + 7,), seed=bits)
  jparams = tuple(map(jnp.asarray, params))
  want = reference.activation_vectorized(x, *params, bits, upstream)
  got = _grads(jnp.asarray(x), jparams, bits, jnp.asarray(upstream))
  _assert_grads_match(got, want[1:], x.size)
  y = quant.n2uq_activation(jnp.asarray(x), *jparams, bits=bits)
  np.testing.assert_allclose(y, want[0], rtol=1e-12)
  codes = quant.n2uq_activation_codes(jnp.asarray(x), *jparams[:3], bits=bits)
  np.testing.assert_array_equal(codes, np.round(want[0] / (params[3] * 2 / (2 ** bits - 1))))


@pytest.mark.parametrize('shape', [(BLOCK + 1,), (2 * BLOCK + 7,)], ids=['block+1', '2block+7'])
def test_broadcast_backward_matches_reference(x64, shape):
  """The backward that non-CPU backends run (``platform_dependent``'s default)."""
  bits = 3
  x, params, upstream = _case(bits, shape, seed=7)
  got = jax.jit(functools.partial(activation._backward_broadcast, bits))(
      jnp.asarray(x), jnp.asarray(upstream), *map(jnp.asarray, params))
  want = reference.activation_vectorized(x, *params, bits, upstream)[1:]
  _assert_grads_match(got, want, x.size)


def test_empty_input_has_zero_parameter_gradients():
  params = quant.init_n2uq_activation(2)
  x = jnp.zeros((0, 4), jnp.float32)
  dx, d_offset, d_intervals, d_in, d_out = _grads(x, tuple(params), 2, jnp.ones_like(x))
  assert dx.shape == (0, 4)
  np.testing.assert_array_equal(np.asarray(d_intervals), np.zeros(3))
  assert d_offset == 0 and d_in == 0 and d_out == 0
