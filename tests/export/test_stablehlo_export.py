"""``model.stablehlo``: the integer JAX twin serialized with ``jax.export`` for cpu, cuda
and tpu with a symbolic batch reloads in a process that imports only JAX and NumPy and
gives the twin's logits; the training step of a quantized ResNet-18 lowers for tpu and
cuda (no device needed), so an op only the CPU path supports is caught here."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import export, models
from n2uq_jax.train import config_lib, optimizer as optimizer_lib, step as step_lib
from tests.export.helpers import randomize

SERVE = '''
import sys
import jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], 'rb').read())
assert not any(m.startswith('n2uq_jax') for m in sys.modules), 'the package was imported'
images = np.load(sys.argv[2])
for n in (1, images.shape[0]):  # two batch sizes through the one symbolic batch
  np.save(f'{sys.argv[3]}_{n}.npy', np.asarray(exported.call(images[:n])))
print(exported.platforms, exported.in_avals)
'''


def test_twin_reloads_with_jax_alone_for_any_batch(tmp_path):
  policy = config_lib.quant_policy(config_lib.parse_variant('w2a2'))
  model = randomize(models.create_model('small_cnn', num_classes=10, policy=policy,
                                        rngs=nnx.Rngs(0), in_channels=1), seed=1)
  export.export_model(model, str(tmp_path / 'out'), model_name='small_cnn',
                      format='stablehlo', image_size=8)
  path = tmp_path / 'out' / 'model.stablehlo'
  images = np.random.default_rng(2).normal(size=(5, 8, 8, 1)).astype(np.float32)
  np.save(tmp_path / 'images.npy', images)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, '-c', SERVE, str(path), str(tmp_path / 'images.npy'),
                           str(tmp_path / 'logits')], cwd=tmp_path, env=dict(env,
                                                                             JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  print(result.stdout)
  assert "('cpu', 'cuda', 'tpu')" in result.stdout and 'batch' in result.stdout
  engine = export.IntegerModel.load(str(tmp_path / 'out'))
  for n in (1, 5):
    np.testing.assert_array_equal(np.load(tmp_path / f'logits_{n}.npy'),
                                  engine.jax_logits(images[:n]))


def test_stablehlo_needs_an_image_size(tmp_path):
  policy = config_lib.quant_policy(config_lib.parse_variant('w2a2'))
  model = models.create_model('small_cnn', num_classes=10, policy=policy, rngs=nnx.Rngs(0),
                              in_channels=1)
  with pytest.raises(ValueError, match="format 'stablehlo' needs image_size"):
    export.export_model(model, str(tmp_path), model_name='small_cnn', format='stablehlo')
  with pytest.raises(ValueError, match=r"format must be one of \['onnx', 'qonnx', 'stablehlo'\]"):
    export.export_model(model, str(tmp_path), model_name='small_cnn', format='tflite')
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_resnet18_training_step_lowers_for_tpu_and_cuda():
  config = config_lib.default_config('w2a2')
  variant = config_lib.parse_variant('w2a2')
  model = models.create_model('resnet18', num_classes=10,
                              policy=config_lib.quant_policy(variant), rngs=nnx.Rngs(0),
                              in_channels=3, quantize_downsample=True)
  schedule = optimizer_lib.make_schedule(config, steps_per_epoch=10, total_steps=10)
  tx = optimizer_lib.make_optimizer(
      config, optimizer_lib.param_labels(model, model_name='resnet18'), schedule)
  model_def, params, model_state = step_lib.split_model(model)
  state = jax.eval_shape(lambda p, s: step_lib.init_state(p, s, tx), params, model_state)
  batch = {'image': jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32),
           'label': jax.ShapeDtypeStruct((2,), np.int32)}
  train_step = jax.jit(step_lib.make_train_step(model_def, tx, schedule, loss='ce'))
  exported = jax.export.export(train_step, platforms=('tpu', 'cuda'))(state, batch, None)
  assert exported.platforms == ('tpu', 'cuda')
  text = exported.mlir_module()
  assert text.count('stablehlo.convolution') >= 3 * 20  # forward and two gradients per conv
