"""Faults injected into a training run and what survives them: corrupt, truncated and
unfinished checkpoints (latest and best), a save that fails like a full disk, and NaN
losses under both ``nonfinite_policy`` values."""

import errno
import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from n2uq_jax.runs import checkpoints as run_checkpoints
from n2uq_jax.runs import model as model_lib
from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import config_lib, loop, metrics, step as step_lib
from tests.train.mock_data import MockPipeline


def _config(quiet_config, **overrides):
  config = config_lib.default_config('w2a2')
  options = dict(loss='ce', num_train_steps=6, global_batch_size=16, checkpoint_every_steps=3,
                 eval_every_steps=3, log_every_steps=3, keep_checkpoints=3)
  options.update(overrides)
  return quiet_config(config, **options)


def _pipeline():
  return MockPipeline(per_host_batch_size=16, image_shape=(8, 8, 1), num_classes=10)


def _model(manager_dir, step):
  manager = ocp.CheckpointManager(manager_dir)
  restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  manager.close()
  return jax.tree.leaves(jax.tree.map(np.asarray, restored['model']))


def _train_item(manager_dir, step):
  """The ``train`` item of a checkpoint: ``{'step', 'opt_state'}`` as NumPy arrays."""
  manager = ocp.CheckpointManager(manager_dir)
  restored = manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore()))
  manager.close()
  return jax.tree.map(np.asarray, restored['train'])


def _largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


def _flip_bytes(path):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(8)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted 6-step run: its final parameters."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  config = _config(_quiet(), compilation_cache_dir='')
  loop.train_and_evaluate(config, workdir, pipeline=_pipeline())
  return _model(os.path.join(workdir, 'checkpoints'), 6)


def _quiet():
  def apply(config, **overrides):
    config.update(dict(progress_bar=False, tensorboard=False, compilation_cache_dir=''))
    config.update(overrides)
    return config
  return apply


CORRUPTIONS = {
    # what is done to checkpoints/6, and the file the warning must name
    'flipped_tensor_bytes': lambda step_dir: _flip_bytes(_largest_file(
        os.path.join(step_dir, 'model'))) or _largest_file(os.path.join(step_dir, 'model')),
    'truncated_iterator_state': lambda step_dir: _truncate(os.path.join(
        step_dir, 'data', 'process_0-of-1.json')) or 'process_0-of-1.json',
    'truncated_without_manifest': lambda step_dir: (
        os.remove(os.path.join(step_dir, checkpoint_lib.MANIFEST)),
        _truncate(os.path.join(step_dir, 'data', 'process_0-of-1.json')))[-1] or 'step 6',
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_corrupt_latest_checkpoint_falls_back_to_the_newest_good_one(
    tmp_path, quiet_config, compilation_cache, reference, corruption, caplog):
  workdir = str(tmp_path)
  config = _config(quiet_config)
  loop.train_and_evaluate(config, workdir, pipeline=_pipeline())
  step_dir = os.path.join(workdir, 'checkpoints', '6')
  named = CORRUPTIONS[corruption](step_dir)
  good_before = _model(os.path.join(workdir, 'checkpoints'), 3)

  with caplog.at_level(logging.WARNING):
    summary = loop.train_and_evaluate(config, workdir, pipeline=_pipeline())
  warning = ' '.join(r.getMessage() for r in caplog.records if 'corrupt' in r.getMessage())
  assert 'training checkpoint step 6 is corrupt' in warning and 'using step 3' in warning
  assert os.path.basename(named) in warning, warning
  assert summary['step'] == 6
  # the bad one was moved aside, not deleted; step 3 is untouched; step 6 was retrained
  # to the uninterrupted run's parameters, bit for bit
  assert os.path.isdir(os.path.join(workdir, 'checkpoints.corrupt', '6', 'model'))
  for a, b in zip(_model(os.path.join(workdir, 'checkpoints'), 3), good_before):
    assert np.array_equal(a, b)
  final = _model(os.path.join(workdir, 'checkpoints'), 6)
  assert len(final) == len(reference)
  for a, b in zip(final, reference):
    assert np.array_equal(a, b)
  assert run_checkpoints.verify_manifest(step_dir) is None


def test_no_good_checkpoint_fails_and_moves_nothing(tmp_path, quiet_config, compilation_cache):
  workdir = str(tmp_path)
  config = _config(quiet_config)
  loop.train_and_evaluate(config, workdir, pipeline=_pipeline())
  for step in (3, 6):
    _flip_bytes(_largest_file(os.path.join(workdir, 'checkpoints', str(step), 'model')))
  with pytest.raises(ValueError, match=r'no training checkpoint .* restores: step 6 is corrupt'
                     r' .*SHA-256 mismatch.*step 3 is corrupt.*Nothing was moved'):
    loop.train_and_evaluate(config, workdir, pipeline=_pipeline())
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert not os.path.exists(os.path.join(workdir, 'checkpoints.corrupt'))


def test_corrupt_best_checkpoint(tmp_path, quiet_config, compilation_cache, caplog):
  workdir = str(tmp_path)
  config = _config(quiet_config)
  loop.train_and_evaluate(config, workdir, pipeline=_pipeline())
  best_dir = os.path.join(workdir, 'best')
  (best_step,) = [int(s) for s in os.listdir(best_dir)]
  _flip_bytes(_largest_file(os.path.join(best_dir, str(best_step), 'model')))

  # as an initialisation or a teacher: a warning naming the step and file, then the
  # newest good checkpoint of checkpoints/ (nothing of someone else's run is moved)
  model = model_lib.build_model('small_cnn', config_lib.parse_variant('w2a2'), num_classes=10,
                          in_channels=1, seed=0)
  _, params, model_state = step_lib.split_model(model)
  abstract = lambda tree: checkpoint_lib.abstract(tree)
  with caplog.at_level(logging.WARNING):
    _, _, where = run_checkpoints.restore_model(workdir, abstract(params), abstract(model_state),
                                               select='best')
  assert where == os.path.join(workdir, 'checkpoints') + '@6'
  warning = ' '.join(r.getMessage() for r in caplog.records)
  assert f'no model checkpoint in {best_dir} restores: step {best_step} is corrupt' in warning
  assert 'SHA-256' in warning and 'trying the next candidate' in warning
  assert os.listdir(best_dir) == [str(best_step)]
  with pytest.raises(ValueError, match='is corrupt.*SHA-256'):
    run_checkpoints.restore_model(f'{best_dir}@{best_step}', abstract(params),
                                 abstract(model_state))

  # in its own run: moved aside when the run resumes, and the next evaluation writes a
  # new best
  longer = _config(quiet_config, num_train_steps=9)
  with open(os.path.join(workdir, 'config.json')) as f:
    stored = json.load(f)
  stored['num_train_steps'] = 9
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(stored, f)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(longer, workdir, pipeline=_pipeline())
  assert f'best checkpoint step {best_step} is corrupt' in ' '.join(
      r.getMessage() for r in caplog.records)
  assert os.path.isdir(os.path.join(workdir, 'best.corrupt', str(best_step)))
  assert os.listdir(best_dir) == ['9']


def test_failed_save_is_loud_and_deletes_nothing(tmp_path, quiet_config, compilation_cache,
                                                 monkeypatch):
  workdir = str(tmp_path)
  config = _config(quiet_config, keep_checkpoints=1, eval_every_steps=-1)
  original = checkpoint_lib.IteratorStateHandler.save

  def disk_full_at_step_6(self, directory, args):
    if '6' in str(directory).split(os.sep)[-2].split('.')[0]:
      raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
    return original(self, directory, args)

  monkeypatch.setattr(checkpoint_lib.IteratorStateHandler, 'save', disk_full_at_step_6)
  with pytest.raises(checkpoint_lib.CheckpointSaveError,
                     match='step 6 .* No space left on device.*Older checkpoints are untouched'):
    loop.train_and_evaluate(config, workdir, pipeline=_pipeline())
  # keep_checkpoints=1, yet step 3 is still there and restores
  manager_dir = os.path.join(workdir, 'checkpoints')
  manager = ocp.CheckpointManager(manager_dir)
  assert manager.all_steps() == [3]
  manager.close()
  assert run_checkpoints.verify_manifest(os.path.join(manager_dir, '3')) is None
  assert len(_model(manager_dir, 3)) > 10
  monkeypatch.setattr(checkpoint_lib.IteratorStateHandler, 'save', original)
  assert loop.train_and_evaluate(config, workdir, pipeline=_pipeline())['step'] == 6


class _NaNPipeline(MockPipeline):

  def __init__(self, nan_batches, **kwargs):
    super().__init__(**kwargs)
    self.nan_batches = nan_batches

  def train_batch(self, index):
    batch = super().train_batch(index)
    if index + 1 in self.nan_batches:
      batch['image'][0, 0, 0, 0] = np.inf if index % 2 else np.nan
    return batch


def _nan_pipeline(*batches):
  return _NaNPipeline(set(batches), per_host_batch_size=16, image_shape=(8, 8, 1),
                      num_classes=10)


def test_nonfinite_loss_stops_the_run_naming_the_step(tmp_path, quiet_config,
                                                      compilation_cache):
  workdir = str(tmp_path)
  config = _config(quiet_config, eval_every_steps=-1, log_every_steps=4)
  with pytest.raises(step_lib.DivergenceError, match=r'non-finite .* at step 5;.*latest '
                     r'checkpoint: step 3.*nonfinite_policy=skip'):
    loop.train_and_evaluate(config, workdir, pipeline=_nan_pipeline(5))
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  assert manager.all_steps() == [3]
  manager.close()
  # resuming with the policy switched (a runtime field) skips that step
  skip = _config(quiet_config, eval_every_steps=-1, log_every_steps=4, nonfinite_policy='skip')
  summary = loop.train_and_evaluate(skip, workdir, pipeline=_nan_pipeline(5))
  assert summary['step'] == 6 and summary['nonfinite_steps'] == 1


def test_skipped_nonfinite_steps_are_counted_and_never_checkpointed(tmp_path, quiet_config,
                                                                    compilation_cache):
  workdir = str(tmp_path)
  constant = dict(schedule='constant', warmup_epochs=0.0, eval_every_steps=-1)
  config = _config(quiet_config, nonfinite_policy='skip', **constant)
  summary = loop.train_and_evaluate(config, workdir, pipeline=_nan_pipeline(2, 3, 6))
  assert summary['nonfinite_steps'] == 3
  counts = {r['step']: r.get('nonfinite_steps', 0) for r in metrics.read_metrics(workdir)
            if 'loss' in r}
  assert counts == {3: 2, 6: 1}
  records = [r for r in metrics.read_metrics(workdir) if 'loss' in r]
  assert all(np.isfinite(r['loss']) for r in records)
  for step in (3, 6):
    leaves = _model(os.path.join(workdir, 'checkpoints'), step)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
  # the skipped steps left the parameters, BatchNorm statistics and optimizer state
  # (Adam moments and counts) where they were: steps 2..3 changed nothing but the step
  one = str(tmp_path / 'one_step')
  loop.train_and_evaluate(_config(quiet_config, num_train_steps=1, checkpoint_every_steps=1,
                                  **constant), one, pipeline=_pipeline())
  for a, b in zip(_model(os.path.join(one, 'checkpoints'), 1),
                  _model(os.path.join(workdir, 'checkpoints'), 3)):
    assert np.array_equal(a, b)
  one_train = _train_item(os.path.join(one, 'checkpoints'), 1)
  skipped_train = _train_item(os.path.join(workdir, 'checkpoints'), 3)
  assert (int(one_train['step']), int(skipped_train['step'])) == (1, 3)
  one_opt = jax.tree_util.tree_leaves_with_path(one_train['opt_state'])
  skipped_opt = jax.tree.leaves(skipped_train['opt_state'])
  assert len(one_opt) == len(skipped_opt) > 10
  for (path, a), b in zip(one_opt, skipped_opt):
    assert np.array_equal(a, b), jax.tree_util.keystr(path)


def test_nonfinite_policy_is_validated(quiet_config):
  with pytest.raises(ValueError, match=r"nonfinite_policy='ignore' is not valid.*'stop', "
                     r"'skip'"):
    config_lib.validate(_config(quiet_config, nonfinite_policy='ignore'))
