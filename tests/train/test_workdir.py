"""The workdir of a run as a new user meets it: a start that fails writes nothing, a
workdir left by such a start is reused, a different run is refused with the way out
first, the default workdir names the config argument, and a run without a progress bar
still tells the console where it is."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import train  # pylint: disable=wrong-import-position
from n2uq_jax.runs import layout  # pylint: disable=wrong-import-position
from n2uq_jax.train import config_lib, loop  # pylint: disable=wrong-import-position
from tests.train.mock_data import MockPipeline  # pylint: disable=wrong-import-position


def _config(quiet_config, **overrides):
  config = config_lib.default_config('w2a2')
  options = dict(loss='ce', num_train_steps=2, global_batch_size=16, checkpoint_every_steps=2,
                 eval_every_steps=2, log_every_steps=1)
  options.update(overrides)
  return quiet_config(config, **options)


def _pipeline():
  return MockPipeline(per_host_batch_size=16, image_shape=(8, 8, 1), num_classes=10)


def test_a_failed_start_writes_nothing_and_the_corrected_command_runs(
    tmp_path, quiet_config, compilation_cache, capsys, monkeypatch):
  workdir = str(tmp_path / 'run')
  wrong_data = _config(quiet_config)
  wrong_data.data.source, wrong_data.data.data_dir = 'folder', str(tmp_path / 'no_such_data')
  with pytest.raises(ValueError, match='no_such_data'):
    loop.train_and_evaluate(wrong_data, workdir)
  assert not os.path.exists(workdir)
  missing_teacher = _config(quiet_config, loss='kd',
                            teacher_checkpoint=str(tmp_path / 'no_such_teacher'))
  with pytest.raises(ValueError, match='no checkpoint found'):
    loop.train_and_evaluate(missing_teacher, workdir, pipeline=_pipeline())
  assert not os.path.exists(workdir)

  # A workdir poisoned by such a start (config.json, no checkpoint) is reused.
  layout.write_config(workdir, wrong_data)
  corrected = _config(quiet_config)
  corrected.data.data_dir = str(tmp_path / 'the_right_data')
  monkeypatch.setattr(loop, 'SLOW_PHASE_SECONDS', 0.0)  # label every compile and evaluation
  summary = loop.train_and_evaluate(corrected, workdir, pipeline=_pipeline())
  assert summary['step'] == 2
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['data']['data_dir'] == corrected.data.data_dir

  # Without a progress bar, the console gets a line per logged step, the compile and
  # each evaluation.
  out = capsys.readouterr().out
  assert 'never reached a checkpoint; replacing it' in out
  for step in (1, 2):
    assert f'[w2a2] step {step}/2: loss ' in out and ' images/s, ETA ' in out
  assert '[w2a2] compiling the train step (first step): done in ' in out
  assert '[w2a2] evaluating at step 2: done in ' in out
  assert '[w2a2] step 2: eval accuracy ' in out

  # A run with a checkpoint is never overwritten; the refusal leads with the way out.
  changed = _config(quiet_config, learning_rate=0.5)
  with pytest.raises(ValueError, match=r'^use another --workdir: .*learning_rate'):
    loop.train_and_evaluate(changed, workdir, pipeline=_pipeline())


@pytest.mark.parametrize('argument, expected', [
    (train._DEFAULT_CONFIG, 'default'),  # pylint: disable=protected-access
    ('configs/default.py:fp,w2a2,dorefa', 'default_fp_w2a2_dorefa'),
    ('configs/cifar10_resnet20.py: W2A2 , lsq', 'cifar10_resnet20_w2a2_lsq'),
])
def test_the_default_workdir_names_the_config_argument(argument, expected):
  assert train.default_workdir(argument) == os.path.join('.', 'workdir', expected)
