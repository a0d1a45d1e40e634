"""``compute_dtype`` and ``mesh.fsdp`` reach the train step the loop compiles: the
element types of its convolutions (forward and backward) and the shardings of the
parameters and optimizer moments it takes. The 8-device run is a subprocess whose
XLA_FLAGS are set before JAX starts (as in test_sharding.py)."""

import json
import os
import subprocess
import sys

from tests.train import lowered_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FSDP_MIN_SIZE = 256   # lowered_step sets config.mesh.fsdp_min_size to this


def _expected_spec(shape, fsdp):
  """The documented rule: arrays of at least ``fsdp_min_size`` elements split their
  last axis divisible by ``fsdp`` over the fsdp axis; the rest are replicated."""
  size = 1
  for d in shape:
    size *= d
  if fsdp > 1 and size >= FSDP_MIN_SIZE:
    for axis in reversed(range(len(shape))):
      if shape[axis] % fsdp == 0:
        return [None] * axis + ['fsdp'] + [None] * (len(shape) - axis - 1)
  return []


def _trimmed(spec):
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return spec


def test_float32_step_and_synchronous_checkpoints(tmp_path, compilation_cache):
  workdir = str(tmp_path / 'run')
  result = lowered_step.run_one_step(workdir, compute_dtype='float32',
                                     async_checkpointing=False)
  assert result['convolutions'] and all(
      types == ['f32'] * len(types) for types in result['convolutions'])
  assert result['summary']['step'] == 1
  # the synchronous path wrote both managers' step 1
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
  assert os.listdir(os.path.join(workdir, 'best')) == ['1']


def test_bfloat16_convolutions_and_fsdp_shardings_on_eight_devices(tmp_path, compilation_cache):
  env = dict(os.environ)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  env['JAX_PLATFORMS'] = 'cpu'
  out = tmp_path / 'step.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'tests.train.lowered_step', str(out), str(tmp_path / 'run'),
       '--fsdp', '2', '--compute-dtype', 'bfloat16'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())

  assert result['devices'] == 8 and result['mesh'] == {'data': 4, 'fsdp': 2}
  # every convolution of the step, forward and gradients, runs in bfloat16
  assert len(result['convolutions']) >= 3
  for types in result['convolutions']:
    assert types == ['bf16'] * len(types), types
  sharded = 0
  for group in ('params', 'opt_state'):
    for path, (shape, spec) in result[group].items():
      assert _trimmed(spec) == _trimmed(_expected_spec(shape, 2)), (group, path, shape, spec)
      sharded += 'fsdp' in spec
  assert sharded >= 3   # kernels and their optimizer moments are split, not only replicated
