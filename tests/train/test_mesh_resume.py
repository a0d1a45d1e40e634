"""A run stopped on one set of devices resumes on another: 8 CPU devices with
``mesh.fsdp=2`` (parameters sharded) then 1 device, and 1 device then 4 with
``mesh.fsdp=2``. The resumed run's loss curve and final model state (parameters and
BatchNorm statistics) match an uninterrupted 1-device run to the tolerances of the
2-process vs 1-process comparison (tests/train/test_multihost.py). Each session is a
subprocess (tests/train/mesh_resume_run.py) whose XLA_FLAGS are set before JAX starts."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6
STOP = 3


def _session(workdir, out, devices, cache, *extra):
  """One ``mesh_resume_run`` session on ``devices`` CPU devices: (its OUT.npz, stdout)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run(
      [sys.executable, '-m', 'tests.train.mesh_resume_run', str(workdir), str(out),
       '--steps', str(STEPS), '--cache', cache, *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  written = dict(np.load(out))
  assert int(written.pop('__devices')) == devices
  return written, result.stdout


def _losses(written):
  return {int(k[len('__loss_'):]): float(v) for k, v in written.items()
          if k.startswith('__loss_')}


def _model_state(written):
  return {k: v for k, v in written.items() if not k.startswith('__')}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, compilation_cache):
  tmp = tmp_path_factory.mktemp('uninterrupted')
  written, _ = _session(tmp / 'run', tmp / 'run.npz', 1, compilation_cache)
  assert int(written['__step']) == STEPS
  return written


@pytest.mark.parametrize('before,after', [((8, 2), (1, 1)), ((1, 1), (4, 2))],
                         ids=['8_devices_fsdp2_then_1', '1_device_then_4_fsdp2'])
def test_resume_on_other_devices_matches_an_uninterrupted_run(tmp_path, compilation_cache,
                                                              uninterrupted, before, after):
  workdir = tmp_path / 'run'
  (devices, fsdp), (new_devices, new_fsdp) = before, after
  first, _ = _session(workdir, tmp_path / 'first.npz', devices, compilation_cache,
                      '--fsdp', str(fsdp), '--stop-after', str(STOP))
  assert int(first['__step']) == STOP
  resumed, stdout = _session(workdir, tmp_path / 'resumed.npz', new_devices, compilation_cache,
                             '--fsdp', str(new_fsdp))
  assert f'resumed {workdir} from step {STOP}' in stdout
  assert int(resumed['__step']) == STEPS

  want = _losses(uninterrupted)
  got = _losses(resumed)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  for step in want:
    np.testing.assert_allclose(got[step], want[step], rtol=1e-6, err_msg=f'step {step}')
  want, got = _model_state(uninterrupted), _model_state(resumed)
  assert sorted(got) == sorted(want) and len(want) > 10
  for path, value in want.items():
    np.testing.assert_allclose(got[path], value, rtol=1e-4, atol=5e-5, err_msg=path)
  # the steps after the resumption trained: the model is not the one it resumed from
  assert any(not np.allclose(first[path], value) for path, value in want.items())
