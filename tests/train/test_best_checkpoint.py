"""``best/`` keeps exactly the best-scoring evaluation's model, survives the
rotation of ``checkpoints/``, and checkpoint paths (a run directory, a manager
directory, ``DIR@STEP``) resolve as :func:`n2uq_jax.runs.checkpoints.resolve` documents.
Run with synchronous and asynchronous saving (where ``save_best`` right after a
save once read the metrics of a best checkpoint still being written)."""

import os

import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from n2uq_jax.runs import checkpoints as run_checkpoints
from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import step as step_lib

TX = optax.sgd(0.1)


def _state(step):
  """A small train state whose parameters identify ``step``."""
  params = {'w': jnp.full((3, 2), float(step)), 'b': jnp.arange(2.0) + step}
  state = step_lib.init_state(params, {'mean': jnp.full((2,), -float(step))}, TX)
  return state.replace(step=jnp.asarray(step, jnp.int32))


def _steps(directory):
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _restored_step(path):
  abstract = checkpoint_lib.abstract(_state(0))
  params, model_state, description = run_checkpoints.restore_model(
      path, abstract.params, abstract.model_state, select='best')  # as init and teacher
  step = int(np.asarray(params['w'])[0, 0])
  np.testing.assert_array_equal(params['b'], np.arange(2.0) + step)
  np.testing.assert_array_equal(model_state['mean'], -step)
  return step, description


@pytest.mark.parametrize('async_save', [False, True], ids=['sync', 'async'])
def test_best_keeps_the_best_evaluation_through_rotation(tmp_path, async_save):
  workdir = str(tmp_path / 'run')
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=2, async_save=async_save)
  scores = {2: 0.5, 3: 0.7, 4: 0.6}
  saved = {}
  for step in range(1, 7):
    state = _state(step)
    ckpt.save(step, state, {'position': step})
    if step in scores:
      saved[step] = ckpt.save_best(step, state, scores[step], info={'note': 'test'})
  ckpt.wait()
  assert saved == {2: True, 3: True, 4: False}
  assert ckpt.best_accuracy() == pytest.approx(0.7)
  restored, data_state, latest = ckpt.restore(checkpoint_lib.abstract(_state(0)))
  ckpt.close()
  reopened = checkpoint_lib.Checkpointer(workdir, keep=2, async_save=async_save)
  assert reopened.best_accuracy() == pytest.approx(0.7)          # as a resumed run reads it
  assert not reopened.save_best(7, _state(7), 0.65)
  reopened.close()

  assert _steps(os.path.join(workdir, 'checkpoints')) == [5, 6]   # rotated
  assert _steps(os.path.join(workdir, 'best')) == [3]             # survived the rotation
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'best'))
  info = manager.restore(3, args=ocp.args.Composite(info=ocp.args.JsonRestore()))['info']
  manager.close()
  assert info == {'step': 3, 'eval_accuracy': 0.7, 'note': 'test'}
  assert latest == 6 and int(restored.step) == 6 and data_state == {'position': 6}

  # A run directory resolves to best/, a manager directory to its latest step.
  best_dir = os.path.join(os.path.abspath(workdir), 'best')
  latest_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  assert run_checkpoints.resolve(workdir, 'best') == (best_dir, 3)
  assert run_checkpoints.resolve(latest_dir) == (latest_dir, 6)
  assert run_checkpoints.resolve(f'{latest_dir}@5') == (latest_dir, 5)
  assert run_checkpoints.resolve(f'{best_dir}@3') == (best_dir, 3)
  assert _restored_step(workdir) == (3, f'{best_dir}@3')
  assert _restored_step(f'{latest_dir}@5') == (5, f'{latest_dir}@5')
  with pytest.raises(ValueError, match='no checkpoint at step 4'):
    run_checkpoints.resolve(f'{latest_dir}@4')     # rotated away
  with pytest.raises(ValueError, match='no checkpoint found'):
    run_checkpoints.resolve(str(tmp_path / 'missing'))


def test_run_without_best_resolves_to_latest_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=3, async_save=False)
  for step in (2, 4):
    ckpt.save(step, _state(step), None)
  ckpt.close()
  latest_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  assert run_checkpoints.resolve(workdir, 'best') == (latest_dir, 4)
  assert run_checkpoints.resolve(f'{latest_dir}@2') == (latest_dir, 2)
  assert _restored_step(workdir) == (4, f'{latest_dir}@4')
