"""CIFAR ResNet-20 W2A2 and W4A4 trained briefly on real CIFAR-10 JPEGs, exported:
the integer engines reproduce its codes and logits on CIFAR-10 images (generated JPEGs
in the same layout where the CIFAR-10 tarball is absent, see tests/data/conftest.py)."""

import numpy as np
import pytest

from n2uq_jax import data, export
from n2uq_jax.export import onnx_graph
from n2uq_jax.train import config_lib, load_model, loop
from tests.data.conftest import cifar_folder, cifar_tarball  # noqa: F401
from tests.export.helpers import check_codes_end_to_end

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


def _onnx_codes(out_dir, images):
  """``(logits, {layer: codes NHWC})`` from onnxruntime: the export's graph built with
  its codes as outputs (``onnx_graph.build_onnx(..., code_outputs=True)``), whose logits
  must equal those of the written ``model.onnx``."""
  engine = export.IntegerModel.load(out_dir)
  proto = onnx_graph.build_onnx(engine.graph, in_channels=images.shape[-1], code_outputs=True)
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  outputs = dict(zip([o.name for o in session.get_outputs()],
                     session.run(None, {'image': images})))
  written = ort.InferenceSession(f'{out_dir}/model.onnx', providers=['CPUExecutionProvider'])
  np.testing.assert_array_equal(written.run(None, {'image': images})[0], outputs['logits'])
  return outputs['logits'], {name[len('codes:'):]: np.transpose(value, (0, 2, 3, 1))
                             for name, value in outputs.items() if name.startswith('codes:')}


def test_cifar_resnet20_w4a4_export_codes_match_on_cifar_images(
    cifar_folder, tmp_path, quiet_config, compilation_cache):
  """W4A4, trained a few steps on the CIFAR-10 JPEGs: the codes of the NumPy engine
  and of onnxruntime against the fake-quantized model's, counted; in each image the first
  differing layer holds only near-ties one level off, and images whose codes all agree
  get the reference's logits."""
  config = config_lib.cifar10_config('w4a4')
  config.data.update(source='folder', data_dir=cifar_folder, validation_fraction=0.1,
                     worker_count=0)
  config = quiet_config(config, loss='ce', num_train_steps=4, global_batch_size=8,
                        checkpoint_every_steps=4, eval_every_steps=-1, log_every_steps=4)
  run_dir = str(tmp_path / 'w4a4')
  loop.train_and_evaluate(config, run_dir)
  out_dir = str(tmp_path / 'export')
  report = export.export_run(run_dir, out_dir)
  layers = [layer['name'] for layer in report['manifest']['layers']]
  assert {l['weight_bits'] for l in report['manifest']['layers']} == {4}

  pipeline = data.create_pipeline(config.data, per_host_batch_size=12, seed=0)  # 12 held out
  images = np.concatenate([b['image'][b['mask']] for b in pipeline.eval_batches()])
  model = load_model(run_dir)
  ref_logits, ref_codes, ref_inputs = export.fake_quantized_codes(model, images,
                                                                  with_inputs=True)
  assert all(int(c.max()) <= 15 for c in ref_codes.values())
  assert max(int(c.max()) for c in ref_codes.values()) > 3       # 4-bit levels in use
  engine = export.IntegerModel.load(out_dir)
  logits, codes = engine.run(images)
  onnx_logits, onnx_codes = _onnx_codes(out_dir, images)
  assert sorted(onnx_codes) == sorted(layers)
  scale = np.max(np.abs(ref_logits))
  for name, got_logits, got_codes in (('numpy', logits, codes),
                                      ('onnx', onnx_logits, onnx_codes)):
    clean = check_codes_end_to_end(engine, got_codes, ref_codes, ref_inputs,
                                   f'cifar_resnet20 w4a4 {name}')
    assert clean.sum() >= len(images) // 2, name   # the logits are compared somewhere
    error = np.max(np.abs(got_logits[clean] - ref_logits[clean])) / scale
    print(f'{name}: max logit error {error:.3g} of max |logit| on {clean.sum()} images')
    assert error < 1e-4, name
    np.testing.assert_array_equal(got_logits[clean].argmax(-1), ref_logits[clean].argmax(-1))
