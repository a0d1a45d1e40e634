"""Sources (files, wrappers, prefixes, mappings) and the collected mismatch error."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from n2uq_jax import interop, models, nn
from n2uq_jax.interop import checkpoints
from tests.models.helpers import abstract_model, random_concrete


@pytest.fixture(scope='module')
def resnet18_fp_state():
  return interop.to_torchvision_state_dict(
      random_concrete(abstract_model('resnet18_fp', num_classes=10), seed=0))


@pytest.fixture(scope='module')
def official_state():
  return interop.to_official_n2uq_state_dict(
      random_concrete(abstract_model('resnet18', 2, num_classes=10), seed=0))


def test_every_missing_unexpected_and_mismatched_key_in_one_error(resnet18_fp_state):
  state = dict(resnet18_fp_state)
  del state['layer1.0.conv1.weight'], state['fc.bias']
  state['layer2.0.bn1.running_var'] = np.ones(64, np.float32)
  state['fc.weight'] = np.zeros((1000, 512), np.float32)
  state['layer5.0.conv1.weight'] = np.zeros(3, np.float32)
  with pytest.raises(interop.StateDictMismatchError) as info:
    interop.load_torchvision(state, arch='resnet18', num_classes=10)
  error = info.value
  assert isinstance(error, ValueError)
  assert error.missing == ['fc.bias', 'layer1.0.conv1.weight']
  assert error.unexpected == ['layer5.0.conv1.weight']
  assert error.mismatched == [('fc.weight', (1000, 512), (10, 512)),
                              ('layer2.0.bn1.running_var', (64,), (128,))]
  message = str(error)
  for text in ('2 missing keys', '1 unexpected keys', '2 shape mismatches',
               'missing: layer1.0.conv1.weight', 'unexpected: layer5.0.conv1.weight',
               'shape mismatch: fc.weight: checkpoint (1000, 512), model expects (10, 512)'):
    assert text in message


def test_truncated_state_dict_lists_every_missing_key(resnet18_fp_state):
  names = sorted(resnet18_fp_state)
  kept = {k: resnet18_fp_state[k] for k in names[:40]}
  with pytest.raises(interop.StateDictMismatchError) as info:
    interop.load_torchvision(kept, arch='resnet18', num_classes=10)
  dropped = {k for k in names[40:] if not k.endswith('num_batches_tracked')}
  assert set(info.value.missing) == dropped and info.value.unexpected == []
  assert str(info.value).count('\n  missing: ') == len(dropped)


def test_official_wrong_bits_shortcut_and_clip_val(official_state):
  state = dict(official_state)
  state['layer1.0.conv1.clip_val'] = np.array([1.5], np.float32)
  with pytest.raises(interop.StateDictMismatchError) as info:
    interop.load_official_n2uq(state, arch='resnet18', bits=3, quantize_downsample=False,
                               num_classes=10)
  error = info.value
  quantizers = [k for k in state if k.endswith('.a')]
  assert len(quantizers) == 19
  assert {(k, (3,), (7,)) for k in quantizers if '.downsample.' not in k} <= set(
      error.mismatched)
  # Quantized shortcut read as a full-precision one: the BN is at .2, not .1.
  assert 'layer2.0.downsample.1.running_mean' in error.missing
  assert 'layer2.0.downsample.2.running_mean' in error.unexpected
  assert error.bad_values == [('layer1.0.conv1.clip_val',
                               'checkpoint [1.5], the model supports only [2.0]')]


def test_official_constants_are_accepted(official_state):
  state = dict(official_state)
  for name in ('two', 'one', 'zero', 'minusone', 'eps'):
    state[f'layer1.0.quan1.{name}'] = np.array([1.0], np.float32)
  state['layer1.0.conv1.zero'] = np.array([0.0], np.float32)
  model = interop.load_official_n2uq(state, arch='resnet18', bits=2, quantize_downsample=True,
                                     num_classes=10)
  np.testing.assert_array_equal(np.asarray(model.layer1[0].conv1.input_quantizer.intervals[...]),
                                state['layer1.0.quan1.a'])


def test_export_refuses_models_the_other_code_cannot_hold():
  with pytest.raises(ValueError, match='to_official_n2uq_state_dict'):
    interop.to_torchvision_state_dict(random_concrete(abstract_model('resnet18', 2), seed=0))
  with pytest.raises(ValueError, match='to_torchvision_state_dict'):
    interop.to_official_n2uq_state_dict(random_concrete(abstract_model('resnet18_fp'), seed=0))
  dorefa = nn.QuantPolicy(default=nn.QuantSpec.uniform_bits(2, activation='dorefa'))
  model = nnx.eval_shape(lambda: models.create_model('resnet18', policy=dorefa,
                                                     rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match='dorefa'):
    interop.to_official_n2uq_state_dict(model)


def test_bad_arguments_name_the_value():
  with pytest.raises(ValueError, match="arch='vgg16'.*resnet101"):
    interop.load_torchvision({}, arch='vgg16')
  with pytest.raises(ValueError, match='4 bits only'):
    interop.load_official_n2uq({}, arch='mobilenet_v2', bits=2, quantize_downsample=False)
  with pytest.raises(ValueError, match="arch='resnet101'"):
    interop.load_official_n2uq({}, arch='resnet101', bits=2, quantize_downsample=True)
  with pytest.raises(ValueError, match='suffixes: .pth, .pth.tar, .pt'):
    interop.load_torchvision('weights.npz', arch='resnet18')
  with pytest.raises(ValueError, match='no such file'):
    interop.load_torchvision('missing.pth', arch='resnet18')
  with pytest.raises(ValueError, match='path .* or a mapping'):
    interop.load_torchvision(3, arch='resnet18')


def test_reading_a_file_without_torch_says_how_to_install(tmp_path, monkeypatch):
  path = tmp_path / 'resnet18.pth'
  path.write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch raises ImportError
  with pytest.raises(ImportError, match=r'pip install -e \.\[torch\]'):
    interop.load_torchvision(str(path), arch='resnet18')


def test_files_with_a_state_dict_wrapper_and_module_prefix(tmp_path, official_state):
  torch = pytest.importorskip('torch')
  path = tmp_path / 'model_best.pth.tar'
  torch.save({'epoch': 3, 'best_top1_acc': 0.5, 'state_dict': {
      'module.' + k: torch.from_numpy(v) for k, v in official_state.items()}}, path)
  model = interop.load_official_n2uq(path, arch='resnet18', bits=2, quantize_downsample=True,
                                     num_classes=10)
  np.testing.assert_array_equal(np.asarray(model.fc.bias[...]), official_state['fc.bias'])
  assert interop.read_state_dict(path).keys() == official_state.keys()
  assert checkpoints.load(f'n2uq-official:{path}', model_name='resnet18_fp',
                          num_classes=10).layer1[0].conv1.input_quantizer.bits == 2


def test_mapping_of_jax_arrays_and_half_precision_tensors(resnet18_fp_state):
  torch = pytest.importorskip('torch')
  state = {k: jnp.asarray(v) for k, v in resnet18_fp_state.items()}
  state['fc.weight'] = torch.from_numpy(resnet18_fp_state['fc.weight']).to(torch.bfloat16)
  model = interop.load_torchvision(state, arch='resnet18', num_classes=10)
  assert model.fc.kernel[...].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(model.fc.kernel[...]).T,
                             resnet18_fp_state['fc.weight'], rtol=1e-2)
