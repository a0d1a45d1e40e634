"""Every config file parses with every argument and builds its model; bad values fail
with a ValueError naming the value and the choices."""

import importlib.util
import os

import ml_collections
import pytest
from flax import nnx

from n2uq_jax import models
from n2uq_jax.runs import model as model_lib
from n2uq_jax.train import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILES = ('default', 'cifar10_resnet20', 'imagenet_resnet18', 'imagenet_resnet34',
                'imagenet_resnet50', 'imagenet_mobilenet_v2')
ARGS = ('fp', 'w2a2', 'w3a3', 'w4a4', 'w2a2,dorefa', 'w2a2,lsq', 'w2a2,pact',
        'w2a2,n2uq_dorefa_weights', 'w2a2,dorefa_n2uq_weights', 'fp,w2a2')


def load(name, arg=None):
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_config_parses_with_every_arg_and_builds_its_models(name):
  default = load(name)
  config_lib.validate(default)
  assert isinstance(default, ml_collections.ConfigDict)
  assert default.num_train_steps <= 0 and default.num_epochs > 0
  built = set()
  for arg in ARGS:
    config = load(name, arg)
    config_lib.validate(config)
    for variant in config_lib.variants(config):
      # building is the slow part: build FP, the default method and one baseline
      if variant.method not in ('n2uq', 'lsq') or variant.name in built or (
          variant.weight_bits not in (None, 2, 4)):
        continue
      built.add(variant.name)
      model_name = config_lib.model_name(config, variant)
      in_channels = 1 if config.data.source == 'embedded' else 3
      model = nnx.eval_shape(lambda: model_lib.build_model(
          model_name, variant, num_classes=10, in_channels=in_channels, seed=0,
          kwargs=config_lib.model_kwargs(config, variant)))
      assert models.count_params(model) > 0


def test_default_config_is_the_embedded_fp_then_w2a2_chain():
  config = load('default')
  assert config.data.source == 'embedded'
  assert [v.name for v in config_lib.variants(config)] == ['fp', 'w2a2']
  assert config.fp_loss == 'ce' and config.loss == 'kd' and config.chain_variants


def test_imagenet_recipe_defaults():
  config = load('imagenet_resnet50', 'w2a2')
  assert (config.model, config.fp_model, config.teacher_model) == (
      'resnet50', 'resnet50_fp', 'resnet101_fp')
  assert config.model_kwargs.quantize_downsample is True
  assert config.schedule == 'epoch_linear' and config.num_epochs == 128
  assert config.learning_rate == 1.25e-3 and config.global_batch_size == 256
  assert config.loss == 'kd' and config.kd_temperature == 1.0 and config.label_smoothing == 0.0
  assert not config.quirk_q1
  assert load('imagenet_resnet18', 'w2a2,fp_downsample').model_kwargs.quantize_downsample is False


def test_variant_names_and_policies():
  cases = {
      'w2a2': ('w2a2', 'n2uq', 'n2uq'),
      'w3a3,dorefa': ('w3a3_dorefa', 'dorefa', 'dorefa'),
      'w4a4,pact': ('w4a4_pact', 'pact', 'dorefa'),
      'w2a2,lsq': ('w2a2_lsq', 'lsq', 'lsq'),
      'w2a2,n2uq_dorefa_weights': ('w2a2_n2uq_dorefa_weights', 'n2uq', 'dorefa'),
      'w2a2,dorefa_n2uq_weights': ('w2a2_dorefa_n2uq_weights', 'dorefa', 'n2uq'),
  }
  for arg, (name, activation, weight) in cases.items():
    bits, method, _ = config_lib.parse_arg(arg)
    variant = config_lib.parse_variant(bits[0], method)
    assert variant.name == name
    spec = config_lib.quant_policy(variant).default
    assert (spec.activation, spec.weight) == (activation, weight)
  assert config_lib.quant_policy(config_lib.parse_variant('fp')).default.is_full_precision


@pytest.mark.parametrize('arg,match', [
    ('w2a9', "'w2a9'"),
    ('w2a2,foo', "'foo'.*valid"),
    ('dorefa', 'names no variant'),
    ('w2a2,dorefa,lsq', 'several methods'),
])
def test_bad_config_args(arg, match):
  with pytest.raises(ValueError, match=match):
    load('imagenet_resnet18', arg)


@pytest.mark.parametrize('field,value,match', [
    ('optimizer', 'rmsprop', "optimizer='rmsprop'.*'adam', 'sgd'"),
    ('schedule', 'step', "schedule='step'.*'epoch_linear'"),
    ('loss', 'mse', "loss='mse'.*'kd', 'ce'"),
    ('compute_dtype', 'float16', "compute_dtype='float16'.*'bfloat16'"),
    ('model', 'vgg16', "model='vgg16'.*resnet18"),
    ('method', 'apot', "method='apot'.*'n2uq'"),
    ('global_batch_size', 0, 'global_batch_size=0'),
    ('label_smoothing', 1.5, 'label_smoothing=1.5'),
])
def test_bad_config_values_name_the_value_and_choices(field, value, match):
  config = load('default')
  config[field] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)
