"""The embedded default, trained briefly, exported with the CLI and run through
IntegerModel (NumPy and JAX) and onnxruntime reproduces the fake-quantized model on
the embedded evaluation split; its tables hold no float copy of a quantized kernel
and it runs on its documented float parts alone, while one changed weight code or
threshold changes its output."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from n2uq_jax import data, export
from n2uq_jax.export import packing
from n2uq_jax import runs
from n2uq_jax.train import config_lib, load_model, loop

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
  assert manifest['source']['checkpoint_sha256'] == runs.restore_run(run_dir).checkpoint_sha256
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


def _images_with_flips(codes, ref_codes, n):
  """Per image, the number of codes in ``codes`` that differ from ``ref_codes``."""
  return np.sum([np.sum((codes[k] != ref_codes[k]).reshape(n, -1), -1) for k in ref_codes], 0)


def test_engines_reproduce_the_fake_quantized_model(exported):
  """Codes are compared exactly and their flips counted (the eager and the jitted model,
  and the engines, may round a quantizer input on a threshold to neighbouring codes);
  logits are compared on the images where no code flipped."""
  run_dir, out_dir, images, _ = exported
  n = images.shape[0]
  model = load_model(run_dir)
  jit_logits, ref_codes = export.fake_quantized_codes(model, images)
  with jax.disable_jit():
    eager_logits, eager_codes = export.fake_quantized_codes(model, images)
  np.testing.assert_array_equal(np.asarray(model(images)), eager_logits)
  total = sum(v.size for v in ref_codes.values())
  flips = _images_with_flips(eager_codes, ref_codes, n)
  print(f'eager vs jit: {flips.sum()} of {total} codes differ, in {np.sum(flips > 0)} images')
  assert flips.sum() <= 1e-5 * total
  np.testing.assert_allclose(eager_logits[flips == 0], jit_logits[flips == 0], rtol=1e-5,
                             atol=1e-6)

  engine = export.IntegerModel.load(out_dir)
  logits, codes = engine.run(images)
  jax_logits, jax_codes = engine.jax_run(images)
  for k in codes:
    np.testing.assert_array_equal(np.asarray(jax_codes[k]), codes[k])
  onnx_logits = ort.InferenceSession(os.path.join(out_dir, 'model.onnx'),
                                     providers=['CPUExecutionProvider']).run(
                                         None, {'image': images})[0]
  flips = _images_with_flips(codes, ref_codes, n)
  print(f'codes: {flips.sum()} of {total} differ, in {np.sum(flips > 0)} of {n} images')
  assert flips.sum() <= 1e-5 * total
  clean = flips == 0
  scale = np.max(np.abs(jit_logits))
  for name, got in (('numpy', logits), ('jax', np.asarray(jax_logits)), ('onnx', onnx_logits)):
    error = float(np.max(np.abs(got[clean] - jit_logits[clean])) / scale)
    print(f'{name}: max logit error {error:.3g} of max |logit|')
    assert error < 1e-4, name
    np.testing.assert_array_equal(got[clean].argmax(-1), jit_logits[clean].argmax(-1))


def _edited_export(out_dir, tmp_path, edit):
  edited = tmp_path / 'edited'
  shutil.copytree(out_dir, edited)
  tensors = load_file(str(edited / 'tables.safetensors'))
  edit(tensors)
  save_file(tensors, str(edited / 'tables.safetensors'))
  return export.IntegerModel.load(str(edited))


# Roles of the nodes a forward pass reads that are float by design (docs/EXPORT.md): the
# float stem and classifier, BatchNorm, RPReLU, the float quantizers' thresholds and
# scales, and the dequantization scales. Everything else float in the tables is an
# inspection copy of a folded chain, never needed to run.
RUNTIME_FLOAT_ROLES = {
    'conv': ('kernel', 'bias'), 'dense': ('kernel', 'bias'),
    'batch_norm': ('scale', 'bias', 'mean', 'var'), 'rprelu': ('bias_in', 'slope', 'bias_out'),
    'quantize': ('thresholds', 'input_scale', 'output_step'),
    'dequantize': ('weight_scale', 'output_step'),
}


def _runtime_float_tensors(manifest):
  """Names of the float tensors the graph's nodes read to run."""
  names = set()
  for node in manifest['graph']['nodes']:
    names.update(name for role, name in node.get('tensors', {}).items()
                 if role in RUNTIME_FLOAT_ROLES.get(node['op'], ()))
  return names


def test_tables_hold_no_float_copy_of_a_quantized_kernel(exported):
  _, out_dir, _, _ = exported
  with open(os.path.join(out_dir, 'manifest.json')) as f:
    manifest = json.load(f)
  tensors = load_file(os.path.join(out_dir, 'tables.safetensors'))
  quantized = {layer['name']: layer for layer in manifest['layers']}
  for name, layer in quantized.items():
    packed = manifest['tensors'][f'{name}.weight_codes']['packed']
    codes = tensors[f'{name}.weight_codes']
    assert codes.dtype == np.uint8 and codes.ndim == 1
    assert codes.size == -(-int(np.prod(packed['shape'])) * layer['weight_bits'] // 8)
    assert tensors[f'{name}.weight_scale'].shape == (packed['shape'][-1],)
    assert not any(t.startswith(f'{name}.') and t.endswith(('.kernel', '.bias'))
                   for t in tensors), name
  kernel_sizes = {int(np.prod(manifest['tensors'][f'{n}.weight_codes']['packed']['shape']))
                  for n in quantized}
  floats = {n: t for n, t in tensors.items() if np.issubdtype(t.dtype, np.floating)}
  assert all(t.dtype == np.float32 for t in floats.values())
  # no float tensor as large as a quantized kernel; the only float matrices are the
  # float stem and classifier
  assert not any(t.size in kernel_sizes for t in floats.values())
  assert sorted(n for n, t in floats.items() if t.ndim >= 2) == ['conv1.kernel', 'fc.kernel']
  assert 'conv1' not in quantized and 'fc' not in quantized
  # every other float tensor is a documented float part: read by a node to run, or a
  # folded chain's (dequantize, BatchNorm, RPReLU, quantizer) kept for inspection
  runtime = _runtime_float_tensors(manifest)
  folded_chains = {name for node in manifest['graph']['nodes'] if node['op'] == 'threshold'
                   for name in node['tensors'].values()}
  inspection = {n for n in floats if n not in runtime}
  assert inspection and inspection <= folded_chains, sorted(inspection - folded_chains)


def test_export_runs_on_its_documented_float_parts_and_is_sensitive_to_its_tables(
    exported, tmp_path):
  _, out_dir, images, _ = exported
  before = export.IntegerModel.load(out_dir)
  before_logits, before_codes = before.run(images)
  before_jax = np.asarray(before.jax_logits(images))
  with open(os.path.join(out_dir, 'manifest.json')) as f:
    runtime = _runtime_float_tensors(json.load(f))

  def zero_other_floats(tensors):  # every float tensor a forward pass does not read
    zeroed = [n for n, t in tensors.items()
              if np.issubdtype(t.dtype, np.floating) and n not in runtime]
    assert zeroed
    for n in zeroed:
      tensors[n] = np.zeros_like(tensors[n])

  zeroed = _edited_export(out_dir, tmp_path / 'z', zero_other_floats)
  logits, codes = zeroed.run(images)
  np.testing.assert_array_equal(logits, before_logits)
  np.testing.assert_array_equal(np.asarray(zeroed.jax_logits(images)), before_jax)
  for k in before_codes:
    np.testing.assert_array_equal(codes[k], before_codes[k])

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
