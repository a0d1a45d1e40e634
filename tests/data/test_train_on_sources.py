"""The training loop for one step on an image folder and on a prepared tfds dataset
(the CIFAR-10 JPEG fixtures), through the pipeline it builds from ``config.data``:
the step runs, the evaluation covers exactly the evaluation examples, and the
checkpoint holds the data iterator's state."""

import json
import os

import pytest

from n2uq_jax.data import transforms
from n2uq_jax.train import config_lib, loop, metrics


def _config(**data):
  config = config_lib.default_config('w2a2')
  config.update(dict(loss='ce', num_train_steps=1, global_batch_size=16, progress_bar=False,
                     tensorboard=False, compilation_cache_dir='', checkpoint_every_steps=1,
                     eval_every_steps=1, log_every_steps=1))
  config.data.update(dict(image_size=16, transform='imagenet', mean=transforms.IMAGENET_MEAN,
                          std=transforms.IMAGENET_STD, read_threads=0,
                          prefetch_buffer_size=0, **data))
  return config


def _check_run(workdir, num_eval_examples):
  records = metrics.read_metrics(workdir)
  train = [r for r in records if 'loss' in r and 'eval_accuracy' not in r]
  evals = [r for r in records if 'eval_accuracy' in r and 'summary' not in r]
  assert [r['step'] for r in train] == [1] and train[0]['loss'] > 0
  assert [r['step'] for r in evals] == [1]
  # accuracy is correct / count over the real (unpadded) evaluation examples
  correct = evals[0]['eval_accuracy'] * num_eval_examples
  assert correct == pytest.approx(round(correct), abs=1e-6)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
  with open(os.path.join(workdir, 'checkpoints', '1', 'data', 'process_0-of-1.json')) as f:
    record = json.load(f)
  assert record.get('json') or record.get('bytes')    # the grain iterator's state


def test_one_step_on_an_image_folder(cifar_folder, tmp_path):
  config = _config(source='folder', data_dir=cifar_folder, validation_fraction=0.25)
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['step'] == 1
  _check_run(str(tmp_path / 'run'), num_eval_examples=30)   # 120 JPEGs, a quarter held out


def test_one_step_on_a_tfds_dataset(tfds_cifar, tmp_path):
  name, data_dir, splits = tfds_cifar
  config = _config(source='tfds', name=name, data_dir=data_dir, train_split='train',
                   eval_split='test')
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['step'] == 1
  _check_run(str(tmp_path / 'run'), num_eval_examples=len(splits['test']))
