"""One training step of every ImageNet config (and CIFAR) on mock data: 32 px images,
batch 2, initialised from an FP checkpoint and distilled from a teacher checkpoint
written by this project (see smoke_run.py); plus the bfloat16 compute option."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from n2uq_jax.train import config_lib, loop
from tests.train.mock_data import MockPipeline
from tests.train.test_configs import ROOT, load


FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
GROUPS = (
    ('imagenet_resnet18:eval', 'imagenet_resnet34', 'cifar10_resnet20:eval'),
    ('imagenet_resnet50', 'imagenet_mobilenet_v2'),
)


@pytest.mark.slow
def test_one_step_smoke_of_every_config(tmp_path, compilation_cache):
  """Two subprocesses (one per core), each running configs one after the other."""
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'tests.train.smoke_run', str(tmp_path / f'group{i}'),
       compilation_cache, *group], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i, group in enumerate(GROUPS)]
  results = {}
  for proc in procs:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    for line in out.splitlines():
      if line.startswith('{'):
        record = json.loads(line)
        results[record['name']] = record
  assert set(results) == {item.split(':')[0] for group in GROUPS for item in group}
  for name, record in results.items():
    assert record['step'] == 1 and record['checkpoint'], record
    assert np.isfinite(record['loss']) and record['loss'] > 0, record
  for name in ('imagenet_resnet18', 'cifar10_resnet20'):
    assert 0.0 <= results[name]['eval_accuracy'] <= 1.0
  assert results['imagenet_resnet18']['quantizer_layers'] == 19  # downsample quantized
  assert results['cifar10_resnet20']['quantizer_layers'] > 0


def test_kd_without_teacher_checkpoint_is_a_clear_error(tmp_path, quiet_config):
  config = quiet_config(load('imagenet_resnet18'), num_train_steps=1, global_batch_size=2)
  pipeline = MockPipeline(per_host_batch_size=2, image_shape=(32, 32, 3))
  with pytest.raises(ValueError, match='teacher_checkpoint'):
    loop.train_and_evaluate(config, str(tmp_path), pipeline=pipeline)


def test_bfloat16_compute_keeps_float32_master_weights(tmp_path, quiet_config, compilation_cache):
  config = quiet_config(config_lib.default_config('w2a2'), loss='ce', num_train_steps=2,
                        global_batch_size=8, compute_dtype='bfloat16')
  pipeline = MockPipeline(per_host_batch_size=8)
  summary = loop.train_and_evaluate(config, str(tmp_path), pipeline=pipeline)
  assert summary['step'] == 2
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'))
  restored = manager.restore(2, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
  manager.close()
  dtypes = {np.asarray(x).dtype for x in jax.tree.leaves(restored['model'])}
  assert dtypes == {np.dtype('float32')}
