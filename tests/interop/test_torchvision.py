"""torchvision models (weights=None, randomised parameters and BatchNorm
statistics) against their twins loaded with load_torchvision: logits and the
state_dict round trip."""

import numpy as np
import pytest

from n2uq_jax import interop
from tests.interop.helpers import jax_logits, relative_error

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'mobilenet_v2')


def randomized_torchvision(arch: str, seed: int, num_classes: int = 10):
  """``torchvision.models.<arch>(weights=None)`` with random BatchNorm affine
  parameters and running statistics and random classifier bias, in eval mode."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(torch.rand(c, generator=g) + 0.5)
        module.bias.copy_(torch.randn(c, generator=g) * 0.2)
        module.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
        module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
      elif isinstance(module, torch.nn.Linear):
        module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
  return model.eval()


@pytest.mark.parametrize('arch', ARCHS)
def test_logits_equal_torchvision_and_state_dict_round_trips(arch, record_property):
  reference = randomized_torchvision(arch, seed=ARCHS.index(arch))
  state = reference.state_dict()
  x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(x)).numpy()

  model = interop.load_torchvision(state, arch=arch, num_classes=10)
  got = jax_logits(model, x)
  error = relative_error(got, want)
  record_property('relative_logit_error', error)
  print(f'{arch}: max |logit difference| / max |logit| = {error:.2e}')
  assert error < 1e-5

  exported = interop.to_torchvision_state_dict(model)
  assert sorted(exported) == sorted(state)  # torchvision's names, num_batches_tracked too
  for name, value in state.items():
    if name.endswith('num_batches_tracked'):
      assert exported[name] == 0
    else:
      assert exported[name].dtype == np.float32 and exported[name].flags.writeable
      np.testing.assert_array_equal(exported[name], value.numpy(), err_msg=name)
  fresh = getattr(torchvision.models, arch)(weights=None, num_classes=10)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


def test_loaded_model_is_in_eval_mode_and_renames_the_shortcut():
  reference = randomized_torchvision('resnet18', seed=7)
  model = interop.load_torchvision(reference.state_dict(), arch='resnet18', num_classes=10)
  assert model.bn1.use_running_average
  np.testing.assert_array_equal(
      np.asarray(model.layer2[0].downsample.conv.kernel[...]),
      reference.layer2[0].downsample[0].weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.layer2[0].downsample.bn.var[...]),
                                reference.layer2[0].downsample[1].running_var.numpy())
  np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]),
                                reference.fc.weight.detach().numpy().T)
