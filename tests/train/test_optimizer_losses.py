"""Optimizer groups (quantizer parameters at lr/10, quirk Q1), the per-epoch linear
schedule and the losses, against NumPy references written from SPEC 5."""

import fnmatch

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from n2uq_jax import models, nn
from n2uq_jax.train import config_lib, losses, optimizer


def _abstract_model(name, policy=None, **kwargs):
  return nnx.eval_shape(lambda: models.create_model(
      name, num_classes=10, policy=policy, rngs=nnx.Rngs(0), **kwargs))


def _w2a2():
  return config_lib.quant_policy(config_lib.parse_variant('w2a2'))


def test_every_quantizer_param_is_in_the_reduced_group():
  model = _abstract_model('resnet18', _w2a2())
  labels = optimizer.labels_by_name(optimizer.param_labels(model, model_name='resnet18'))
  quantizer_names = {
      '.'.join(map(str, path)) for path, v in nnx.iter_graph(model)
      if isinstance(v, nn.QuantizerParam)}
  assert quantizer_names  # 19 LTQs x 4 parameters
  assert len(quantizer_names) == 19 * 4
  for name, label in labels.items():
    expected = optimizer.QUANTIZER if name in quantizer_names else optimizer.DEFAULT
    assert label == expected, name


@pytest.mark.parametrize('name,reduced_intervals,full_intervals', [
    ('resnet18', 16, 3),  # conv1/conv2 of 8 blocks; 3 quantized downsamples
    ('resnet50', 32, 16 + 4),  # conv1/conv2 of 16 blocks; conv3 x16 and 4 downsamples
])
def test_quirk_q1_puts_only_conv1_conv2_intervals_at_lr_over_10(name, reduced_intervals,
                                                                 full_intervals):
  model = _abstract_model(name, _w2a2())
  plain = optimizer.labels_by_name(optimizer.param_labels(model, model_name=name))
  quirk = optimizer.labels_by_name(optimizer.param_labels(model, quirk_q1=True, model_name=name))
  changed = sorted(k for k in plain if plain[k] != quirk[k])
  assert all(k.endswith('input_quantizer.intervals') for k in changed)
  assert all(fnmatch.fnmatch(k, '*.conv3.*') or '.downsample.' in k for k in changed), changed
  assert len(changed) == full_intervals
  kept = [k for k, v in quirk.items() if k.endswith('.intervals') and v == optimizer.QUANTIZER]
  assert len(kept) == reduced_intervals
  # offsets and scales stay at lr/10 under Q1
  for k, v in quirk.items():
    if k.endswith(('offset', 'input_scale', 'output_scale')):
      assert v == optimizer.QUANTIZER, k


def test_quirk_q1_mobilenet_puts_the_pact_clip_at_full_lr():
  policy = config_lib.quant_policy(config_lib.parse_variant('w4a4'))
  model = _abstract_model('mobilenet_v2', policy)
  quirk = optimizer.labels_by_name(
      optimizer.param_labels(model, quirk_q1=True, model_name='mobilenet_v2'))
  full = [k for k, v in quirk.items() if v == optimizer.DEFAULT and (
      k.endswith('.intervals') or k.endswith('.alpha'))]
  assert full == ['features.18.conv.input_quantizer.alpha']


def _config(**overrides):
  config = config_lib.base_config()
  config.update(overrides)
  return config


def test_quantizer_group_moves_at_a_tenth_of_the_lr():
  """Adam's first step moves each parameter by ~lr * sign(g): lr for weights, lr/10
  for quantizer parameters."""
  params = {'kernel': jnp.ones((3,)), 'q': jnp.ones((2,))}
  labels = {'kernel': optimizer.DEFAULT, 'q': optimizer.QUANTIZER}
  config = _config(learning_rate=0.01)
  tx = optimizer.make_optimizer(config, labels, optax.constant_schedule(0.01))
  grads = {'kernel': jnp.array([1.0, -2.0, 3.0]), 'q': jnp.array([0.5, -4.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], [-0.01, 0.01, -0.01], rtol=1e-5)
  np.testing.assert_allclose(updates['q'], [-0.001, 0.001], rtol=1e-5)


def test_weight_decay_is_zero_by_default_and_adam_not_adamw():
  config = config_lib.imagenet_config('resnet18', 'resnet18_fp', 'w2a2')
  assert config.weight_decay == 0.0
  assert (config.optimizer, config.adam_b1, config.adam_b2, config.adam_eps) == (
      'adam', 0.9, 0.999, 1e-8)
  assert config.quantizer_lr_multiplier == 0.1


def numpy_adam_l2(params, grads_by_step, *, lr, b1, b2, eps, weight_decay, decayed):
  """PyTorch's Adam with ``weight_decay`` (L2 added to the gradient, not AdamW), written
  from its documented update; only the names in ``decayed`` get the L2 term."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v2 = {k: np.zeros_like(v) for k, v in params.items()}
  for t, grads in enumerate(grads_by_step, start=1):
    for k in params:
      g = np.asarray(grads[k], np.float64)
      if k in decayed:
        g = g + weight_decay * params[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      m_hat, v_hat = m[k] / (1 - b1 ** t), v2[k] / (1 - b2 ** t)
      params[k] = params[k] - lr[k] * m_hat / (np.sqrt(v_hat) + eps)
  return params


def test_weight_decay_reaches_only_the_conv_kernels_as_in_the_official_code():
  """SPEC 5: the official train.py gives ``weight_decay`` to its group of 4-D weights
  only; a dense kernel, a bias and a quantizer parameter (even in the default group
  under quirk Q1) are not decayed."""
  rng = np.random.default_rng(0)
  shapes = {'conv': (3, 3, 2, 4), 'dense': (5, 3), 'bias': (3,), 'q': (3,), 'q_full': (3,)}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  labels = {'conv': optimizer.DEFAULT, 'dense': optimizer.DEFAULT, 'bias': optimizer.DEFAULT,
            'q': optimizer.QUANTIZER, 'q_full': optimizer.DEFAULT}
  grads_by_step = [{k: 0.05 * rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
                   for _ in range(3)]
  config = _config(learning_rate=0.01, weight_decay=0.5, adam_eps=1e-3)
  tx = optimizer.make_optimizer(config, labels, optax.constant_schedule(0.01))
  state, current = tx.init(params), {k: jnp.asarray(v) for k, v in params.items()}
  for grads in grads_by_step:
    updates, state = tx.update({k: jnp.asarray(v) for k, v in grads.items()}, state, current)
    current = optax.apply_updates(current, updates)
  lr = {k: 0.001 if label == optimizer.QUANTIZER else 0.01 for k, label in labels.items()}
  kwargs = dict(lr=lr, b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.5)
  expected = numpy_adam_l2(params, grads_by_step, decayed={'conv'}, **kwargs)
  everything = numpy_adam_l2(params, grads_by_step, decayed=set(shapes), **kwargs)
  for k in shapes:
    np.testing.assert_allclose(current[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # the reference tells decayed from undecayed apart
    assert np.abs(everything[k] - expected[k]).max() > 1e-4 or k == 'conv', k


def numpy_epoch_linear(base_lr, steps_per_epoch, num_epochs, steps):
  """SPEC 5 / Q5: PyTorch LambdaLR(1 - epoch/E) stepped at the start of every epoch,
  so epoch e (0-based) has seen e + 1 scheduler steps."""
  out = []
  for step in steps:
    scheduler_steps = step // steps_per_epoch + 1
    out.append(base_lr * max(0.0, 1.0 - scheduler_steps / num_epochs))
  return np.array(out)


def test_per_epoch_linear_decay_matches_numpy_reference():
  schedule = optimizer.per_epoch_linear_decay(1.25e-3, 7, 5)
  steps = np.arange(0, 7 * 5 + 3)
  got = np.array([schedule(s) for s in steps])
  np.testing.assert_allclose(got, numpy_epoch_linear(1.25e-3, 7, 5, steps), rtol=1e-6)
  assert got[0] == pytest.approx(1.25e-3 * 4 / 5)  # lr0 itself is never used
  assert np.all(got[7 * 4:] == 0.0)  # the last epoch runs at 0


def test_make_schedule_epoch_linear_uses_the_run_length():
  config = _config(schedule='epoch_linear', learning_rate=0.1)
  schedule = optimizer.make_schedule(config, steps_per_epoch=10, total_steps=40)
  np.testing.assert_allclose([schedule(s) for s in (0, 9, 10, 39)], [0.075, 0.075, 0.05, 0.0],
                             rtol=1e-6)


def test_cosine_with_warmup():
  config = _config(schedule='cosine', learning_rate=0.1, warmup_epochs=1.0)
  schedule = optimizer.make_schedule(config, steps_per_epoch=10, total_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(60)) == pytest.approx(0.05, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-8)


def test_kd_loss_matches_numpy():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(5, 7)).astype(np.float32)
  teacher = rng.normal(size=(5, 7)).astype(np.float32) * 3
  p = np.exp(teacher - teacher.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  log_q = student - student.max(1, keepdims=True)
  log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
  expected = np.mean(-(p * log_q).sum(1))
  got = losses.distillation(jnp.asarray(student), jnp.asarray(teacher), temperature=1.0)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # the teacher gets no gradient
  g = jax.grad(lambda t: losses.distillation(jnp.asarray(student), t))(jnp.asarray(teacher))
  assert not np.any(g)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_kd_loss_at_a_temperature_matches_numpy(temperature):
  """SPEC 5 (as documented in losses.distillation): ``T^2 mean_b -sum_c p log q`` with
  both softmaxes at temperature ``T``; masked rows do not count."""
  rng = np.random.default_rng(2)
  student = rng.normal(size=(6, 5)) * 3
  teacher = rng.normal(size=(6, 5)) * 3

  def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  per_example = -(softmax(teacher / temperature) *
                  np.log(softmax(student / temperature))).sum(1)
  mask = np.array([True, True, False, True, False, True])
  s32, t32 = jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)
  got = losses.distillation(s32, t32, temperature=temperature)
  np.testing.assert_allclose(got, temperature ** 2 * per_example.mean(), rtol=1e-5)
  masked = losses.distillation(s32, t32, temperature=temperature, mask=jnp.asarray(mask))
  np.testing.assert_allclose(masked, temperature ** 2 * per_example[mask].mean(), rtol=1e-5)


def test_cross_entropy_with_label_smoothing_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 1])
  log_q = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  targets = np.full((4, 5), 0.1 / 5)
  targets[np.arange(4), labels] += 0.9
  expected = np.mean(-(targets * log_q).sum(1))
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  mask = np.array([True, False, True, False])
  masked = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.1,
                                mask=jnp.asarray(mask))
  np.testing.assert_allclose(masked, np.mean(-(targets * log_q).sum(1)[mask]), rtol=1e-5)
