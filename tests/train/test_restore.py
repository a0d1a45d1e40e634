"""load_model rebuilds a run's model from config.json and restores the latest
checkpoint, a given step or the best one, in evaluation mode."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from n2uq_jax import data
from n2uq_jax.train import config_lib, load_model, loop, metrics


def _checkpoint_params(directory, step):
  manager = ocp.CheckpointManager(directory)
  restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  manager.close()
  return jax.tree.map(np.asarray, restored['model']['params'])


def _by_path(tree):
  """``{'layer/0/kernel': array}`` of a nested dict (integer or string keys)."""
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_load_model_latest_step_and_best(tmp_path, quiet_config, compilation_cache):
  config = quiet_config(config_lib.default_config('w2a2'), loss='ce', num_train_steps=6,
                        global_batch_size=16, checkpoint_every_steps=3, eval_every_steps=3,
                        log_every_steps=3, keep_checkpoints=2)
  run_dir = str(tmp_path / 'w2a2')
  summary = loop.train_and_evaluate(config, run_dir)
  pipeline = data.create_pipeline(config.data, per_host_batch_size=16, seed=0)
  batch = next(iter(pipeline.eval_batches()))

  latest = load_model(run_dir)
  params = _checkpoint_params(os.path.join(run_dir, 'checkpoints'), 6)
  np.testing.assert_array_equal(np.asarray(latest.fc.kernel.get_value()), params['fc']['kernel'])
  logits = np.asarray(latest(batch['image']))
  np.testing.assert_array_equal(logits, np.asarray(latest(batch['image'])))  # eval mode: no BN update
  accuracy = np.mean(logits.argmax(-1) == batch['label'])
  assert accuracy > 0.1

  early = load_model(run_dir, step=3)
  params3 = _checkpoint_params(os.path.join(run_dir, 'checkpoints'), 3)
  np.testing.assert_array_equal(np.asarray(early.fc.kernel.get_value()), params3['fc']['kernel'])
  # best: the first evaluation of the highest accuracy in metrics.jsonl, restored with
  # every parameter of its best/<step> checkpoint
  evaluations = [r for r in metrics.read_metrics(run_dir) if 'eval_accuracy' in r]
  assert [r['step'] for r in evaluations] == [3, 6]
  best_record = max(evaluations, key=lambda r: r['eval_accuracy'])  # first of equal ones
  assert summary['best_eval_accuracy'] == best_record['eval_accuracy']
  best = load_model(run_dir, step='best')
  best_params = _checkpoint_params(os.path.join(run_dir, 'best'), best_record['step'])
  got = _by_path(nnx.to_pure_dict(nnx.state(best, nnx.Param)))
  want = _by_path(best_params)
  assert sorted(got) == sorted(want) and len(want) > 10
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)

  with pytest.raises(ValueError, match='no checkpoint at step 5'):
    load_model(run_dir, step=5)
  with pytest.raises(ValueError, match='does not exist'):
    load_model(str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='no config.json'):
    load_model(str(tmp_path))
  with pytest.raises(ValueError, match='step must be'):
    load_model(run_dir, step='last')

  # A checkpoint whose files changed since they were written is refused, not loaded.
  step_dir = os.path.join(run_dir, 'checkpoints', '6')
  array_file = max((os.path.join(root, name) for root, _, names in os.walk(step_dir)
                    for name in names if name != 'sha256.json'), key=os.path.getsize)
  with open(array_file, 'r+b') as f:
    f.seek(os.path.getsize(array_file) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ValueError, match=r'checkpoints@6 is corrupt: .*SHA-256 mismatch'):
    load_model(run_dir)
  np.testing.assert_array_equal(np.asarray(load_model(run_dir, step=3).fc.kernel.get_value()),
                                params3['fc']['kernel'])
