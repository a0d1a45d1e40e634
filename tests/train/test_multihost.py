"""Two processes x 2 CPU devices (``jax.distributed`` on 127.0.0.1, Gloo collectives)
against one process x 4 devices, training the quantized (W2A2) small CNN through the
whole training path: the forward losses agree, the parameters agree to float tolerance
(same 4-device partitioning; only the all-reduce implementation differs), and a
checkpoint written by either layout resumes in the other. A SIGTERM that reaches one
process only stops both after the same step, with a checkpoint of it. Each process is a
subprocess (tests/train/multihost_run.py) whose XLA_FLAGS are set before JAX starts."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(workdir, out, processes, cache, *extra, signal_process=None, after_batch=0):
  """Runs ``processes`` processes; with ``signal_process``, sends SIGTERM to that one
  only once it has taken batch ``after_batch`` (run with ``--delay``)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={4 // processes}')
  port = _free_port()
  running = [subprocess.Popen(
      [sys.executable, '-m', 'tests.train.multihost_run', str(workdir), str(out),
       '--processes', str(processes), '--process-id', str(i), '--port', str(port),
       '--cache', cache, *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
  seen = ''
  if signal_process is not None:
    for line in running[signal_process].stdout:
      seen += line
      if line.strip() == f'BATCH {after_batch}':
        running[signal_process].send_signal(signal.SIGTERM)
        break
  outputs = [p.communicate(timeout=600) for p in running]
  if signal_process is not None:
    outputs[signal_process] = (seen + outputs[signal_process][0], outputs[signal_process][1])
  for i, (p, (stdout, stderr)) in enumerate(zip(running, outputs)):
    assert p.returncode == 0, f'process {i}:\n{stdout[-3000:]}\n{stderr[-5000:]}'
  with open(out) as f:
    result = json.load(f)
  result['params'] = dict(np.load(str(out) + '.npz'))
  result['stdout'] = outputs[0][0]
  return result


def test_two_processes_match_one_and_checkpoints_move_between_them(tmp_path,
                                                                   compilation_cache):
  two = _launch(tmp_path / 'two', tmp_path / 'two.json', 2, compilation_cache,
                '--stop-after', '3')
  one = _launch(tmp_path / 'one', tmp_path / 'one.json', 1, compilation_cache,
                '--stop-after', '3')
  assert (two['processes'], two['devices'], one['processes'], one['devices']) == (2, 4, 1, 4)
  assert sorted(two['losses']) == sorted(one['losses']) == ['1', '2', '3']
  for step in ('1', '2', '3'):
    np.testing.assert_allclose(two['losses'][step], one['losses'][step], rtol=1e-6)
  assert two['eval_accuracy'] == one['eval_accuracy']
  assert set(two['params']) == set(one['params']) and len(one['params']) > 10
  for key, value in one['params'].items():
    np.testing.assert_allclose(two['params'][key], value, rtol=1e-4, atol=5e-5, err_msg=key)

  # the two-process checkpoint (step 3) resumes in one process, and the reverse
  shutil.copytree(tmp_path / 'two', tmp_path / 'two_then_one')
  shutil.copytree(tmp_path / 'one', tmp_path / 'one_then_two')
  two_then_one = _launch(tmp_path / 'two_then_one', tmp_path / 'a.json', 1, compilation_cache)
  # the resumed two-process run gets a preemption notice on process 1 only, after it has
  # taken batch 4: both processes stop after the same step, exit 0 and checkpoint it
  preempted = _launch(tmp_path / 'one_then_two', tmp_path / 'b.json', 2, compilation_cache,
                      '--delay', '0.5', signal_process=1, after_batch=4)
  assert preempted['preempted'] == 'a stop request of another process'
  stopped = preempted['step']
  assert 4 <= stopped < 6 and preempted['checkpoint_step'] == stopped
  assert f'stopped by a stop request of another process after step {stopped}' in (
      preempted['stdout'])
  one_then_two = _launch(tmp_path / 'one_then_two', tmp_path / 'b.json', 2, compilation_cache)
  assert f'from step {stopped}' in one_then_two['stdout']
  assert f"resumed {tmp_path / 'two_then_one'} from step 3" in two_then_one['stdout']
  for result, workdir in ((two_then_one, 'two_then_one'), (one_then_two, 'one_then_two')):
    assert f'resumed {tmp_path / workdir} from step' in result['stdout']
    assert result['step'] == 6 and result['checkpoint_step'] == 6
  for step in ('4', '5', '6'):
    np.testing.assert_allclose(two_then_one['losses'][step], one_then_two['losses'][step],
                               rtol=1e-4)
  for key, value in two_then_one['params'].items():
    np.testing.assert_allclose(one_then_two['params'][key], value, rtol=1e-3, atol=1e-4,
                               err_msg=key)
