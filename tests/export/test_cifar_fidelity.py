"""CIFAR ResNet-20 W2A2 trained briefly on real CIFAR-10 JPEGs, exported: the
integer engines reproduce its codes and logits on CIFAR-10 images (skips without
the CIFAR-10 tarball, see tests/data/conftest.py)."""

import numpy as np
import pytest

from n2uq_jax import data, export
from n2uq_jax.train import config_lib, load_model, loop
from tests.data.conftest import cifar_folder, cifar_tarball  # noqa: F401

ort = pytest.importorskip('onnxruntime')


def test_cifar_resnet20_export_matches_on_cifar_images(cifar_folder, tmp_path, quiet_config,
                                                        compilation_cache):
  config = config_lib.cifar10_config('w2a2')
  config.data.update(source='folder', data_dir=cifar_folder, validation_fraction=0.25,
                     worker_count=0)
  config = quiet_config(config, loss='ce', num_train_steps=8, global_batch_size=16,
                        checkpoint_every_steps=8, eval_every_steps=-1, log_every_steps=4)
  run_dir = str(tmp_path / 'w2a2')
  loop.train_and_evaluate(config, run_dir)
  out_dir = str(tmp_path / 'export')
  export.export_run(run_dir, out_dir)

  pipeline = data.create_pipeline(config.data, per_host_batch_size=10, seed=0)  # 30 held out
  images = np.concatenate([b['image'][b['mask']] for b in pipeline.eval_batches()])
  model = load_model(run_dir)
  eager_logits = np.asarray(model(images))
  ref_logits, ref_codes = export.fake_quantized_codes(model, images)
  eager_top1 = np.mean(eager_logits.argmax(-1) == ref_logits.argmax(-1))
  print(f'eager vs jit fake-quantized: max logit difference '
        f'{np.max(np.abs(eager_logits - ref_logits)) / np.max(np.abs(ref_logits)):.3g}, '
        f'rows differing by > 1e-4: {np.sum(np.max(np.abs(eager_logits - ref_logits), -1) > 1e-4 * np.max(np.abs(ref_logits)))}, top-1 agreement {eager_top1}')
  engine = export.IntegerModel.load(out_dir)
  logits, codes = engine.run(images)
  mismatched = sum(int(np.sum(codes[k] != ref_codes[k])) for k in ref_codes)
  total = sum(v.size for v in ref_codes.values())
  print(f'cifar_resnet20: {mismatched} of {total} codes differ on {len(images)} images')
  assert mismatched <= 1e-5 * total
  onnx_logits = ort.InferenceSession(f'{out_dir}/model.onnx',
                                     providers=['CPUExecutionProvider']).run(
                                         None, {'image': images})[0]
  scale = np.max(np.abs(ref_logits))
  for got in (logits, engine.jax_logits(images), onnx_logits):
    print(f'max logit error {np.max(np.abs(got - ref_logits)) / scale:.3g} of max |logit|')
    assert np.max(np.abs(got - ref_logits)) < 1e-4 * scale
    np.testing.assert_array_equal(got.argmax(-1), ref_logits.argmax(-1))
