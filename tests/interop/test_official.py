"""The official N2UQ layout: PyTorch references of the ResNets and MobileNetV2
written from SPEC 2-4 (official_reference.py) with random quantizer parameters
(input scales of both signs), biases, PReLU slopes and BatchNorm statistics,
against load_official_n2uq; and the state_dict round trip through
to_official_n2uq_state_dict."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import interop
from tests.interop.helpers import jax_logits, relative_error
from tests.models.helpers import abstract_model, random_concrete, variables

torch = pytest.importorskip('torch')
from tests.interop import official_reference  # pylint: disable=g-import-not-at-top,wrong-import-position

CONSTANTS = set(official_reference.CONSTANTS)
CASES = {
    'resnet18': dict(depths=(2, 2, 2, 2), bottleneck=False),
    'resnet50': dict(depths=(3, 4, 6, 3), bottleneck=True),
}


def reference_model(arch, quantize_downsample, seed, x):
  torch.manual_seed(seed)
  model = official_reference.OfficialLayoutResNet(
      **CASES[arch], bits=2, quantize_downsample=quantize_downsample, num_classes=10)
  official_reference.randomize(model, seed)
  moved = official_reference.separate_from_boundaries(model, torch.from_numpy(x))
  return model, moved


@pytest.mark.parametrize('arch,quantize_downsample',
                         [('resnet18', True), ('resnet18', False), ('resnet50', True)])
def test_logits_agree_with_the_official_layout_and_state_dict_round_trips(
    arch, quantize_downsample, record_property):
  x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
  reference, (offset_moves, weights_moved) = reference_model(arch, quantize_downsample, 3, x)
  state = reference.state_dict()
  with torch.no_grad():
    want = reference(torch.from_numpy(x)).numpy()

  model = interop.load_official_n2uq(state, arch=arch, bits=2,
                                     quantize_downsample=quantize_downsample, num_classes=10)
  error = relative_error(jax_logits(model, x), want)
  record_property('relative_logit_error', error)
  print(f'{arch} quantize_downsample={quantize_downsample}: relative logit error {error:.2e}; '
        f'ties avoided: {offset_moves} quantizer offset moves, {weights_moved} weights moved')
  assert error < 1e-4

  exported = interop.to_official_n2uq_state_dict(model)
  fresh = official_reference.OfficialLayoutResNet(
      **CASES[arch], bits=2, quantize_downsample=quantize_downsample, num_classes=10)
  result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                                 strict=False)
  assert result.unexpected_keys == []
  assert result.missing_keys and {k.rsplit('.', 1)[1] for k in result.missing_keys} <= CONSTANTS
  for name, value in state.items():
    if name.rsplit('.', 1)[1] in CONSTANTS:
      continue
    np.testing.assert_array_equal(exported[name], value.numpy(), err_msg=name)
  assert all(exported[k].tolist() == [2.0] for k in exported if k.endswith('.clip_val'))
  with torch.no_grad():
    np.testing.assert_array_equal(fresh.eval()(torch.from_numpy(x)).numpy(), want)


def test_shortcut_and_output_rprelu_names():
  state = interop.to_official_n2uq_state_dict(
      random_concrete(abstract_model('resnet50', 2, num_classes=10), seed=0))
  assert state['layer1.0.downsample.0.a'].shape == (3,)
  assert state['layer1.0.downsample.1.weight'].shape == (256, 64, 1, 1)
  assert state['layer1.0.downsample.2.running_var'].shape == (256,)
  assert state['layer1.0.bias01.bias'].shape == (1, 256, 1, 1)
  assert state['layer1.0.prelu0.weight'].shape == (256,)
  assert state['layer1.0.quan3.start'].shape == (1,)
  fp_shortcut = interop.to_official_n2uq_state_dict(random_concrete(
      abstract_model('resnet18', 2, num_classes=10, quantize_downsample=False), seed=0))
  assert fp_shortcut['layer2.0.downsample.0.weight'].shape == (128, 64, 1, 1)
  assert 'layer2.0.downsample.0.clip_val' not in fp_shortcut
  assert fp_shortcut['layer2.0.downsample.1.weight'].shape == (128,)
  assert fp_shortcut['layer1.1.bias32.bias'].shape == (1, 64, 1, 1)


def test_mobilenet_v2_logits_agree_with_the_official_layout():
  """The official-layout MobileNetV2 of official_reference.py (SPEC 4.5: block 1's extra
  expansion conv, PACT before the last conv; a third of the input scales negative)
  with random parameters, loaded through load_official_n2uq: the same logits."""
  x = np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32)
  torch.manual_seed(5)
  reference = official_reference.randomize(
      official_reference.OfficialLayoutMobileNetV2(bits=4, num_classes=10), 5)
  offset_moves, weights_moved = official_reference.separate_from_boundaries(
      reference, torch.from_numpy(x))
  state = reference.state_dict()
  assert sum(1 for k, v in state.items() if k.endswith('.scale1') and float(v) < 0) >= 17
  with torch.no_grad():
    want = reference(torch.from_numpy(x)).numpy()
  model = interop.load_official_n2uq(state, arch='mobilenet_v2', bits=4,
                                     quantize_downsample=False, num_classes=10)
  alpha = model.features[18].conv.input_quantizer.alpha.get_value()
  np.testing.assert_allclose(np.asarray(alpha), state['feature.18.quan1.clip_val'].numpy()[0])
  error = relative_error(jax_logits(model, x), want)
  print(f'mobilenet_v2: relative logit error {error:.2e}; ties avoided: {offset_moves} '
        f'quantizer offset moves, {weights_moved} weights moved')
  assert error < 1e-4


def test_mobilenet_v2_round_trip():
  """The official MobileNetV2 names (feature.i, quan1..3, the PACT clip of
  feature.18.quan1, fc) out and back in, every variable unchanged."""
  model = random_concrete(abstract_model('mobilenet_v2', 4, num_classes=10), seed=1)
  model.features[18].conv.input_quantizer.alpha.set_value(jnp.asarray(1.7))
  state = interop.to_official_n2uq_state_dict(model)
  assert state['feature.0.conv1.weight'].shape == (32, 3, 3, 3)
  assert state['feature.1.conv1.weight'].shape == (32, 32, 1, 1)  # block 1 expands 32 -> 32
  assert state['feature.2.conv2.weight'].shape == (96, 1, 3, 3)  # depthwise
  assert state['feature.17.quan3.a'].shape == (15,)
  np.testing.assert_allclose(state['feature.18.quan1.clip_val'], [1.7])
  assert state['feature.18.conv1.clip_val'].tolist() == [2.0]
  assert state['fc.weight'].shape == (10, 1280)
  loaded = interop.load_official_n2uq(state, arch='mobilenet_v2', bits=4,
                                      quantize_downsample=False, num_classes=10)
  want = variables(model, nnx.Variable)
  got = variables(loaded, nnx.Variable)
  assert set(got) == set(want)
  for path, var in want.items():
    np.testing.assert_array_equal(np.asarray(got[path].get_value()),
                                  np.asarray(var.get_value()), err_msg=path)
