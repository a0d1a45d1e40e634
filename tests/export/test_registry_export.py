"""Every N2UQ registry model exports and its integer engines (NumPy, JAX twin,
onnxruntime) reproduce the fake-quantized model, at small image sizes, with random
parameters that exercise every threshold rule (SPEC 8)."""

import numpy as np
import pytest
from flax import nnx

from n2uq_jax import export, models
from n2uq_jax.train import config_lib
from tests.export.helpers import (check_codes_end_to_end, check_mismatches_are_at_thresholds,
                                  onnx_run_codes, randomize)

ort = pytest.importorskip('onnxruntime')

# (name, kwargs, bits, image size, channels); the deep ones are compared layer by
# layer on the reference's codes (see IntegerModel.run's forced_codes), since with
# random parameters one code that differs within float rounding of a threshold
# changes everything downstream.
CASES = [
    ('small_cnn', {}, 2, 8, 1),
    ('small_cnn', {}, 8, 8, 1),
    ('cifar_resnet20', {}, 2, 16, 3),
    ('resnet18', {'quantize_downsample': True}, 2, 32, 3),
    ('resnet18', {'quantize_downsample': False}, 3, 32, 3),
    pytest.param('resnet34', {'quantize_downsample': True}, 2, 32, 3, marks=pytest.mark.slow),
    pytest.param('resnet50', {'quantize_downsample': True}, 2, 32, 3, marks=pytest.mark.slow),
    pytest.param('resnet50', {'quantize_downsample': False}, 2, 32, 3, marks=pytest.mark.slow),
    pytest.param('mobilenet_v2', {}, 4, 32, 3, marks=pytest.mark.slow),
]


def _relative(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _rules(manifest):
  """Channel count per threshold rule over the folded quantizers."""
  rules = {}
  for layer in manifest['layers']:
    for rule, n in (layer['channel_rules'] or {}).items():
      rules[rule] = rules.get(rule, 0) + n
  return rules


@pytest.mark.parametrize('name,kwargs,bits,size,channels', CASES)
def test_registry_model_exports_and_matches(tmp_path, name, kwargs, bits, size, channels):
  policy = config_lib.quant_policy(config_lib.parse_variant(f'w{bits}a{bits}'))
  model = models.create_model(name, num_classes=10, policy=policy, rngs=nnx.Rngs(0),
                              in_channels=channels, **kwargs)
  model = randomize(model, seed=1)
  model.eval()
  images = np.random.default_rng(2).normal(size=(3, size, size, channels)).astype(np.float32)
  report = export.export_model(model, str(tmp_path), model_name=name)
  manifest = report['manifest']
  ref_logits, ref_codes, ref_inputs = export.fake_quantized_codes(model, images,
                                                                  with_inputs=True)

  engine = export.IntegerModel.load(str(tmp_path))
  forced_logits, forced = engine.run(images, forced_codes=ref_codes)
  assert sorted(forced) == sorted(ref_codes) == sorted(l['name'] for l in manifest['layers'])
  mismatched = sum(int(np.sum(forced[k] != ref_codes[k])) for k in forced)
  total = sum(v.size for v in forced.values())
  print(f'{name} {kwargs}: {mismatched} of {total} codes differ layer by layer; rules {_rules(manifest)}')
  assert mismatched <= 1e-4 * total, (mismatched, total)
  check_mismatches_are_at_thresholds(engine, forced, ref_codes, ref_inputs)
  assert _relative(forced_logits, ref_logits) < 1e-4
  logits, codes = engine.run(images)
  jax_logits, jax_codes = engine.jax_run(images)
  for k in codes:
    np.testing.assert_array_equal(np.asarray(jax_codes[k]), codes[k], err_msg=k)
  onnx_logits = ort.InferenceSession(str(tmp_path / 'model.onnx'),
                                     providers=['CPUExecutionProvider']).run(
                                         None, {'image': images})[0]
  onnx_codes = onnx_run_codes(engine, images, channels)
  np.testing.assert_array_equal(onnx_codes['logits'], onnx_logits)
  # the NumPy and JAX engines share every float32 operation: they agree whatever the
  # reference does
  assert _relative(np.asarray(jax_logits), logits) < 1e-4
  # end to end on their own codes: differences counted, the first a near-tie, and the
  # logits of every image none of whose codes differ equal to the reference's (the ONNX
  # graph rounds its float stream in onnxruntime's order, so it is checked the same way)
  clean = check_codes_end_to_end(engine, codes, ref_codes, ref_inputs, f'{name} {kwargs}')
  onnx_clean = check_codes_end_to_end(engine, onnx_codes, ref_codes, ref_inputs,
                                      f'{name} {kwargs} onnx')
  for got, mask in ((logits, clean), (np.asarray(jax_logits), clean), (onnx_logits, onnx_clean)):
    if mask.any():
      assert _relative(got[mask], ref_logits[mask]) < 1e-4
      np.testing.assert_array_equal(got[mask].argmax(-1), ref_logits[mask].argmax(-1))
  # the random parameters reach every rule of SPEC 8
  rules = _rules(manifest)
  if name != 'small_cnn':
    assert all(rules.get(r) for r in ('int_ge', 'int_le', 'int_outside', 'int_inside')), rules
  assert report['quantized_kernels']['ratio'] >= 32 / bits * 0.99
