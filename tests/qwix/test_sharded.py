"""A model quantized through ``N2UQProvider`` runs under ``shard_map`` and under
``jit`` with the batch split over 8 simulated devices, with the forward values
and gradients (learned thresholds included) of one device."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np, qwix
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from n2uq_jax.qwix import N2UQProvider, N2UQRule
    assert jax.device_count() == 8

    class MLP(nnx.Module):
      def __init__(self, rngs):
        self.fc1 = nnx.Linear(6, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 4, rngs=rngs)
      def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))

    x = jax.random.normal(jax.random.key(1), (32, 6)) * 1.5 + 0.5
    cotangent = jax.random.normal(jax.random.key(2), (32, 4))
    model = qwix.quantize_model(MLP(nnx.Rngs(0)), N2UQProvider(
        [N2UQRule('fc.', weight_bits=2, act_bits=2)]), x[:2])
    graphdef, state = nnx.split(model)

    def value_and_grads(state, x, cotangent):
      def loss(state):
        y = nnx.merge(graphdef, state)(x)
        return jnp.sum(y * cotangent), y
      return jax.value_and_grad(loss, has_aux=True)(state)

    (_, y1), g1 = jax.jit(value_and_grads)(state, x, cotangent)

    mesh = Mesh(np.array(jax.devices()), ('data',))
    def per_shard(state, x, cotangent):
      # The parameters are replicated (invariant over 'data'): their gradients
      # come back summed over the shards by shard_map's autodiff.
      (_, y), g = value_and_grads(state, x, cotangent)
      return y, g
    sharded = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                                    out_specs=(P('data'), P())))
    y8, g8 = sharded(state, x, cotangent)

    split = lambda a: jax.device_put(a, NamedSharding(mesh, P('data')))
    (_, yj), gj = jax.jit(value_and_grads)(state, split(x), split(cotangent))

    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(g1)]
    assert sum('act_intervals' in p for p in paths) == 2, paths
    for y, g in ((y8, g8), (yj, gj)):
      np.testing.assert_allclose(y, y1, rtol=1e-5, atol=1e-5)
      for path, a, b in zip(paths, jax.tree.leaves(g1), jax.tree.leaves(g)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4, err_msg=path)
    print('ok')
''')


def test_shard_map_and_jit_over_eight_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
