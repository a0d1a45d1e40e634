"""``python train.py`` end to end in a subprocess, with a tiny number of steps."""

import os
import re
import subprocess
import sys

from n2uq_jax.train import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(workdir, *flags, cache=''):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, 'train.py', f'--workdir={workdir}', '--config.num_train_steps=4',
       '--config.global_batch_size=16', '--config.progress_bar=False',
       f'--config.compilation_cache_dir={cache}', *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_default_cli_run(tmp_path, compilation_cache):
  workdir = tmp_path / 'default'
  result = _train(workdir, cache=compilation_cache)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  assert '[fp] small_cnn: eval accuracy' in out
  assert '[w2a2] small_cnn: eval accuracy' in out
  assert 'summary: fp ' in out and ', w2a2 ' in out
  for variant in ('fp', 'w2a2'):
    assert (workdir / variant / 'checkpoints' / '4').is_dir()
    assert (workdir / variant / 'best').is_dir()
    records = metrics.read_metrics(str(workdir / variant))
    assert any('loss' in r for r in records)
    assert any('eval_accuracy' in r for r in records)
    assert records[-1]['summary']
  # the quantized variant started from the FP run and distilled from it
  assert 'initialised' in out and 'teacher small_cnn from' in out

  # the same command on the finished run says so instead of reporting 0.0 s of training
  finished = _train(workdir, cache=compilation_cache)
  assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
  for variant in ('fp', 'w2a2'):
    assert f'[{variant}] {workdir / variant} is already finished at step 4' in finished.stdout
    assert re.search(rf'\[{variant}\] small_cnn: eval accuracy .* after 4 steps, already '
                     'finished, nothing to train;', finished.stdout), finished.stdout
  assert ' s training' not in finished.stdout

  # a different config on the same workdir is refused, naming the field
  again = _train(workdir, '--config.learning_rate=0.5', cache=compilation_cache)
  assert again.returncode != 0
  assert 'different config' in again.stderr and 'learning_rate' in again.stderr

  # a bad value names the value and the choices
  bad = _train(tmp_path / 'bad', '--config.schedule=step', cache=compilation_cache)
  assert bad.returncode != 0
  assert "schedule='step'" in bad.stderr and 'epoch_linear' in bad.stderr
