"""The same 3 steps on 1 device and on 8 simulated devices (pure data parallel, and
with parameters split over an fsdp axis) give the same parameters to float tolerance.
Each configuration runs in a subprocess whose XLA_FLAGS are set before JAX starts.

The model is the small CNN at full precision, trained with Adam through the whole
training path (mesh, batch assembly, global BatchNorm statistics, optimizer groups,
checkpoint). The module note in sharded_run.py says why the quantized variant is not
compared parameter by parameter after several steps."""

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, name, devices, *extra, cache=''):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  out = tmp_path / f'{name}.npz'
  result = subprocess.run(
      [sys.executable, '-m', 'tests.train.sharded_run', str(out), str(tmp_path / name),
       '--cache', cache, *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return dict(np.load(out)), result.stdout


def test_one_device_and_eight_devices_agree(tmp_path, compilation_cache):
  single, _ = _run(tmp_path, 'one', 1, '--variant', 'fp', cache=compilation_cache)
  data8, out8 = _run(tmp_path, 'eight', 8, '--variant', 'fp', '--check-bad-batch',
                     cache=compilation_cache)
  fsdp8, _ = _run(tmp_path, 'fsdp', 8, '--variant', 'fp', '--fsdp', '2', cache=compilation_cache)
  assert int(single['__devices']) == 1 and int(data8['__devices']) == 8
  assert 'BAD_BATCH_ERROR: global_batch_size=12 does not divide over the 8 devices' in out8
  keys = [k for k in single if not k.startswith('__')]
  assert len(keys) > 10 and set(keys) == {k for k in data8 if not k.startswith('__')}
  for other in (data8, fsdp8):
    for key in keys:
      np.testing.assert_allclose(other[key], single[key], rtol=2e-5, atol=1e-5, err_msg=key)
  # training moved the parameters and the statistics (the comparison is not vacuous)
  assert np.abs(single["['model_state']['bn1']['mean']"]).max() > 0
  assert np.abs(single["['params']['rprelu_out']['bias_in']"]).max() > 1e-3
