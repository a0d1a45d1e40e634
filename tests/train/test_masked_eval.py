"""The eval step's masked sums and the masked level occupancy of the quantizer
statistics, against NumPy, on a batch whose padded rows carry labels and images
that would change every result if the mask were ignored."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from n2uq_jax import nn
from n2uq_jax.train import step as step_lib
from tests.nn.quantizer_params import randomize_n2uq, raw_n2uq_params

NUM_CLASSES = 5


class TinyNet(nnx.Module):
  """Quantized conv on the image (its input quantizer sees the raw pixels),
  global average pool, quantized dense to the logits."""

  def __init__(self, rngs):
    spec = nn.QuantSpec.uniform_bits(2)
    self.conv = nn.QuantConv(3, 6, 3, padding=1, spec=spec, rngs=rngs)
    self.head = nn.QuantDense(6, NUM_CLASSES, spec=spec, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.mean(self.conv(x), axis=(1, 2)))


def _batch():
  """Rows 0-3 are real, rows 4-5 padding. Padded images are far above every
  threshold (all at the top level); one padded label is the model's prediction
  (it would count as correct), the other is not."""
  rng = np.random.default_rng(0)
  images = rng.uniform(-0.2, 1.6, (6, 4, 4, 3)).astype(np.float32)
  images[4:] = 5.0
  mask = np.array([True, True, True, True, False, False])
  return images, mask


def _model():
  model = TinyNet(nnx.Rngs(0))
  randomize_n2uq(model.conv.input_quantizer, seed=1)
  randomize_n2uq(model.head.input_quantizer, seed=2)
  return model


def test_eval_step_sums_only_masked_rows():
  model = _model()
  images, mask = _batch()
  logits = np.asarray(model(jnp.asarray(images)), np.float64)
  predicted = logits.argmax(-1)
  labels = np.where([True, False, True, False, True, False], predicted,
                    (predicted + 1) % NUM_CLASSES).astype(np.int32)
  model_def, params, model_state = step_lib.split_model(model)
  sums = jax.jit(step_lib.make_eval_step(model_def))(
      params, model_state, {'image': jnp.asarray(images), 'label': jnp.asarray(labels),
                            'mask': jnp.asarray(mask)})

  shifted = logits - logits.max(-1, keepdims=True)
  per_example = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(6), labels]
  assert float(sums['count']) == 4
  assert float(sums['correct']) == 2       # rows 0 and 2; padded row 4 is not counted
  np.testing.assert_allclose(float(sums['loss']), per_example[mask].sum(), rtol=1e-5)
  assert not np.isclose(per_example[mask].sum(), per_example.sum(), rtol=1e-3)


def test_quantizer_occupancy_counts_only_masked_rows():
  model = _model()
  images, mask = _batch()
  quantizer = model.conv.input_quantizer
  offset, intervals, input_scale, _ = (np.asarray(p, np.float64)
                                       for p in raw_n2uq_params(quantizer))
  model_def, params, model_state = step_lib.split_model(model)
  stats = jax.jit(step_lib.make_quantizer_stats_fn(model_def))(
      params, model_state, jnp.asarray(images), jnp.asarray(mask))
  assert set(stats) == {'conv', 'head'}

  # SPEC 2.2 in NumPy: T_i = s + sum_{j<i} a_j + a_i / 2, k = #{i : beta1 x > T_i}
  ends = offset + np.concatenate([[0.0], np.cumsum(intervals)])
  thresholds = ends[:-1] + intervals / 2
  codes = (input_scale * images[mask].astype(np.float64)[..., None] > thresholds).sum(-1)
  want = np.bincount(codes.ravel(), minlength=4)
  np.testing.assert_array_equal(np.asarray(stats['conv']['counts']), want)
  np.testing.assert_allclose(stats['conv']['thresholds'], thresholds / input_scale, rtol=1e-6)
  # The dense layer's quantizer sees one (6,) vector per real row.
  assert float(np.sum(stats['head']['counts'])) == 4 * 6
  unmasked = (input_scale * images.astype(np.float64)[..., None] > thresholds).sum(-1)
  assert not np.array_equal(np.bincount(unmasked.ravel(), minlength=4), want)
