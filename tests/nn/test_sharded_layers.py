"""A quantized conv block under jit with the batch split over 8 simulated devices
computes the same forward values and gradients as on one device."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from n2uq_jax import nn
    assert jax.device_count() == 8

    class Block(nnx.Module):
      def __init__(self, rngs):
        self.rprelu = nn.RPReLU(8)
        self.conv = nn.QuantConv(8, 16, 3, padding=1, spec=nn.QuantSpec.uniform_bits(2),
                                 rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, epsilon=1e-5, rngs=rngs)
      def __call__(self, x):
        return self.bn(self.conv(self.rprelu(x)))

    graphdef, state = nnx.split(Block(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (16, 6, 6, 8)) + 0.3
    cotangent = jax.random.normal(jax.random.key(2), (16, 6, 6, 16))

    @jax.jit
    def value_and_grads(state, x, cotangent):
      def loss(state, x):
        y = nnx.merge(graphdef, state)(x)
        return jnp.sum(y * cotangent), y
      (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, x)
      return y, grads

    mesh = Mesh(np.array(jax.devices()), ('data',))
    split = lambda a: jax.device_put(a, NamedSharding(mesh, P('data')))
    y1, g1 = value_and_grads(state, x, cotangent)
    y8, g8 = value_and_grads(state, split(x), split(cotangent))
    np.testing.assert_allclose(y8, y1, rtol=1e-5, atol=1e-5)
    leaves1 = jax.tree_util.tree_leaves_with_path(g1)
    leaves8 = jax.tree.leaves(g8)
    assert len(leaves1) == len(leaves8) > 5
    scale = max(float(np.abs(g).max()) for _, g in leaves1)
    for (path, a), b in zip(leaves1, leaves8):
      # output_scale is scale-invariant under the following BatchNorm: its true
      # gradient is zero and what remains is rounding noise of a cancelling sum.
      if 'output_scale' in jax.tree_util.keystr(path):
        continue
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale,
                                 err_msg=jax.tree_util.keystr(path))
    print('ok')
''')


def test_quantized_block_same_on_one_and_eight_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
