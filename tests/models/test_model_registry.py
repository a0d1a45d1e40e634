"""Registry, parameter counts and layer structure, on abstract models
(``nnx.eval_shape``: nothing is initialised, so the big models stay cheap)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from n2uq_jax import models, nn
from n2uq_jax.models import common
from tests.models.helpers import abstract_model, modules, policy_for

N2UQ_NAMES = ('cifar_resnet20', 'mobilenet_v2', 'resnet18', 'resnet34', 'resnet50', 'small_cnn')
FP_NAMES = ('cifar_resnet20_fp', 'mobilenet_v2_fp', 'resnet101_fp', 'resnet18_fp',
            'resnet34_fp', 'resnet50_fp')

# Trainable parameter counts of the torchvision models at 1000 classes.
TORCHVISION_COUNTS = {
    'resnet18_fp': 11_689_512,
    'resnet34_fp': 21_797_672,
    'resnet50_fp': 25_557_032,
    'resnet101_fp': 44_549_160,
    'mobilenet_v2_fp': 3_504_872,
}

RESNET_PLANS = {  # name: (bottleneck?, blocks per stage)
    'resnet18': (False, (2, 2, 2, 2)),
    'resnet34': (False, (3, 4, 6, 3)),
    'resnet50': (True, (3, 4, 6, 3)),
}


def rprelu_params(channels):
  return 3 * channels  # two biases and a slope per channel


def n2uq_quantizer_params(bits):
  return (2**bits - 1) + 3  # intervals, offset, input and output scale


def resnet_extras(bottleneck, depths, widths, in_features, first_strides, bits, quantize_ds):
  """Parameters an N2UQ ResNet has on top of its full-precision twin."""
  extra = 0
  expansion = 4 if bottleneck else 1
  for width, depth, first_stride in zip(widths, depths, first_strides):
    for i in range(depth):
      stride = first_stride if i == 0 else 1
      out = width * expansion
      # rprelu before each conv plus rprelu_out after the addition
      extra += rprelu_params(in_features) + rprelu_params(out)
      extra += rprelu_params(width) * (2 if bottleneck else 1)
      quantizers = 3 if bottleneck else 2
      if (stride != 1 or in_features != out) and quantize_ds:
        quantizers += 1
      if bits is not None:
        extra += quantizers * n2uq_quantizer_params(bits)
      in_features = out
  return extra


def count_quant(model):
  n2uq = sum(isinstance(m, nn.N2UQActivation) for _, m in nnx.iter_graph(model))
  pact = sum(isinstance(m, nn.PACTActivation) for _, m in nnx.iter_graph(model))
  convs = sum(isinstance(m, nn.QuantConv) and not m.spec.is_full_precision
              for _, m in nnx.iter_graph(model))
  return n2uq, pact, convs


def test_available_models():
  assert models.available_models() == tuple(sorted(N2UQ_NAMES + FP_NAMES))


@pytest.mark.parametrize('name', ['resnet19', 'ResNet18', 'resnet18_fp:fp', ''])
def test_unknown_name_lists_valid_ones(name):
  with pytest.raises(ValueError) as info:
    models.create_model(name, rngs=nnx.Rngs(0))
  message = str(info.value)
  assert repr(name) in message
  for valid in models.available_models():
    assert valid in message


def test_full_precision_twin_rejects_a_quantizing_policy():
  with pytest.raises(ValueError, match='resnet18_fp'):
    models.create_model('resnet18_fp', policy=policy_for(2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='policy'):
    models.create_model('small_cnn', policy='n2uq', rngs=nnx.Rngs(0))


@pytest.mark.parametrize('name,expected', sorted(TORCHVISION_COUNTS.items()))
def test_full_precision_twin_counts_equal_torchvision(name, expected):
  assert models.count_params(abstract_model(name)) == expected


def cifar_resnet20_fp_count(num_classes):
  total = 3 * 9 * 16 + 2 * 16  # stem conv + BN
  in_features = 16
  for width, first_stride in ((16, 1), (32, 2), (64, 2)):
    for i in range(3):
      total += 9 * in_features * width + 2 * width + 9 * width * width + 2 * width
      if (i == 0 and first_stride != 1) or in_features != width:
        total += in_features * width + 2 * width  # 1x1 projection + BN
      in_features = width
  return total + 64 * num_classes + num_classes


def test_cifar_resnet20_fp_count():
  assert cifar_resnet20_fp_count(10) == 272_474  # ~0.27M, He et al. with projections
  assert models.count_params(abstract_model('cifar_resnet20_fp', num_classes=10)) == 272_474


@pytest.mark.parametrize('name,bits,quantize_ds', [
    ('resnet18', None, True), ('resnet18', 2, True), ('resnet18', 2, False),
    ('resnet18', 4, True), ('resnet34', 2, True), ('resnet50', 2, True),
    ('resnet50', 2, False)])
def test_n2uq_resnet_counts(name, bits, quantize_ds):
  bottleneck, depths = RESNET_PLANS[name]
  expected = TORCHVISION_COUNTS[f'{name}_fp'] + resnet_extras(
      bottleneck, depths, (64, 128, 256, 512), 64, (1, 2, 2, 2), bits, quantize_ds)
  model = abstract_model(name, bits, quantize_downsample=quantize_ds)
  assert models.count_params(model) == expected


@pytest.mark.parametrize('bits', [None, 2])
def test_n2uq_cifar_resnet20_count(bits):
  expected = cifar_resnet20_fp_count(1000) + resnet_extras(
      False, (3, 3, 3), (16, 32, 64), 16, (1, 2, 2), bits, True)
  assert models.count_params(abstract_model('cifar_resnet20', bits)) == expected


@pytest.mark.parametrize('bits', [None, 4])
def test_n2uq_mobilenet_v2_count(bits):
  extra = 32 * 32 + 2 * 32  # block 1 keeps a 32 -> 32 expansion conv and its BN
  in_features = 32
  for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                     (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
    for _ in range(n):
      hidden = in_features * t
      extra += rprelu_params(in_features) + 2 * rprelu_params(hidden)
      in_features = c
  if bits is not None:
    extra += 51 * n2uq_quantizer_params(bits) + 1  # + the PACT clip
  expected = TORCHVISION_COUNTS['mobilenet_v2_fp'] + extra
  assert models.count_params(abstract_model('mobilenet_v2', bits)) == expected
  if bits == 4:
    assert round(expected / 1e6, 2) == 3.55  # SPEC 4.5: "about 3.55 M parameters"


@pytest.mark.parametrize('bits', [None, 2])
def test_small_cnn_count(bits):
  w = 32
  expected = (9 * w + 2 * w
              + rprelu_params(w) + 9 * w * w + 2 * w
              + rprelu_params(w) + 9 * w * 2 * w + 2 * 2 * w
              + rprelu_params(2 * w) + 2 * w * 1000 + 1000)
  if bits is not None:
    expected += 2 * n2uq_quantizer_params(bits)
  assert models.count_params(abstract_model('small_cnn', bits)) == expected


def test_count_params_includes_quantizer_params_and_excludes_batch_stats():
  model = abstract_model('resnet18', 2)
  quantizer = sum(v.get_value().size for _, v in nnx.iter_graph(model)
                  if isinstance(v, nn.QuantizerParam))
  assert quantizer == 19 * n2uq_quantizer_params(2)
  plain = sum(v.get_value().size for _, v in nnx.iter_graph(model)
              if isinstance(v, nnx.Param) and not isinstance(v, nn.QuantizerParam))
  assert models.count_params(model) == plain + quantizer


@pytest.mark.parametrize('name,quantize_ds,expected', [
    ('resnet18', False, (16, 0, 16)),
    ('resnet18', True, (19, 0, 19)),
    ('resnet34', False, (32, 0, 32)),
    ('resnet34', True, (35, 0, 35)),
    ('resnet50', False, (48, 0, 48)),
    ('resnet50', True, (52, 0, 52)),
    ('cifar_resnet20', True, (20, 0, 20)),
    ('cifar_resnet20', False, (18, 0, 18)),
])
def test_resnet_quantizer_and_conv_counts(name, quantize_ds, expected):
  """SPEC 4.4: one N2UQ quantizer per quantized conv; stem and fc stay FP."""
  model = abstract_model(name, 2, quantize_downsample=quantize_ds)
  assert count_quant(model) == expected
  assert model.conv1.spec.is_full_precision and model.conv1.input_quantizer is None
  assert model.fc.spec.is_full_precision and model.fc.input_quantizer is None


def test_mobilenet_v2_structure():
  """SPEC 4.5: 51 N2UQ quantizers + 1 PACT, 52 quantized convs, block-1 expansion."""
  model = abstract_model('mobilenet_v2', 4)
  assert count_quant(model) == (51, 1, 52)
  assert len(model.features) == 19
  first = model.features[1]
  assert (first.conv1.in_features, first.conv1.out_features) == (32, 32)
  assert first.conv2.feature_group_count == 32
  last = model.features[18].conv
  assert isinstance(last.input_quantizer, nn.PACTActivation)
  assert last.input_quantizer.gradient == 'n2uq_mbv2'
  assert last.input_quantizer.bits == 4 and last.weight_quantizer.bits == 4
  assert (last.in_features, last.out_features) == (320, 1280)
  assert model.features[0].conv.spec.is_full_precision
  assert model.classifier.spec.is_full_precision
  for i, block in enumerate(model.features[1:18], start=1):
    assert block.conv2.feature_group_count == block.conv2.in_features == block.conv2.out_features
    for conv in (block.conv1, block.conv2, block.conv3):
      assert isinstance(conv.input_quantizer, nn.N2UQActivation), i
  residual = [i for i, b in enumerate(model.features[1:18], start=1) if b.use_residual]
  assert residual == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]

  twin = abstract_model('mobilenet_v2_fp')
  assert twin.features[1].conv1 is None and twin.features[1].bn1 is None
  assert count_quant(twin) == (0, 0, 0)


def test_resnet50_stride_on_3x3():
  model = abstract_model('resnet50', 2)
  block = model.layer2[0]
  assert block.conv1.strides == (1, 1) and block.conv2.strides == (2, 2)
  assert block.conv3.strides == (1, 1) and block.downsample.conv.strides == (2, 2)
  assert model.layer1[0].downsample is not None  # 64 -> 256: the fourth downsample


@pytest.mark.parametrize('name', N2UQ_NAMES)
def test_full_precision_policy_has_no_quantizers(name):
  """``policy=None``, ``QuantPolicy.full_precision()`` and the ``:fp`` suffix are
  the same architecture with no quantizer anywhere (all three built for the
  cheap models, ``None`` for the others)."""
  counts = set()
  candidates = [abstract_model(name)]
  if name in ('resnet18', 'small_cnn', 'cifar_resnet20'):
    candidates.append(nnx.eval_shape(lambda: models.create_model(
        name, policy=nn.QuantPolicy.full_precision(), rngs=nnx.Rngs(0))))
    candidates.append(nnx.eval_shape(lambda: models.create_model(f'{name}:fp',
                                                                 rngs=nnx.Rngs(0))))
  for model in candidates:
    assert count_quant(model) == (0, 0, 0)
    assert all(m.input_quantizer is None for _, m in nnx.iter_graph(model)
               if isinstance(m, (nn.QuantConv, nn.QuantDense)))
    assert not any(isinstance(v, nn.QuantizerParam) for _, v in nnx.iter_graph(model))
    assert any(isinstance(m, nn.RPReLU) for _, m in nnx.iter_graph(model))
    counts.add(models.count_params(model))
  assert len(counts) == 1
  with pytest.raises(ValueError, match='quantizing policy'):
    models.create_model(f'{name}:fp', policy=policy_for(2), rngs=nnx.Rngs(0))


@pytest.mark.parametrize('name,quantize_ds', [('resnet18', True), ('resnet18', False),
                                              ('resnet50', True), ('mobilenet_v2', True),
                                              ('cifar_resnet20', True), ('small_cnn', True)])
def test_policy_names_are_conv_paths(name, quantize_ds):
  """Each quantized conv asks the policy for its own dotted path; the stem
  conv and the classifier never ask."""
  asked = []

  class Recording(nn.QuantPolicy):

    def for_layer(self, layer):
      asked.append(layer)
      return super().for_layer(layer)

  kwargs = {} if name in ('mobilenet_v2', 'small_cnn') else dict(quantize_downsample=quantize_ds)
  model = nnx.eval_shape(lambda: models.create_model(
      name, num_classes=10, policy=Recording(default=nn.QuantSpec.uniform_bits(2)),
      rngs=nnx.Rngs(0), **kwargs))
  convs = modules(model, nn.QuantConv)
  quantized = {path for path, conv in convs.items() if not conv.spec.is_full_precision}
  assert len(asked) == len(set(asked))
  assert set(asked) == quantized
  if name.startswith('resnet'):
    assert 'layer1.0.conv1' in asked
    assert ('layer2.0.downsample.conv' in asked) == quantize_ds
    assert 'conv1' not in asked


def test_policy_overrides_reach_the_named_layers():
  policy = nn.QuantPolicy(
      default=nn.QuantSpec.uniform_bits(2),
      overrides={'layer2.0.downsample.conv': nn.QuantSpec.uniform_bits(4),
                 'layer1.*': nn.FULL_PRECISION,
                 'layer4.1.conv2': nn.QuantSpec(activation='dorefa', weight='dorefa')})
  model = nnx.eval_shape(lambda: models.create_model('resnet18', policy=policy,
                                                     rngs=nnx.Rngs(0)))
  assert model.layer2[0].downsample.conv.input_quantizer.bits == 4
  assert model.layer2[0].conv1.input_quantizer.bits == 2
  assert model.layer1[1].conv2.input_quantizer is None
  assert isinstance(model.layer4[1].conv2.input_quantizer, nn.DoReFaActivation)
  assert count_quant(model) == (19 - 4 - 1, 0, 19 - 4)


def test_batch_norm_conventions():
  model = abstract_model('resnet18', 2)
  norms = list(modules(model, nnx.BatchNorm).values())
  assert len(norms) == 1 + 16 + 3
  for bn in norms:
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5 and bn.axis_name is None


def test_names_follow_torchvision():
  model = abstract_model('resnet18', 2)
  paths = {'/'.join(str(p) for p in path) for path, v in nnx.iter_graph(model)
           if isinstance(v, nnx.Variable)}
  for path in ('conv1/kernel', 'bn1/scale', 'bn1/mean', 'layer1/0/conv1/kernel',
               'layer1/0/bn2/var', 'layer2/0/downsample/conv/kernel',
               'layer2/0/downsample/bn/bias', 'layer4/1/conv2/kernel', 'fc/kernel', 'fc/bias',
               'layer3/1/rprelu1/slope', 'layer3/1/rprelu2/bias_in',
               'layer3/1/rprelu_out/bias_out',
               'layer2/0/conv1/input_quantizer/intervals',
               'layer2/0/downsample/conv/input_quantizer/offset'):
    assert path in paths, path
  assert isinstance(model.layer1, nnx.List)
  fp_paths = {'/'.join(str(p) for p in path) for path, v in nnx.iter_graph(
      abstract_model('resnet18_fp')) if isinstance(v, nnx.Variable)}
  assert fp_paths < paths


INPUTS = {'small_cnn': (2, 8, 8, 1), 'cifar_resnet20': (2, 8, 8, 3),
          'cifar_resnet20_fp': (2, 8, 8, 3)}


CHEAP = ('small_cnn', 'cifar_resnet20', 'cifar_resnet20_fp', 'resnet18', 'resnet18_fp')


@pytest.mark.parametrize('name,mode', [(n, 'eval') for n in N2UQ_NAMES + FP_NAMES]
                         + [(n, 'train') for n in CHEAP])
def test_forward_shapes(name, mode):
  """Logits shape and dtype for every registry name, evaluated abstractly.

  Training mode is traced for the small models only: there every BatchNorm
  statistics update costs time proportional to the traced graph (flax's
  ``Variable.set_value`` probes ``tracer.sharding``, whose error message
  walks the jaxpr), which makes tracing the deep models slow."""
  model = nnx.clone(abstract_model(name, None if name.endswith('_fp') else 2))
  getattr(model, mode)()
  x = jax.ShapeDtypeStruct(INPUTS.get(name, (2, 32, 32, 3)), jnp.float32)
  logits = nnx.eval_shape(lambda m, x: m(x), model, x)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


@pytest.mark.parametrize('name', ['resnet18', 'small_cnn'])
def test_bfloat16_compute_gives_float32_logits(name):
  model = nnx.eval_shape(lambda: models.create_model(
      name, num_classes=7, policy=policy_for(4), dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  x = jax.ShapeDtypeStruct((1, *INPUTS.get(name, (2, 32, 32, 3))[1:]), jnp.bfloat16)
  logits = nnx.eval_shape(lambda m, x: m(x), model, x)
  assert logits.shape == (1, 7) and logits.dtype == jnp.float32


def test_train_and_eval_switch_batch_norm():
  model = nnx.clone(abstract_model('resnet18', 2))
  norms = list(modules(model, nnx.BatchNorm).values())
  assert not any(bn.use_running_average for bn in norms)  # created in training mode
  model.eval()
  assert all(bn.use_running_average for bn in norms)
  model.train()
  assert not any(bn.use_running_average for bn in norms)


def test_max_pool_pads_with_minus_infinity():
  x = -jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
  y = common.max_pool_3x3_s2(x)
  assert y.shape == (1, 2, 2, 1)
  assert y[0, :, :, 0].tolist() == [[-1.0, -2.0], [-5.0, -6.0]]  # zero padding would give 0
