"""Two processes x 2 CPU devices (``jax.distributed`` on 127.0.0.1, Gloo collectives)
against one process x 4 devices, training the quantized (W2A2) small CNN through the
whole training path: the forward losses agree, the parameters agree to float tolerance
(same 4-device partitioning; only the all-reduce implementation differs), and a
checkpoint written by either layout resumes in the other. A SIGTERM that reaches one
process only stops both after the same step, with a checkpoint of it. Each process is a
subprocess (tests/train/multihost_run.py) whose XLA_FLAGS are set before JAX starts."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def _reserved_port():
  """A localhost port that no other program can take while the block runs.

  A socket bound to it with ``SO_REUSEPORT`` (and never listening) holds the port; the
  coordination service of ``jax.distributed`` (a gRPC server, which binds with
  ``SO_REUSEPORT``) binds it too, while a program without the option cannot, and the
  kernel hands the port to no one asking for a free one. So no program can take it
  between the choice and the coordinator's start.
  """
  with socket.socket() as holder:
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(('127.0.0.1', 0))
    yield holder.getsockname()[1]


def _launch(workdir, out, processes, cache, *extra, signal_process=None, at_batch=0):
  """Runs ``processes`` processes; with ``signal_process``, holds that one at batch
  ``at_batch``, sends it SIGTERM there, then lets it go on (the others are not
  signalled)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={4 // processes}')
  with _reserved_port() as port:
    running = [subprocess.Popen(
        [sys.executable, '-m', 'tests.train.multihost_run', str(workdir), str(out),
         '--processes', str(processes), '--process-id', str(i), '--port', str(port),
         '--cache', cache, *extra,
         *(['--hold-at', str(at_batch)] if i == signal_process else [])],
        cwd=ROOT, env=env, stdin=subprocess.PIPE if i == signal_process else None,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(processes)]
    seen = ''
    if signal_process is not None:
      signalled = running[signal_process]
      for line in signalled.stdout:
        seen += line
        if line.strip() == f'BATCH {at_batch}':
          signalled.send_signal(signal.SIGTERM)
          break
      signalled.stdin.write('go\n')
      signalled.stdin.flush()  # communicate() below closes it
    outputs = [p.communicate(timeout=600) for p in running]
  if signal_process is not None:
    outputs[signal_process] = (seen + outputs[signal_process][0], outputs[signal_process][1])
  for i, (p, (stdout, stderr)) in enumerate(zip(running, outputs)):
    assert p.returncode == 0, f'process {i}:\n{stdout[-3000:]}\n{stderr[-5000:]}'
  with open(out) as f:
    result = json.load(f)
  result['params'] = dict(np.load(str(out) + '.npz'))
  result['stdout'] = outputs[0][0]
  result['signalled_stdout'] = outputs[signal_process][0] if signal_process is not None else ''
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
  # the resumed two-process run gets a preemption notice on process 1 only, during
  # step 4: the processes agree on it one step later, so both stop after step 5 (before
  # the last, 6), exit 0 and checkpoint it
  preempted = _launch(tmp_path / 'one_then_two', tmp_path / 'b.json', 2, compilation_cache,
                      signal_process=1, at_batch=4)
  assert preempted['preempted'] == 'a stop request of another process'
  stopped = 5
  assert preempted['step'] == stopped and preempted['checkpoint_step'] == stopped
  assert 'BATCH 5\n' in preempted['signalled_stdout']
  assert 'BATCH 6\n' not in preempted['signalled_stdout']
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
