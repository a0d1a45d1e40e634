"""Stopping after step n and resuming gives bit-identical parameters to an
uninterrupted run; a workdir holding a different config is refused; metrics.jsonl
holds the documented records."""

import json
import os

import jax
import numpy as np
import pytest

from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import config_lib, loop, metrics


def _config(quiet_config, **overrides):
  config = config_lib.default_config('w2a2')
  options = dict(loss='ce', num_train_steps=6, global_batch_size=16, checkpoint_every_steps=3,
                 eval_every_steps=3, log_every_steps=2, keep_checkpoints=2)
  options.update(overrides)
  return quiet_config(config, **options)


def _final_model(workdir):
  directory, step = os.path.join(workdir, 'checkpoints'), None
  ckpt = checkpoint_lib.Checkpointer(workdir)
  step = ckpt.latest_step()
  ckpt.close()
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(directory)
  restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  manager.close()
  return step, jax.tree.map(np.asarray, restored['model'])


def test_resume_is_bit_identical(tmp_path, quiet_config, compilation_cache):
  config = _config(quiet_config)
  full = loop.train_and_evaluate(config, str(tmp_path / 'full'))
  assert full['step'] == 6

  split_dir = str(tmp_path / 'split')
  first = loop.train_and_evaluate(config, split_dir, stop_after_step=3)
  assert first['step'] == 3
  step, _ = _final_model(split_dir)
  assert step == 3
  second = loop.train_and_evaluate(config, split_dir)
  assert second['step'] == 6

  step_a, model_a = _final_model(str(tmp_path / 'full'))
  step_b, model_b = _final_model(split_dir)
  assert step_a == step_b == 6
  leaves_a = jax.tree_util.tree_leaves_with_path(model_a)
  leaves_b = jax.tree.leaves(model_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for (path, a), b in zip(leaves_a, leaves_b):
    assert np.array_equal(a, b), jax.tree_util.keystr(path)
  assert full['final_eval_accuracy'] == second['final_eval_accuracy']

  # the run's records: train logs, evaluations with quantizer statistics, a summary
  records = metrics.read_metrics(str(tmp_path / 'full'))
  train = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train] == [2, 4, 6]
  for r in train:
    assert set(r) == {'step', 'loss', 'accuracy', 'learning_rate', 'images_per_second'}
  evals = [r for r in records if 'eval_accuracy' in r]
  assert [r['step'] for r in evals] == [3, 6]
  for r in evals:
    assert {'eval_loss', 'quantizers'} <= set(r)
    layers = r['quantizers']
    assert set(layers) == {'layer1.0.conv', 'layer1.1.conv'}
    for layer in layers.values():
      assert len(layer['thresholds']) == 3 and len(layer['occupancy']) == 4
      assert 0.0 <= layer['entropy_bits'] <= 2.0
      assert sum(layer['occupancy']) == pytest.approx(1.0, abs=1e-4)
  assert records[-1]['summary'] and records[-1]['variant'] == 'w2a2'
  # the best checkpoint is kept apart from the rotating ones
  assert os.listdir(tmp_path / 'full' / 'best')


def test_workdir_with_a_different_config_is_refused(tmp_path, quiet_config, compilation_cache):
  config = _config(quiet_config, num_train_steps=2, checkpoint_every_steps=2)
  loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['learning_rate'] == config.learning_rate
  changed = _config(quiet_config, num_train_steps=2, checkpoint_every_steps=2,
                    learning_rate=0.5)
  with pytest.raises(ValueError, match='different config.*learning_rate'):
    loop.train_and_evaluate(changed, str(tmp_path))
  # runtime-only fields may change (e.g. logging cadence): the run resumes, at its end
  runtime = _config(quiet_config, num_train_steps=2, checkpoint_every_steps=1,
                    log_every_steps=1)
  assert loop.train_and_evaluate(runtime, str(tmp_path))['step'] == 2
