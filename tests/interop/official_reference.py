"""PyTorch models with the module layout of the official N2UQ ResNets and
MobileNetV2, written from SPEC 2-4 (forward pass only), as the independent
reference of the interop tests.

- :class:`ActivationQuantizer` (SPEC 2.2): ``u = scale1 x``, the clamped
  intervals ``a_bar = where(a > eps, a, eps)``, thresholds ``T_i = d_{i-1} +
  a_bar_i / 2`` with ``d_0 = start``, ``y = scale2 * (2/K) * #{i : u > T_i}``.
- :class:`QuantizedConv` (SPEC 3.1): per output channel ``sigma = gamma
  mean|W|``, ``q = round((clip(W / sigma, -clip_val/2, clip_val/2) + 1) K/2)``,
  the conv uses ``sigma (2 q / K - 1)``.
- Blocks (SPEC 4.2-4.4): groups ``bias j1 -> prelu j -> bias j2 -> quan j ->
  conv j -> bn j``, the residual addition, then the output RPReLU
  (``bias31/prelu3/bias32``, bottleneck ``bias01/prelu0/bias02``); quantized
  shortcut ``downsample.{0: quantizer, 1: conv, 2: BN}`` or FP
  ``downsample.{0: conv, 1: BN}`` (SPEC 4.1).
- MobileNetV2 (SPEC 4.5): ``feature.i`` inverted residuals with the same groups,
  block 1's extra expansion conv, and :class:`PACTQuantizer` (``quan1.clip_val``)
  before the last conv ``feature.18``.

Quantizer ties: two float32 implementations of the same network differ in the
last bits of every activation (different convolution summation orders), so an
input closer to a threshold than that can land on different levels, and one
such flip early in a 2-bit network moves the logits far more than 1e-4 (a
ResNet-50 at 32 px with random parameters had one, at 1.2e-6 relative from its
threshold). :func:`separate_from_boundaries` therefore moves the few quantizer
offsets and weights that leave an input within ``margin`` of a rounding
boundary, and reports how many it moved.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CONSTANTS = {'two': 2.0, 'one': 1.0, 'zero': 0.0, 'minusone': -1.0, 'eps': 1e-3}


def _constant(value: float) -> nn.Parameter:
  return nn.Parameter(torch.tensor([value]), requires_grad=False)


class ActivationQuantizer(nn.Module):

  def __init__(self, bits: int):
    super().__init__()
    self.levels = 2 ** bits - 1
    self.start = nn.Parameter(torch.zeros(1))
    self.a = nn.Parameter(torch.full((self.levels,), 2.0 / self.levels))
    self.scale1 = nn.Parameter(torch.ones(1))
    self.scale2 = nn.Parameter(torch.ones(1))
    for name, value in CONSTANTS.items():
      self.register_parameter(name, _constant(value))

  def thresholds(self):
    a = torch.where(self.a > self.eps, self.a, self.eps)
    starts = self.start + torch.cumsum(a, 0) - a  # d_0 .. d_{K-1}
    return starts + a / 2

  def forward(self, x):
    above = (x * self.scale1).unsqueeze(-1) > self.thresholds()
    return self.scale2 * (2.0 / self.levels) * above.sum(-1).to(x.dtype)


class QuantizedConv(nn.Module):

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
               padding: int, bits: int, groups: int = 1):
    super().__init__()
    self.bits, self.stride, self.padding, self.groups = bits, stride, padding, groups
    fan_in = in_channels // groups * kernel_size ** 2
    self.weight = nn.Parameter(torch.randn(out_channels, in_channels // groups, kernel_size,
                                           kernel_size) * (2.0 / fan_in) ** 0.5)
    self.clip_val = nn.Parameter(torch.tensor([2.0]))
    self.zero = _constant(0.0)

  def scale_and_position(self):
    """``sigma`` (O, 1, 1, 1) and the unrounded code ``(clip(W / sigma) + 1) K/2``."""
    levels = 2 ** self.bits - 1
    gamma = levels / 2 ** (self.bits - 1)
    sigma = gamma * self.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    half = self.clip_val / 2
    scaled = torch.clamp(self.weight / sigma, -half, half) / half  # in [-1, 1]
    return sigma, (scaled + 1) * (levels / 2)

  def quantized_weight(self):
    sigma, position = self.scale_and_position()
    return sigma * (2 * torch.round(position) / (2 ** self.bits - 1) - 1)

  def forward(self, x):
    return F.conv2d(x, self.quantized_weight(), stride=self.stride, padding=self.padding,
                    groups=self.groups)


class Bias(nn.Module):

  def __init__(self, channels: int):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

  def forward(self, x):
    return x + self.bias


def _add_rprelu(block: nn.Module, group: int, channels: int) -> None:
  setattr(block, f'bias{group}1', Bias(channels))
  setattr(block, f'prelu{group}', nn.PReLU(channels))
  setattr(block, f'bias{group}2', Bias(channels))


def _rprelu(block: nn.Module, group: int, x):
  x = getattr(block, f'bias{group}1')(x)
  return getattr(block, f'bias{group}2')(getattr(block, f'prelu{group}')(x))


class _Block(nn.Module):
  """Groups ``1..len(convs)`` of pre-activated quantized convs, the shortcut and
  the output RPReLU ``out_group``."""

  def __init__(self, bits: int, in_channels: int, convs, out_group: int, downsample):
    super().__init__()
    self.groups = len(convs)
    self.out_group = out_group
    channels = in_channels
    for group, (width, kernel, stride) in enumerate(convs, start=1):
      _add_rprelu(self, group, channels)
      setattr(self, f'quan{group}', ActivationQuantizer(bits))
      setattr(self, f'conv{group}', QuantizedConv(channels, width, kernel, stride, kernel // 2,
                                                  bits))
      setattr(self, f'bn{group}', nn.BatchNorm2d(width))
      channels = width
    self.downsample = downsample
    _add_rprelu(self, out_group, channels)

  def forward(self, x):
    out = x
    for group in range(1, self.groups + 1):
      out = getattr(self, f'quan{group}')(_rprelu(self, group, out))
      out = getattr(self, f'bn{group}')(getattr(self, f'conv{group}')(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return _rprelu(self, self.out_group, out + shortcut)


def _shortcut(bits, in_channels, out_channels, stride, quantize):
  if quantize:
    return nn.Sequential(ActivationQuantizer(bits),
                         QuantizedConv(in_channels, out_channels, 1, stride, 0, bits),
                         nn.BatchNorm2d(out_channels))
  return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                       nn.BatchNorm2d(out_channels))


class OfficialLayoutResNet(nn.Module):
  """``depths`` (2, 2, 2, 2) basic blocks = ResNet-18, (3, 4, 6, 3) bottlenecks =
  ResNet-50; NCHW input."""

  def __init__(self, depths, *, bottleneck: bool, bits: int, quantize_downsample: bool,
               num_classes: int):
    super().__init__()
    expansion = 4 if bottleneck else 1
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    channels = 64
    for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
      blocks = []
      for position in range(depth):
        stride = 2 if position == 0 and index > 1 else 1
        out = planes * expansion
        convs = ([(planes, 1, 1), (planes, 3, stride), (out, 1, 1)] if bottleneck
                 else [(planes, 3, stride), (planes, 3, 1)])
        downsample = (_shortcut(bits, channels, out, stride, quantize_downsample)
                      if stride != 1 or channels != out else None)
        blocks.append(_Block(bits, channels, convs, 0 if bottleneck else 3, downsample))
        channels = out
      setattr(self, f'layer{index}', nn.Sequential(*blocks))
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    for index in range(1, 5):
      x = getattr(self, f'layer{index}')(x)
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PACTQuantizer(nn.Module):
  """The input quantizer of MobileNetV2's last conv (SPEC 4.5): ReLU, clip at
  ``clip_val`` (alpha), ``round(x K / alpha) alpha / K`` (half to even)."""

  def __init__(self, bits: int):
    super().__init__()
    self.levels = 2 ** bits - 1
    self.clip_val = nn.Parameter(torch.tensor([2.0]))

  def forward(self, x):
    clipped = torch.minimum(F.relu(x), self.clip_val)
    return torch.round(clipped * self.levels / self.clip_val) * self.clip_val / self.levels


class InvertedResidual(nn.Module):
  """SPEC 4.5: three groups ``bias j1 -> prelu j -> bias j2 -> quan j -> conv j -> bn j``
  (1x1 expansion, 3x3 depthwise with the stride, 1x1 projection), no activation after
  ``bn3``, the identity added when the shape allows, no RPReLU after the addition."""

  def __init__(self, bits: int, in_channels: int, out_channels: int, stride: int,
               expansion: int):
    super().__init__()
    hidden = in_channels * expansion
    self.residual = stride == 1 and in_channels == out_channels
    convs = ((in_channels, hidden, 1, 1, 0, 1), (hidden, hidden, 3, stride, 1, hidden),
             (hidden, out_channels, 1, 1, 0, 1))
    for group, (cin, cout, kernel, conv_stride, padding, groups) in enumerate(convs, start=1):
      _add_rprelu(self, group, cin)
      setattr(self, f'quan{group}', ActivationQuantizer(bits))
      setattr(self, f'conv{group}', QuantizedConv(cin, cout, kernel, conv_stride, padding, bits,
                                                  groups))
      setattr(self, f'bn{group}', nn.BatchNorm2d(cout))

  def forward(self, x):
    out = x
    for group in (1, 2, 3):
      out = getattr(self, f'quan{group}')(_rprelu(self, group, out))
      out = getattr(self, f'bn{group}')(getattr(self, f'conv{group}')(out))
    return x + out if self.residual else out


class _Stem(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(32)

  def forward(self, x):
    return torch.clamp(self.bn1(self.conv1(x)), 0, 6)


class _LastConv(nn.Module):

  def __init__(self, bits: int, in_channels: int, out_channels: int):
    super().__init__()
    self.quan1 = PACTQuantizer(bits)
    self.conv1 = QuantizedConv(in_channels, out_channels, 1, 1, 0, bits)
    self.bn1 = nn.BatchNorm2d(out_channels)

  def forward(self, x):
    return torch.clamp(self.bn1(self.conv1(self.quan1(x))), 0, 6)


class OfficialLayoutMobileNetV2(nn.Module):
  """SPEC 4.5: ``feature.0`` FP stem (3x3, stride 2, 3 -> 32, BN, ReLU6),
  ``feature.1..17`` inverted residuals with the channel plan 16 | 24x2 | 32x3 | 64x4 |
  96x3 | 160x3 | 320 at expansion 6 (block 1 at expansion 1, but with its 32 -> 32
  expansion conv), ``feature.18`` PACT -> quantized 1x1 320 -> 1280 -> BN -> ReLU6,
  average pool, FP ``fc``; NCHW input."""

  def __init__(self, *, bits: int, num_classes: int):
    super().__init__()
    stages = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))
    layers, channels = [_Stem()], 32
    for expansion, out, count, first_stride in stages:
      for index in range(count):
        layers.append(InvertedResidual(bits, channels, out, first_stride if index == 0 else 1,
                                       expansion))
        channels = out
    layers.append(_LastConv(bits, channels, 1280))
    self.feature = nn.Sequential(*layers)
    self.fc = nn.Linear(1280, num_classes)

  def forward(self, x):
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.feature(x), 1), 1))


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random quantizer parameters (one interval below the 1e-3 floor, every third
  ``scale1`` negative), biases, PReLU slopes, PACT clips and BatchNorm parameters and
  statistics; constants untouched. Returns ``model`` in evaluation mode."""
  g = torch.Generator().manual_seed(seed)

  def uniform(shape, low, high):
    return torch.rand(shape, generator=g) * (high - low) + low

  clamped_one = False
  quantizers = 0
  with torch.no_grad():
    for name, module in model.named_modules():
      if isinstance(module, ActivationQuantizer):
        module.start.copy_(uniform(1, -0.3, 0.3))
        module.a.copy_(uniform(module.levels, 0.3, 1.7) * (2.0 / module.levels))
        if not clamped_one and module.levels > 1:
          module.a[1] = 5e-4  # below the floor: the select of SPEC 2.1 applies
          clamped_one = True
        sign = -1.0 if quantizers % 3 == 1 else 1.0  # negative input scales too
        module.scale1.copy_(sign * uniform(1, 0.5, 1.5))
        module.scale2.copy_(uniform(1, 0.5, 1.5))
        quantizers += 1
      elif isinstance(module, PACTQuantizer):
        module.clip_val.copy_(uniform(1, 1.5, 3.0))
      elif isinstance(module, Bias):
        module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.3)
      elif isinstance(module, nn.PReLU):
        module.weight.copy_(uniform(module.weight.shape, -0.5, 1.5))
      elif isinstance(module, nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(uniform(c, 0.5, 1.5))
        module.bias.copy_(torch.randn(c, generator=g) * 0.3)
        module.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
        module.running_var.copy_(uniform(c, 0.5, 2.0))
  return model.eval()


def separate_from_boundaries(model: nn.Module, x: torch.Tensor, *, margin: float = 1e-6,
                             weight_margin: float = 1e-5):
  """Moves quantizer offsets and weights of ``model`` until, for the input ``x``,
  no activation-quantizer input lies within ``margin * max|input|`` of a
  threshold (float32 implementations differ by about 3e-8 of that) and no weight
  within ``weight_margin`` (in code units) of a rounding boundary. Returns
  ``(offset moves, weights moved)``."""
  moved = [0, 0]
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, QuantizedConv):
        for _ in range(100):
          sigma, position = module.scale_and_position()
          near = (position - position.floor() - 0.5).abs() < weight_margin
          if not near.any():
            break
          moved[1] += int(near.sum())
          module.weight.add_(near * 4 * weight_margin * sigma)

    def pre_hook(module, args):
      u = args[0] * module.scale1
      tolerance = margin * float(u.abs().max())
      for _ in range(100):
        if float((u.unsqueeze(-1) - module.thresholds()).abs().min()) >= tolerance:
          return
        module.start.add_(3.7 * tolerance)
        moved[0] += 1
      raise RuntimeError('could not separate a quantizer input from its thresholds')

    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules()
             if isinstance(m, ActivationQuantizer)]
    try:
      model(x)
    finally:
      for hook in hooks:
        hook.remove()
  return tuple(moved)
