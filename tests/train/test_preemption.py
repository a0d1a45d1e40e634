"""SIGTERM mid-run (the TPU preemption notice) and SIGINT: the run finishes its step,
checkpoints it off the cadence, exits 0 naming the step, and the same command resumes
to parameters bit-identical to an uninterrupted run. Each run is a subprocess
(tests/train/fault_run.py) that is really signalled."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from n2uq_jax.train import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 12


def _command(workdir, cache, *extra):
  return [sys.executable, '-m', 'tests.train.fault_run', str(workdir), '--steps', str(STEPS),
          '--cache', cache, *extra]


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu')


def _run(workdir, cache, *extra):
  result = subprocess.run(_command(workdir, cache, *extra), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def _signalled(workdir, cache, signum, at_batch):
  """Runs until it announces batch ``at_batch``, sends ``signum`` while the loop waits
  for that batch, then lets it go on: the signal arrives during step ``at_batch``."""
  process = subprocess.Popen(_command(workdir, cache, '--hold-at', str(at_batch)), cwd=ROOT,
                             env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.strip() == f'BATCH {at_batch}':
      process.send_signal(signum)
      break
  out, err = process.communicate('go\n', timeout=600)
  return process.returncode, ''.join(lines) + out, err


def _model(variant_dir, step):
  manager = ocp.CheckpointManager(os.path.join(variant_dir, 'checkpoints'))
  assert step in manager.all_steps(), manager.all_steps()
  restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  manager.close()
  return jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, restored['model']))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, compilation_cache):
  full = tmp_path_factory.mktemp('full')
  _run(full, compilation_cache)
  return full


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_the_step_and_resumes_bit_identically(tmp_path, compilation_cache,
                                                                 uninterrupted, signum):
  full = uninterrupted

  split = tmp_path / 'split'
  stopped = 3  # off the checkpoint cadence (5)
  status, out, err = _signalled(split, compilation_cache, signum, at_batch=stopped)
  assert status == 0, out[-3000:] + err[-3000:]
  name = signal.Signals(signum).name
  lines = [l for l in out.splitlines() if l.startswith(f'[w2a2] stopped by {name} after step ')]
  assert lines == [f'[w2a2] stopped by {name} after step {stopped} of {STEPS}; checkpoint '
                   f'{stopped} saved in {split / "w2a2" / "checkpoints"}. Run the same command '
                   'again to resume'], out
  assert f'BATCH {stopped + 1}\n' not in out  # it took no batch after the signal
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary['preempted'] == name and summary['step'] == stopped
  variant_dir = str(split / 'w2a2')
  assert os.path.isfile(os.path.join(variant_dir, 'checkpoints', str(stopped), 'sha256.json'))

  out = _run(split, compilation_cache)
  assert f'resumed {variant_dir} from step {stopped}' in out
  final = _model(variant_dir, STEPS)
  reference = _model(str(full / 'w2a2'), STEPS)
  assert len(final) == len(reference) > 10
  for (path, a), (_, b) in zip(final, reference):
    assert np.array_equal(a, b), jax.tree_util.keystr(path)
  logged = [r['step'] for r in metrics.read_metrics(variant_dir) if 'loss' in r]
  assert logged[-1] == STEPS
