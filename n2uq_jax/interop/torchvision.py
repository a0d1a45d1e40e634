"""torchvision checkpoints <-> the full-precision twins (``resnet18_fp``, ...).

The twins follow torchvision's module names already (:mod:`n2uq_jax.models`),
except for these, which are renamed here:

- ResNet shortcut: ``downsample.conv`` / ``downsample.bn`` <->
  ``downsample.0`` / ``downsample.1``;
- MobileNetV2: ``features.{0,18}.conv`` / ``.bn`` <-> ``features.{0,18}.0`` /
  ``.1``; in a block, ``conv1``/``bn1`` (expansion), ``conv2``/``bn2``
  (depthwise), ``conv3``/``bn3`` (projection) <-> the indices of torchvision's
  ``conv`` Sequential (``conv.0.0``, ``conv.0.1``, ``conv.1.0``, ``conv.1.1``,
  ``conv.2``, ``conv.3``; block 1 has no expansion, so ``conv.0.0``,
  ``conv.0.1``, ``conv.1``, ``conv.2``); ``classifier`` <-> ``classifier.1``.

Kernels are HWIO here and OIHW in PyTorch; the classifier kernel is transposed.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from n2uq_jax import models
from n2uq_jax.interop import layout as layout_lib
from n2uq_jax.interop.state_dict import read_state_dict

ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'mobilenet_v2')
"""torchvision architectures with a twin in this project (``<arch>_fp``)."""
TWIN_SUFFIX = '_fp'

_EXPANDING_BLOCK = {'conv1': 'conv.0.0', 'bn1': 'conv.0.1', 'conv2': 'conv.1.0',
                    'bn2': 'conv.1.1', 'conv3': 'conv.2', 'bn3': 'conv.3'}
_NON_EXPANDING_BLOCK = {'conv2': 'conv.0.0', 'bn2': 'conv.0.1', 'conv3': 'conv.1',
                        'bn3': 'conv.2'}
_CONV_BN_ACT = {'conv': '0', 'bn': '1'}


def check_arch(arch: str) -> str:
  if arch not in ARCHS:
    raise ValueError(f'arch={arch!r} has no torchvision twin; valid: {", ".join(ARCHS)}')
  return arch


def _resnet_name(dotted: str, module: nnx.Module) -> str:
  del module
  return dotted.replace('.downsample.conv', '.downsample.0').replace(
      '.downsample.bn', '.downsample.1')


def _mobilenet_naming(model: models.MobileNetV2) -> layout_lib.NamingFunction:
  def name(dotted: str, module: nnx.Module) -> str:
    del module
    if dotted == 'classifier':
      return 'classifier.1'
    _, index, layer = dotted.split('.')
    block = model.features[int(index)]
    if isinstance(block, models.ConvBNAct):
      table = _CONV_BN_ACT
    else:
      table = _EXPANDING_BLOCK if block.conv1 is not None else _NON_EXPANDING_BLOCK
    return f'features.{index}.{table[layer]}'
  return name


def _is_twin(model: nnx.Module) -> bool:
  if isinstance(model, models.ResNet):
    return all(isinstance(block, (models.BasicBlock, models.Bottleneck))
               for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
               for block in stage)
  if isinstance(model, models.MobileNetV2):
    return all(isinstance(block, (models.ConvBNAct, models.InvertedResidual))
               for block in model.features)
  return False


def torchvision_layout(model: nnx.Module) -> layout_lib.Layout:
  """The torchvision layout of a twin (ResNet or MobileNetV2 of plain blocks).

  Raises:
    ValueError: ``model`` is not a full-precision twin.
  """
  if not _is_twin(model):
    raise ValueError(
        f'expected a full-precision twin ({", ".join(a + TWIN_SUFFIX for a in ARCHS)}, from '
        f'models.create_model or load_torchvision), got {type(model).__name__} with N2UQ '
        'blocks or of another family; an N2UQ model goes out through '
        'to_official_n2uq_state_dict')
  naming = (_mobilenet_naming(model) if isinstance(model, models.MobileNetV2)
            else _resnet_name)
  return layout_lib.build_layout(model, naming, what=type(model).__name__)


def model_from_state_dict(state, *, arch: str, num_classes: int = 1000,
                          dtype=None) -> nnx.Module:
  """The twin of ``arch`` holding ``state`` (a NumPy state_dict), in evaluation
  mode; ``dtype`` is the compute dtype (see ``models.create_model``)."""
  check_arch(arch)
  name = arch + TWIN_SUFFIX
  model = nnx.eval_shape(lambda: models.create_model(name, num_classes=num_classes,
                                                     rngs=nnx.Rngs(0), dtype=dtype))
  layout_lib.fill_model(model, torchvision_layout(model), state,
                        what=f'torchvision {arch} ({num_classes} classes)')
  model.eval()
  return model


def load_torchvision(source, *, arch: str, num_classes: int = 1000) -> nnx.Module:
  """The full-precision twin of a torchvision model, with its weights and
  BatchNorm statistics.

  Args:
    source: a ``.pth``/``.pth.tar``/``.pt`` file of ``torchvision.models.<arch>``'s
      state_dict (e.g. ``resnet18-f37072fd.pth``), or a mapping of names to
      arrays; a ``"state_dict"`` wrapper and ``"module."`` prefixes are removed.
    arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or
      ``mobilenet_v2``.
    num_classes: classifier outputs.

  Returns:
    ``models.create_model(arch + "_fp")`` with every variable from ``source``, in
    evaluation mode (``.train()`` to fine-tune). It takes NHWC input; its logits
    equal torchvision's on the same NCHW input.

  Raises:
    StateDictMismatchError: (a ``ValueError``) every missing key, unexpected key
      and shape mismatch at once.
    ImportError: a file is given and PyTorch is not installed.
  """
  return model_from_state_dict(read_state_dict(source), arch=arch, num_classes=num_classes)


def to_torchvision_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The torchvision state_dict of a full-precision twin: the inverse of
  :func:`load_torchvision`. ``torchvision.models.<arch>().load_state_dict(
  {k: torch.from_numpy(v) for k, v in sd.items()})`` accepts it strictly
  (``num_batches_tracked`` is written as 0)."""
  return layout_lib.export_state_dict(model, torchvision_layout(model))
