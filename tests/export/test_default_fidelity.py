"""The embedded default, trained briefly, exported with the CLI and run through
IntegerModel (NumPy and JAX) and onnxruntime reproduces the fake-quantized model on
the embedded evaluation split; the export does not depend on the float kernels of
the checkpoint, while one changed weight code or threshold changes its output."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from n2uq_jax import data, export, nn
from n2uq_jax.export import packing
from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import config_lib, load_model, loop, restore, step as step_lib

ort = pytest.importorskip('onnxruntime')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  base = tmp_path_factory.mktemp('default_export')
  config = config_lib.default_config('w2a2')
  config.update(loss='ce', num_train_steps=40, global_batch_size=32, eval_every_steps=20,
                checkpoint_every_steps=20, log_every_steps=20, progress_bar=False,
                tensorboard=False, compilation_cache_dir='')
  run_dir = str(base / 'w2a2')
  loop.train_and_evaluate(config, run_dir)
  out_dir = str(base / 'export')
  result = subprocess.run([sys.executable, '-m', 'n2uq_jax.export', run_dir, out_dir],
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  pipeline = data.create_pipeline(data.default_config(), per_host_batch_size=128, seed=0)
  images = np.concatenate([b['image'][b['mask']] for b in pipeline.eval_batches()])
  return run_dir, out_dir, images, result.stdout


def test_cli_writes_the_export_and_a_size_report(exported):
  run_dir, out_dir, _, stdout = exported
  assert sorted(os.listdir(out_dir)) == ['manifest.json', 'model.onnx', 'tables.safetensors']
  assert 'quantized conv kernels' in stdout and 'whole model' in stdout
  with open(os.path.join(out_dir, 'manifest.json')) as f:
    manifest = json.load(f)
  assert manifest['model'] == 'small_cnn' and manifest['source']['step'] == 40
  assert manifest['source']['checkpoint_sha256'] == restore.restore_run(run_dir).checkpoint_sha256
  assert [l['name'] for l in manifest['layers']] == ['layer1.0.conv', 'layer1.1.conv']
  # layer1.1's quantizer reads conv -> bn -> RPReLU of layer1.0: folded (SPEC 8)
  assert [l['threshold_rule'] for l in manifest['layers']] == ['float', 'folded_int']
  assert all(l['weight_bits'] == l['activation_bits'] == 2 for l in manifest['layers'])
  # ONNX: standard ops only; the stem and the two quantized convs (onnx_graph's paths:
  # a windowed QLinearConv or an exact float Conv, ConvInteger only for 8-bit sums)
  import onnx  # pylint: disable=g-import-not-at-top
  graph = onnx.load(os.path.join(out_dir, 'model.onnx')).graph
  ops = [node.op_type for node in graph.node]
  assert ops.count('QLinearConv') + ops.count('Conv') == 3 and 'ConvInteger' not in ops
  assert 'GreaterOrEqual' in ops and 'Greater' in ops
  assert all(node.domain in ('', 'ai.onnx') for node in graph.node)
  assert [i.name for i in graph.input] == ['image'] and [o.name for o in graph.output] == [
      'logits']


def test_cli_refuses_a_missing_step_with_a_clear_error(exported, tmp_path):
  run_dir = exported[0]
  result = subprocess.run([sys.executable, '-m', 'n2uq_jax.export', run_dir, str(tmp_path),
                           '--step', '7'], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 2
  assert 'no checkpoint at step 7' in result.stderr and '[40]' in result.stderr


def test_cli_never_overwrites_an_export(exported):
  run_dir, out_dir, _, _ = exported
  before = {name: os.path.getmtime(os.path.join(out_dir, name)) for name in os.listdir(out_dir)}
  result = subprocess.run([sys.executable, '-m', 'n2uq_jax.export', run_dir, out_dir, '--no-onnx'],
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 2
  assert 'already holds an export' in result.stderr and '--overwrite' in result.stderr
  assert {name: os.path.getmtime(os.path.join(out_dir, name))
          for name in os.listdir(out_dir)} == before


def test_engines_reproduce_the_fake_quantized_model(exported):
  run_dir, out_dir, images, _ = exported
  model = load_model(run_dir)
  ref_logits = np.asarray(model(images))
  jit_logits, ref_codes = export.fake_quantized_codes(model, images)
  np.testing.assert_allclose(jit_logits, ref_logits, rtol=1e-5, atol=1e-6)
  engine = export.IntegerModel.load(out_dir)
  logits, codes = engine.run(images)
  jax_logits, jax_codes = engine.jax_run(images)
  onnx_logits = ort.InferenceSession(os.path.join(out_dir, 'model.onnx'),
                                     providers=['CPUExecutionProvider']).run(
                                         None, {'image': images})[0]
  mismatched = sum(int(np.sum(codes[k] != ref_codes[k])) for k in ref_codes)
  total = sum(v.size for v in ref_codes.values())
  print(f'codes: {mismatched} of {total} differ; {images.shape[0]} images')
  assert mismatched <= 1e-5 * total
  scale = np.max(np.abs(ref_logits))
  for name, got in (('numpy', logits), ('jax', np.asarray(jax_logits)), ('onnx', onnx_logits)):
    error = float(np.max(np.abs(got - ref_logits)) / scale)
    print(f'{name}: max logit error {error:.3g} of max |logit|')
    assert error < 1e-4, name
    np.testing.assert_array_equal(got.argmax(-1), ref_logits.argmax(-1))
  for k in codes:
    np.testing.assert_array_equal(np.asarray(jax_codes[k]), codes[k])


def _zero_quantized_kernels(run_dir):
  run = restore.restore_run(run_dir)
  for _, node in nnx.iter_graph(run.model):
    if isinstance(node, nn.QuantConv) and node.input_quantizer is not None:
      node.kernel.set_value(np.zeros_like(node.kernel.get_value()))
  _, params, model_state = step_lib.split_model(run.model)
  shutil.rmtree(os.path.join(run_dir, 'checkpoints'))
  shutil.rmtree(os.path.join(run_dir, 'best'))
  checkpoint_lib.save_model(os.path.join(run_dir, 'checkpoints'), run.step, params, model_state)


def _edited_export(out_dir, tmp_path, edit):
  edited = tmp_path / 'edited'
  shutil.copytree(out_dir, edited)
  tensors = load_file(str(edited / 'tables.safetensors'))
  edit(tensors)
  save_file(tensors, str(edited / 'tables.safetensors'))
  return export.IntegerModel.load(str(edited))


def test_export_is_independent_of_float_kernels_and_sensitive_to_its_tables(exported, tmp_path):
  run_dir, out_dir, images, _ = exported
  before_logits, before_codes = export.IntegerModel.load(out_dir).run(images)
  zeroed_dir = str(tmp_path / 'zeroed')
  shutil.copytree(run_dir, zeroed_dir)
  _zero_quantized_kernels(zeroed_dir)
  zeroed_model_logits = np.asarray(load_model(zeroed_dir)(images))
  assert np.max(np.abs(zeroed_model_logits - before_logits)) > 1e-2  # the zeroing took effect
  after_logits, after_codes = export.IntegerModel.load(out_dir).run(images)
  np.testing.assert_array_equal(after_logits, before_logits)

  with open(os.path.join(out_dir, 'manifest.json')) as f:
    info = json.load(f)['tensors']['layer1.1.conv.weight_codes']['packed']

  def flip_code(tensors):
    codes = packing.unpack(tensors['layer1.1.conv.weight_codes'], info['bits'], info['shape'])
    codes.reshape(-1)[0] = (codes.reshape(-1)[0] + 1) % 4
    tensors['layer1.1.conv.weight_codes'] = packing.pack(codes, info['bits'])

  logits = _edited_export(out_dir, tmp_path / 'w', flip_code).logits(images)
  assert np.max(np.abs(logits - before_logits)) > 0

  def move_int_threshold(tensors):  # channel 0's first threshold below every accumulator
    tensors['layer1.1.conv.input_quantizer.int_thresholds'][0, 0] = -2 ** 31 + 1

  logits, codes = _edited_export(out_dir, tmp_path / 'i', move_int_threshold).run(images)
  assert np.any(codes['layer1.1.conv'] != before_codes['layer1.1.conv'])
  assert np.max(np.abs(logits - before_logits)) > 0

  def move_float_threshold(tensors):  # the first threshold 0.25 lower
    t = tensors['layer1.0.conv.input_quantizer.thresholds']
    t[0] = t[0] - 0.25

  logits, codes = _edited_export(out_dir, tmp_path / 'f', move_float_threshold).run(images)
  assert np.any(codes['layer1.0.conv'] != before_codes['layer1.0.conv'])
  assert np.max(np.abs(logits - before_logits)) > 0


def _cli_export(run_dir, out_dir, fmt):
  result = subprocess.run([sys.executable, '-m', 'n2uq_jax.export', run_dir, out_dir,
                           '--format', fmt], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return sorted(os.listdir(out_dir))


def test_cli_qonnx_reproduces_the_integer_engine(exported, tmp_path):
  pytest.importorskip('qonnx')
  from tests.export.helpers import run_qonnx  # pylint: disable=g-import-not-at-top
  run_dir, _, images, _ = exported
  out_dir = str(tmp_path / 'qonnx')
  assert _cli_export(run_dir, out_dir, 'qonnx') == ['manifest.json', 'model.qonnx.onnx',
                                                     'tables.safetensors']
  images = images[:16]  # qonnx's executor runs node by node, one image at a time
  logits, codes = run_qonnx(os.path.join(out_dir, 'model.qonnx.onnx'), images)
  ref_logits, ref_codes = export.IntegerModel.load(out_dir).run(images)
  assert sorted(codes) == ['layer1.0.conv', 'layer1.1.conv']
  for layer in ref_codes:
    np.testing.assert_array_equal(codes[layer], ref_codes[layer], err_msg=layer)
  assert np.max(np.abs(logits - ref_logits)) <= 1e-6 * np.max(np.abs(ref_logits))


def test_cli_stablehlo_gives_the_twin_logits(exported, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  run_dir, _, images, _ = exported
  out_dir = str(tmp_path / 'stablehlo')
  assert _cli_export(run_dir, out_dir, 'stablehlo') == ['manifest.json', 'model.stablehlo',
                                                         'tables.safetensors']
  with open(os.path.join(out_dir, 'model.stablehlo'), 'rb') as f:
    served = jax.export.deserialize(f.read())
  assert served.platforms == ('cpu', 'cuda', 'tpu')
  np.testing.assert_array_equal(np.asarray(served.call(images)),
                                export.IntegerModel.load(out_dir).jax_logits(images))
