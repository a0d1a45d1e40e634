"""The quantizers compose with JAX's transformations: jit, grad, vmap,
jax.checkpoint, lax.scan and shard_map over a data axis."""

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np

from n2uq_jax import quant

BITS = 2


def _params():
  return quant.ActivationParams(jnp.asarray(0.05), jnp.asarray([0.3, 0.5, 0.2]),
                                jnp.asarray(0.8), jnp.asarray(1.4))


def _loss(params, x, upstream):
  return jnp.sum(quant.n2uq_activation(x, *params, bits=BITS) * upstream)


def _batch():
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (8, 5, 3)) + 0.6
  return x, jax.random.normal(keys[1], x.shape)


def test_jit_matches_eager():
  x, upstream = _batch()
  eager = jax.grad(_loss, argnums=(0, 1))(_params(), x, upstream)
  jitted = jax.jit(jax.grad(_loss, argnums=(0, 1)))(_params(), x, upstream)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6)


def test_vmap_per_example_gradients_sum_to_batch_gradient():
  x, upstream = _batch()
  batch_grads = jax.grad(_loss)(_params(), x, upstream)
  per_example = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(_params(), x, upstream)
  chex.assert_shape(per_example.intervals, (8, 3))
  chex.assert_trees_all_close(jax.tree.map(lambda g: g.sum(0), per_example), batch_grads,
                              rtol=1e-5, atol=1e-5)


def test_vmap_over_parameters():
  """A batch of quantizers (one parameter set per row) applied row by row."""
  x, upstream = _batch()
  stacked = jax.tree.map(lambda p: jnp.stack([p, 1.5 * p]), _params())
  y = jax.vmap(lambda p, x: quant.n2uq_activation(x, *p, bits=BITS))(stacked, x[:2])
  for row in range(2):
    params = jax.tree.map(lambda p: p[row], stacked)
    np.testing.assert_allclose(y[row], quant.n2uq_activation(x[row], *params, bits=BITS))
  grads = jax.vmap(jax.grad(_loss))(stacked, x[:2], upstream[:2])
  want = jax.grad(_loss)(jax.tree.map(lambda p: p[1], stacked), x[1], upstream[1])
  chex.assert_trees_all_close(jax.tree.map(lambda g: g[1], grads), want, rtol=1e-6)


def test_checkpoint_rematerialisation():
  x, upstream = _batch()
  plain = jax.grad(_loss, argnums=(0, 1))(_params(), x, upstream)
  remat = jax.jit(jax.grad(jax.checkpoint(_loss), argnums=(0, 1)))(_params(), x, upstream)
  chex.assert_trees_all_close(plain, remat, rtol=1e-6)


def test_scan_over_layers():
  """Two stacked quantizer layers applied with lax.scan; gradients equal the unrolled loop."""
  x, upstream = _batch()
  stacked = jax.tree.map(lambda p: jnp.stack([p, 0.9 * p]), _params())

  def scanned(params, x):
    def layer(h, p):
      return quant.n2uq_activation(h * 1.3 - 0.2, *p, bits=BITS), None
    return jnp.sum(jax.lax.scan(layer, x, params)[0] * upstream)

  def unrolled(params, x):
    h = x
    for i in range(2):
      h = quant.n2uq_activation(h * 1.3 - 0.2, *jax.tree.map(lambda p: p[i], params), bits=BITS)
    return jnp.sum(h * upstream)

  chex.assert_trees_all_close(jax.grad(scanned, argnums=(0, 1))(stacked, x),
                              jax.grad(unrolled, argnums=(0, 1))(stacked, x), rtol=1e-6)


def test_weight_quantizer_under_vmap_and_jit():
  w = jax.random.normal(jax.random.key(3), (4, 3, 3, 2, 5)) * 0.05
  batched = jax.vmap(lambda w: quant.n2uq_weight(w, bits=2))(w)
  single = jax.jit(lambda w: quant.n2uq_weight(w, bits=2))
  for i in range(4):   # the per-channel mean may sum in another order: one ulp
    np.testing.assert_allclose(batched[i], single(w[i]), rtol=1e-6)


_SHARD_MAP_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from n2uq_jax import quant
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ('data',))
    params = quant.ActivationParams(jnp.asarray(0.05), jnp.asarray([0.3, 0.5, 0.2]),
                                    jnp.asarray(0.8), jnp.asarray(1.4))
    x = jax.random.normal(jax.random.key(0), (16, 6)) + 0.6
    upstream = jax.random.normal(jax.random.key(1), x.shape)

    def loss(params, x, upstream):
      return jnp.sum(quant.n2uq_activation(x, *params, bits=2) * upstream)

    def sharded_grad(params, x, upstream):
      # Gradients of replicated parameters come back summed over 'data', as
      # for any JAX function of a replicated input inside shard_map.
      local = lambda params, x: jax.lax.psum(loss(params, x, upstream), 'data')
      return jax.grad(local, argnums=(0, 1))(params, x)

    fn = jax.jit(jax.shard_map(sharded_grad, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                               out_specs=(P(), P('data'))))
    got = fn(params, x, upstream)
    want = jax.grad(loss, argnums=(0, 1))(params, x, upstream)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    print('ok')
''')


def test_shard_map_over_data_axis():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _SHARD_MAP_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
