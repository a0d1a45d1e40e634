"""The ImageNet recipe from PyTorch weights: ``init_checkpoint`` and
``teacher_checkpoint`` as ``torchvision:PATH`` (checkpoints written here), one W2A2
ResNet-18 step on mock data, then the trained model out to the official code's
layout; and the config checks of the prefixed form."""

import numpy as np
import orbax.checkpoint as ocp
import pytest

from n2uq_jax import interop
from n2uq_jax.train import config_lib, load_model, loop, metrics
from tests.train.mock_data import MockPipeline
from tests.train.test_configs import load

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
from tests.interop import official_reference  # pylint: disable=g-import-not-at-top,wrong-import-position


def save_torchvision(path, arch, seed):
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
  torch.save(model.state_dict(), path)
  return {k: v.numpy() for k, v in model.state_dict().items()}


def _softmax_cross_entropy_kd(student_logits, teacher_logits, temperature):
  """SPEC 5's KD-only loss in NumPy (float64): ``T^2`` times the batch mean of the soft
  cross-entropy ``-sum_c softmax(z_t / T)_c log_softmax(z_s / T)_c``."""
  s = np.asarray(student_logits, np.float64) / temperature
  t = np.asarray(teacher_logits, np.float64) / temperature
  log_q = s - s.max(-1, keepdims=True)
  log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
  p = np.exp(t - t.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return temperature ** 2 * np.mean(-(p * log_q).sum(-1))


def test_w2a2_resnet18_step_from_torchvision_init_and_teacher(tmp_path, quiet_config,
                                                              compilation_cache):
  init = save_torchvision(tmp_path / 'resnet18.pth', 'resnet18', seed=0)
  save_torchvision(tmp_path / 'teacher.pth', 'resnet18', seed=1)
  # Two steps; the first is a warmup step at learning rate 0, so the step-1 checkpoint
  # holds the parameters the run started from (the recipe's per-epoch decay would be 0
  # in a short run's only epoch, hence the constant schedule).
  config = quiet_config(
      load('imagenet_resnet18'), num_train_steps=2, global_batch_size=2,
      init_checkpoint=f'torchvision:{tmp_path / "resnet18.pth"}',
      teacher_checkpoint=f'torchvision:{tmp_path / "teacher.pth"}', teacher_model='resnet18_fp',
      checkpoint_every_steps=1, log_every_steps=1, eval_every_steps=-1,
      schedule='constant', warmup_epochs=1 / 3)
  assert config.variants == 'w2a2' and config.model_kwargs.quantize_downsample
  assert config.loss == 'kd'
  pipeline = MockPipeline(per_host_batch_size=2, image_shape=(32, 32, 3), num_classes=10,
                          steps_per_epoch=3, num_eval_batches=1)
  run_dir = tmp_path / 'run'
  summary = loop.train_and_evaluate(config, str(run_dir), pipeline=pipeline)
  assert summary['step'] == 2
  logged = {r['step']: r for r in metrics.read_metrics(str(run_dir)) if 'loss' in r}
  assert sorted(logged) == [1, 2] and logged[1]['learning_rate'] == 0.0

  # The logged loss of step 1 is the KD of the student (training mode: BatchNorm over
  # the batch) against the torchvision teacher (evaluation mode), run here in PyTorch.
  images = pipeline.train_batch(0)['image']
  teacher = torchvision.models.resnet18(weights=None, num_classes=10)
  teacher.load_state_dict(torch.load(tmp_path / 'teacher.pth'))
  teacher.eval()
  with torch.no_grad():
    teacher_logits = teacher(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  student = load_model(str(run_dir), step=1)
  student.train()
  student_logits = np.asarray(student(images))
  want = _softmax_cross_entropy_kd(student_logits, teacher_logits, config.kd_temperature)
  np.testing.assert_allclose(logged[1]['loss'], want, rtol=1e-5)

  manager = ocp.CheckpointManager(str(run_dir / 'checkpoints'))
  start, params = (manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore()))['model']['params'] for step in (1, 2))
  manager.close()
  # The W2A2 model started from the torchvision weights (the shortcut conv included),
  # and one Adam step (bias-corrected moments of two gradients) moves a weight by about
  # the learning rate at most.
  step = config.learning_rate * 1.1
  for path, key in (('layer1/0/conv1/kernel', 'layer1.0.conv1.weight'),
                    ('layer3/0/downsample/conv/kernel', 'layer3.0.downsample.0.weight'),
                    ('conv1/kernel', 'conv1.weight'), ('fc/kernel', 'fc.weight')):
    value, started = params, start
    for part in path.split('/'):
      value, started = value[part], started[part]
    want = init[key].transpose(2, 3, 1, 0) if init[key].ndim == 4 else init[key].T
    np.testing.assert_array_equal(np.asarray(started), want, err_msg=path)
    assert np.max(np.abs(np.asarray(value) - want)) <= step, path
  assert not np.array_equal(np.asarray(params['fc']['kernel']), init['fc.weight'].T)

  # The trained model out to the official code's layout (the README's evaluation path).
  model = load_model(str(run_dir))
  state = interop.to_official_n2uq_state_dict(model)
  official = official_reference.OfficialLayoutResNet(
      (2, 2, 2, 2), bottleneck=False, bits=2, quantize_downsample=True, num_classes=10)
  result = official.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                                    strict=False)
  assert result.unexpected_keys == []
  assert {k.rsplit('.', 1)[1] for k in result.missing_keys} == set(official_reference.CONSTANTS)
  np.testing.assert_array_equal(official.layer1[0].conv1.weight.detach().numpy(),
                                np.asarray(params['layer1']['0']['conv1']['kernel']).transpose(
                                    3, 2, 0, 1))


@pytest.mark.parametrize('field,value,model,match', [
    ('init_checkpoint', 'torchvision:r18.pth', 'resnet18', 'set init_model to one of'),
    ('teacher_checkpoint', 'torchvision:r101.npz', 'resnet101_fp', 'ending in .pth'),
    ('init_checkpoint', 'n2uq-official:x.pth.tar', 'resnet101_fp', "'resnet18', 'resnet34'"),
])
def test_prefixed_checkpoint_config_errors(field, value, model, match):
  config = load('imagenet_resnet18')
  config[field] = value
  config['init_model' if field == 'init_checkpoint' else 'teacher_model'] = model
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_prefixed_checkpoints_validate():
  config = load('imagenet_resnet18')
  config.init_checkpoint = 'torchvision:resnet18-f37072fd.pth'
  config.teacher_checkpoint = 'torchvision:resnet101.pth'
  config_lib.validate(config)
  config.init_checkpoint = 'n2uq-official:model_best.pth.tar'  # read into resnet18
  config_lib.validate(config)
