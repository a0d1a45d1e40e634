"""``python -m n2uq_jax.inspect`` on a short run of the embedded default: the files it
writes, and its numbers against independent computations (BOPs and model size of
small_cnn counted by hand from its layer shapes; thresholds, level occupancy and
entropies recomputed in float64 NumPy from SPEC 2.2 and 3.1)."""

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest

from n2uq_jax import data, export
from n2uq_jax.inspect import __main__ as cli
from n2uq_jax import runs as restore
from n2uq_jax.train import metrics

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
BATCHES, BATCH_SIZE = 3, 64  # the inspection's evaluation batches


def _inspect(capsys, run_dir, out_dir, *extra):
  """Runs the CLI; checks that it printed what it wrote into summary.txt."""
  assert cli.main([str(run_dir), '--out', str(out_dir), '--batches', str(BATCHES),
                   '--batch-size', str(BATCH_SIZE), *extra]) == 0
  printed = capsys.readouterr().out
  with open(out_dir / 'summary.json', encoding='utf-8') as f:
    summary = json.load(f)
  assert (out_dir / 'summary.txt').read_text() == printed == summary['text']
  return summary


def _best_step(run_dir):
  return max(int(name) for name in os.listdir(run_dir / 'best') if name.isdigit())


@pytest.fixture(scope='module')
def w2a2_inspection(default_run, tmp_path_factory):
  """``(out_dir, summary, printed)`` of the CLI on the W2A2 run."""
  workdir, _ = default_run
  out_dir = tmp_path_factory.mktemp('inspect_w2a2')
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert cli.main([str(workdir / 'w2a2'), '--out', str(out_dir), '--batches', str(BATCHES),
                     '--batch-size', str(BATCH_SIZE)]) == 0
  with open(out_dir / 'summary.json', encoding='utf-8') as f:
    summary = json.load(f)
  return out_dir, summary, printed.getvalue()


def _entropy(fractions):
  p = np.asarray(fractions, np.float64)
  p = p[p > 0]
  return float(-(p * np.log2(p)).sum())


# small_cnn on 8x8x1 digits, width 32, 10 classes (n2uq_jax/models/cifar.py):
# (name, kernel shape, output H*W, quantized)
SMALL_CNN_LAYERS = (
    ('conv1', (3, 3, 1, 32), 8 * 8, False),
    ('layer1.0.conv', (3, 3, 32, 32), 8 * 8, True),
    ('layer1.1.conv', (3, 3, 32, 64), 4 * 4, True),  # stride 2, padding 1
    ('fc', (64, 10), 1, False),
)


def _hand_counted_cost(bits):
  macs = {name: hw * int(np.prod(kernel)) for name, kernel, hw, _ in SMALL_CNN_LAYERS}
  bops = {name: macs[name] * (bits * bits if quantized else 32 * 32)
          for name, _, _, quantized in SMALL_CNN_LAYERS}
  kernels = {name: int(np.prod(kernel)) for name, kernel, _, _ in SMALL_CNN_LAYERS}
  # every other value: BN (scale, bias, mean, var) after conv1 (32), the two block convs
  # (32, 64); RPReLU (3 per channel) before each block conv (32, 32) and at the end (64);
  # the fc bias; per N2UQ quantizer offset + 2**bits - 1 intervals + two scales.
  other = 4 * (32 + 32 + 64) + 3 * (32 + 32 + 64) + 10
  quantizer_values = 2 * (1 + (2 ** bits - 1) + 2) if bits < 32 else 0
  values = sum(kernels.values()) + other + quantizer_values
  quantized_weights = kernels['layer1.0.conv'] + kernels['layer1.1.conv'] if bits < 32 else 0
  quantized_bytes = (quantized_weights * bits + 32 * (values - quantized_weights)) / 8
  return macs, bops, values, quantized_weights, quantized_bytes


def test_w2a2_run_writes_figures_and_a_summary_with_hand_counted_costs(
    default_run, w2a2_inspection):
  workdir, summaries = default_run
  out_dir, summary, printed = w2a2_inspection
  assert (out_dir / 'summary.txt').read_text() == printed == summary['text']
  assert summary['figures'] == ['thresholds.png', 'occupancy.png', 'curves.png']
  for name in summary['figures']:
    content = (out_dir / name).read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 5000, name
  assert summary['model'] == 'small_cnn' and summary['variant'] == 'w2a2'
  assert summary['images_inspected'] == BATCHES * BATCH_SIZE
  assert summary['checkpoint'].endswith(f"best@{_best_step(workdir / 'w2a2')}")
  assert summary['checkpoint_step'] == _best_step(workdir / 'w2a2')
  assert summary['checkpoint_eval_accuracy'] == summaries['w2a2']['best_eval_accuracy']

  macs, bops, values, quantized_weights, quantized_bytes = _hand_counted_cost(2)
  layers = {row['name']: row for row in summary['layers']}
  assert [row['name'] for row in summary['layers']] == [n for n, *_ in SMALL_CNN_LAYERS]
  for name, row in layers.items():
    assert row['macs'] == macs[name] and row['bops'] == bops[name], name
  assert (layers['layer1.0.conv']['weight_bits'], layers['layer1.0.conv']['activation_bits']) \
      == (2, 2)
  assert (layers['conv1']['weight_bits'], layers['fc']['activation_bits']) == (32, 32)
  assert summary['total_macs'] == sum(macs.values())
  assert summary['total_bops'] == sum(bops.values())
  size = summary['model_size']
  assert size['values'] == values and size['quantized_weights'] == quantized_weights
  assert size['quantized_bytes'] == quantized_bytes and size['float32_bytes'] == 4 * values
  text = summary['text']
  assert f"BOPs per image: {sum(bops.values()):,d}" in text
  assert (f"{quantized_bytes:,.0f} bytes at these bit-widths (quantized weights at their bits, "
          "every other value in float32; the export also stores per-channel scales and "
          "threshold tables)") in text
  for name in layers:
    assert f'{bops[name]:,d}' in text


def _spec_thresholds(offset, intervals):
  """SPEC 2.2 in float64: clamped intervals, breakpoints, then T_i = d_{i-1} + a_i / 2."""
  a = np.where(intervals > 1e-3, intervals, 1e-3)
  d = offset + np.concatenate([[0.0], np.cumsum(a)])
  return d[:-1] + a / 2


def _spec_weight_codes(kernel, bits):
  """SPEC 3.1 in float64: per output channel (last axis) codes 0..K."""
  k = 2 ** bits - 1
  gamma = k / 2 ** (bits - 1)
  sigma = gamma * np.mean(np.abs(kernel), axis=tuple(range(kernel.ndim - 1)), keepdims=True)
  return np.round((np.clip(kernel / sigma, -1, 1) + 1) * k / 2).astype(np.int64)


def test_thresholds_and_occupancy_match_numpy(default_run, w2a2_inspection):
  workdir, _ = default_run
  _, summary, _ = w2a2_inspection
  layers = {row['name']: row for row in summary['layers']}

  model = restore.load_model(str(workdir / 'w2a2'), step='best')
  pipeline = data.create_pipeline(data.default_config(), per_host_batch_size=BATCH_SIZE,
                                  seed=0)
  inputs = {'layer1.0.conv': [], 'layer1.1.conv': []}
  masks = []
  for index, batch in enumerate(pipeline.eval_batches()):
    if index == BATCHES:
      break
    stem = jax.nn.relu(model.bn1(model.conv1(batch['image'])))
    first, second = model.layer1
    inputs['layer1.0.conv'].append(np.asarray(first.rprelu(stem), np.float64))
    inputs['layer1.1.conv'].append(np.asarray(second.rprelu(first(stem)), np.float64))
    masks.append(np.asarray(batch['mask']))
  mask = np.concatenate(masks)
  for name, block in (('layer1.0.conv', model.layer1[0]), ('layer1.1.conv', model.layer1[1])):
    quantizer = block.conv.input_quantizer
    offset, intervals, input_scale, _ = [np.asarray(v, np.float64) for v in quantizer.params()]
    thresholds = _spec_thresholds(offset, intervals)
    np.testing.assert_allclose(layers[name]['thresholds'], thresholds / input_scale, rtol=1e-5,
                               atol=1e-6)
    x = np.concatenate(inputs[name])[mask]
    levels = (input_scale * x[..., None] > thresholds).sum(-1)
    counts = np.bincount(levels.reshape(-1), minlength=4)
    occupancy = counts / counts.sum()
    # float32 in the model, float64 here: at most a few values may sit on a threshold
    np.testing.assert_allclose(layers[name]['activation_occupancy'], occupancy,
                               atol=3 / counts.sum())
    assert abs(layers[name]['activation_entropy_bits'] - _entropy(occupancy)) < 1e-3
    assert 0 < layers[name]['activation_entropy_bits'] <= 2

    codes = _spec_weight_codes(np.asarray(block.conv.kernel[...], np.float64), 2)
    weight_occupancy = np.bincount(codes.reshape(-1), minlength=4) / codes.size
    np.testing.assert_allclose(layers[name]['weight_occupancy'], weight_occupancy,
                               atol=2 / codes.size)
    assert abs(layers[name]['weight_entropy_bits'] - _entropy(weight_occupancy)) < 1e-3
  assert 'weight_occupancy' not in layers['conv1'] and 'thresholds' not in layers['fc']


def test_loaded_model_reproduces_the_best_evaluation(default_run):
  """The eager model of ``restore_run`` against the jitted evaluation of training: the
  two may round a quantizer input on a threshold to neighbouring codes, so codes are
  compared with the jitted model's, flips counted, and only images with a flipped code
  may change their prediction (the accuracy within their share)."""
  workdir, summaries = default_run
  restored = restore.restore_run(str(workdir / 'w2a2'), step='best')
  assert restored.step == _best_step(workdir / 'w2a2')
  model = restored.model
  pipeline = data.create_pipeline(data.default_config(), per_host_batch_size=BATCH_SIZE,
                                  seed=0)
  correct = total = flipped_images = flipped_codes = code_count = 0
  for batch in pipeline.eval_batches():
    jit_logits, jit_codes = export.fake_quantized_codes(model, batch['image'])
    with jax.disable_jit():
      eager_logits, eager_codes = export.fake_quantized_codes(model, batch['image'])
    np.testing.assert_array_equal(np.asarray(model(batch['image'])), eager_logits)
    n = batch['image'].shape[0]
    flips = np.sum([np.sum((eager_codes[k] != jit_codes[k]).reshape(n, -1), -1)
                    for k in jit_codes], 0)
    same, mask = flips == 0, batch['mask']
    np.testing.assert_allclose(eager_logits[same], jit_logits[same], rtol=1e-5, atol=1e-5)
    predictions = np.argmax(eager_logits, axis=-1)
    np.testing.assert_array_equal(predictions[same], np.argmax(jit_logits[same], -1))
    correct += int(np.sum((predictions == batch['label']) & mask))
    total += int(np.sum(mask))
    flipped_images += int(np.sum(~same & mask))
    flipped_codes += int(np.sum(flips[mask]))
    code_count += sum(v[mask].size for v in jit_codes.values())
  print(f'eager vs jit: {flipped_codes} of {code_count} codes differ, in {flipped_images} '
        f'of {total} images')
  assert flipped_codes <= 1e-4 * code_count
  assert abs(correct / total - summaries['w2a2']['best_eval_accuracy']) <= (
      flipped_images / total + 1e-9)


def test_full_precision_run_gets_curves_and_a_32_bit_summary(default_run, tmp_path, capsys):
  workdir, _ = default_run
  summary = _inspect(capsys, workdir / 'fp', tmp_path)
  assert summary['figures'] == ['curves.png']
  assert not (tmp_path / 'thresholds.png').exists()
  macs, bops, values, _, _ = _hand_counted_cost(32)
  assert all(row['weight_bits'] == row['activation_bits'] == 32 for row in summary['layers'])
  assert summary['total_bops'] == summary['float_bops'] == 1024 * sum(macs.values())
  assert summary['model_size']['values'] == values
  assert summary['model_size']['quantized_bytes'] == summary['model_size']['float32_bytes']
  records = metrics.read_metrics(str(workdir / 'fp'))
  assert summary['final_eval_accuracy'] == [r for r in records if 'eval_accuracy' in r
                                            and not r.get('summary')][-1]['eval_accuracy']


def _png_width(path):
  return int.from_bytes(path.read_bytes()[16:20], 'big')  # IHDR width


def test_layer_selection_and_bad_arguments(default_run, w2a2_inspection, tmp_path, capsys):
  workdir, _ = default_run
  summary = _inspect(capsys, workdir / 'w2a2', tmp_path / 'one', '--layers', 'layer1.1.*')
  assert len(summary['layers']) == 4  # the summary still covers every layer
  all_layers_dir = w2a2_inspection[0]
  # one panel instead of two side by side
  assert 2 * _png_width(tmp_path / 'one' / 'thresholds.png') == _png_width(
      all_layers_dir / 'thresholds.png')

  with pytest.raises(SystemExit) as exit_info:
    cli.main([str(workdir), '--out', str(tmp_path / 'x')])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert 'no config.json' in error and "['fp', 'w2a2']" in error

  for flags, message in ((['--layers', 'layer9.*'], "['layer9.*'] match no quantized layer"),
                         (['--batches', '0'], 'num_batches=0 must be an integer >= 1'),
                         (['--step', '999'], 'no checkpoint at step 999 in ')):
    with pytest.raises(SystemExit):
      cli.main([str(workdir / 'w2a2'), '--out', str(tmp_path / 'y'), *flags])
    assert message in capsys.readouterr().err, flags
