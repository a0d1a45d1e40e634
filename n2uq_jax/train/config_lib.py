"""Training configs: the shared fields, the per-family builders, the variant grammar.

Every file under ``configs/`` is a thin ``get_config(arg)`` over the builders here,
so that tests and notebooks build the same configs without the CLI.

The config argument (``--config=configs/imagenet_resnet18.py:ARG``) is a
comma-separated list of tokens:

* bit-width tokens, one per variant, trained in the order given:
  ``fp`` (full precision), ``w2a2``, ``w3a3``, ``w4a4`` (any ``w{n}a{m}``, n, m in 1..8);
* at most one method token for the quantized variants: ``n2uq`` (default), ``dorefa``,
  ``lsq``, ``pact`` (PACT activations + DoReFa weights), ``n2uq_dorefa_weights``
  (N2UQ activations + DoReFa weights: N2UQ without the entropy-preserving weight
  rescaling), ``dorefa_n2uq_weights`` (DoReFa activations + N2UQ weights: the weight
  rescaling without the learned thresholds; the two are SPEC 6.4's ablation rows),
  ``uniform`` (fixed uniform activations on [0, 2] + N2UQ weights);
* ``fp_downsample`` (ResNets): keep the 1x1 shortcut convs in full precision (N2UQ*).

Examples: ``:w2a2``, ``:w2a2,dorefa``, ``:fp,w2a2`` (an FP fine-tune, then W2A2
initialised from it and distilled from it).

Each variant trains in its own sub-directory of the workdir, named by
:func:`variant_name` (``fp``, ``w2a2``, ``w2a2_dorefa``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import ml_collections

from n2uq_jax import nn
from n2uq_jax.interop import checkpoints as interop_checkpoints

METHODS = ('n2uq', 'dorefa', 'lsq', 'pact', 'n2uq_dorefa_weights', 'dorefa_n2uq_weights',
           'uniform')
"""Quantization methods of the quantized variants (the paper's method and its baselines)."""

_METHOD_QUANTIZERS = {
    # method: (activation family, weight family)
    'n2uq': ('n2uq', 'n2uq'),
    'dorefa': ('dorefa', 'dorefa'),
    'lsq': ('lsq', 'lsq'),
    'pact': ('pact', 'dorefa'),
    'n2uq_dorefa_weights': ('n2uq', 'dorefa'),
    'dorefa_n2uq_weights': ('dorefa', 'n2uq'),
    'uniform': ('uniform', 'n2uq'),
}

OPTIMIZERS = ('adam', 'sgd')
SCHEDULES = ('epoch_linear', 'linear', 'cosine', 'constant')
LOSSES = ('kd', 'ce')
COMPUTE_DTYPES = ('float32', 'bfloat16')
NONFINITE_POLICIES = ('stop', 'skip')
"""What a step with a NaN or inf loss, gradient or update does: ``stop`` the run with an
error naming the step (the parameters stay those of the step before), or ``skip`` it
(leave the parameters, count it in the metrics as ``nonfinite_steps``)."""

_BITS_TOKEN = re.compile(r'^w([1-8])a([1-8])$')
FP_DOWNSAMPLE_TOKEN = 'fp_downsample'

RUNTIME_FIELDS = (
    'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'async_checkpointing',
    'progress_bar', 'tensorboard', 'compilation_cache_dir', 'distributed', 'eval_every_steps',
    'nonfinite_policy', 'data.cache_dir',
)
"""Fields that may change between a run and its resumption: they do not change the
trained parameters (dotted: a field of a sub-config). Every other field must match the
config stored in the workdir."""


@dataclasses.dataclass(frozen=True)
class Variant:
  """One model to train: full precision, or quantized with a method at some bits."""
  weight_bits: int | None  # None: full precision
  activation_bits: int | None
  method: str = 'n2uq'

  @property
  def is_full_precision(self) -> bool:
    return self.weight_bits is None

  @property
  def name(self) -> str:
    if self.is_full_precision:
      return 'fp'
    name = f'w{self.weight_bits}a{self.activation_bits}'
    return name if self.method == 'n2uq' else f'{name}_{self.method}'


def parse_arg(arg: str) -> tuple[tuple[str, ...], str, bool]:
  """Splits a config argument into (bit tokens, method, fp_downsample).

  Raises:
    ValueError: an unknown token (naming it and the valid ones), no bit token, a
      repeated bit token, or two methods.
  """
  tokens = [t.strip().lower() for t in str(arg).split(',') if t.strip()]
  bits, methods, fp_downsample = [], [], False
  for token in tokens:
    if token == 'fp' or _BITS_TOKEN.match(token):
      if token in bits:
        raise ValueError(f'config argument {arg!r} names variant {token!r} twice')
      bits.append(token)
    elif token in METHODS:
      methods.append(token)
    elif token == FP_DOWNSAMPLE_TOKEN:
      fp_downsample = True
    else:
      raise ValueError(
          f'unknown config argument token {token!r} in {arg!r}; valid: fp, w2a2, w3a3, '
          f'w4a4 (any w{{n}}a{{m}} with n, m in 1..8), a method among {METHODS}, '
          f'or {FP_DOWNSAMPLE_TOKEN!r}')
  if not bits:
    raise ValueError(f'config argument {arg!r} names no variant; give fp or w{{n}}a{{m}}, '
                     'e.g. ":w2a2" or ":fp,w2a2"')
  if len(methods) > 1:
    raise ValueError(f'config argument {arg!r} names several methods {methods}; give one of '
                     f'{METHODS}')
  return tuple(bits), (methods[0] if methods else 'n2uq'), fp_downsample


def parse_variant(token: str, method: str = 'n2uq') -> Variant:
  """``'fp'`` or ``'w{n}a{m}'`` (with a method) as a :class:`Variant`."""
  if token == 'fp':
    return Variant(None, None, method)
  match = _BITS_TOKEN.match(token)
  if not match:
    raise ValueError(f'variant {token!r} must be "fp" or "w{{n}}a{{m}}" with n, m in 1..8')
  if method not in METHODS:
    raise ValueError(f'method {method!r} must be one of {METHODS}')
  return Variant(int(match.group(1)), int(match.group(2)), method)


def variants(config) -> tuple[Variant, ...]:
  """The variants of ``config.variants`` (a comma-separated string), FP first."""
  tokens = [t.strip() for t in str(config.variants).split(',') if t.strip()]
  if not tokens:
    raise ValueError(f'variants={config.variants!r} names no variant (e.g. "fp,w2a2")')
  result = [parse_variant(t, config.method) for t in tokens]
  return tuple(sorted(result, key=lambda v: not v.is_full_precision))


def quant_policy(variant: Variant) -> nn.QuantPolicy:
  """The quantizer policy of a variant: the same spec for every quantized layer."""
  if variant.is_full_precision:
    return nn.QuantPolicy.full_precision()
  activation, weight = _METHOD_QUANTIZERS[variant.method]
  return nn.QuantPolicy(default=nn.QuantSpec(
      activation=activation, weight=weight, activation_bits=variant.activation_bits,
      weight_bits=variant.weight_bits))


def model_name(config, variant: Variant) -> str:
  """The registry name of the variant's model: ``fp_model`` for FP, else ``model``."""
  return config.fp_model if variant.is_full_precision else config.model


def model_kwargs(config, variant: Variant) -> dict[str, Any]:
  """Extra model arguments: ``config.model_kwargs`` for the quantized model only."""
  if variant.is_full_precision:
    return dict(config.get('fp_model_kwargs', {}) or {})
  return dict(config.model_kwargs or {})


def variant_config(config: ml_collections.ConfigDict, variant: Variant,
                   fp_workdir: str | None = None) -> ml_collections.ConfigDict:
  """The config of one variant: ``loss``/``fp_loss`` resolved into ``loss``; with
  ``chain_variants`` and an FP variant trained before (in ``fp_workdir``), a quantized
  variant initialises from it, and distils from it unless ``teacher_checkpoint`` is
  set (an ImageNet ``:fp,w2a2`` run keeps its ResNet-101 teacher)."""
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    config.variants = variant.name if variant.is_full_precision else (
        f'w{variant.weight_bits}a{variant.activation_bits}')
    if variant.is_full_precision:
      config.loss = config.fp_loss
    elif fp_workdir and config.chain_variants:
      config.init_checkpoint = fp_workdir
      config.init_model = config.fp_model
      if config.loss == 'kd' and not config.teacher_checkpoint:
        config.teacher_checkpoint = fp_workdir
        config.teacher_model = config.fp_model
  return config


def base_config() -> ml_collections.ConfigDict:
  """Fields shared by every config, at the embedded-data defaults."""
  from n2uq_jax import data  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.model = 'small_cnn'
  config.fp_model = 'small_cnn'  # a registry name; N2UQ names are built at full precision
  config.model_kwargs = ml_collections.ConfigDict()
  config.fp_model_kwargs = ml_collections.ConfigDict()
  config.variants = 'fp,w2a2'
  config.method = 'n2uq'
  config.chain_variants = True

  config.data = data.default_config()
  config.global_batch_size = 64
  config.num_epochs = 20
  config.num_train_steps = -1  # > 0 overrides num_epochs

  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.momentum = 0.9  # sgd only
  config.weight_decay = 0.0  # L2 on the gradient of the conv kernels only (official code)
  config.quantizer_lr_multiplier = 0.1
  config.quirk_q1 = False
  config.schedule = 'cosine'
  config.warmup_epochs = 0.0

  config.loss = 'kd'  # quantized variants
  config.fp_loss = 'ce'  # the full-precision variant
  config.label_smoothing = 0.0
  config.kd_temperature = 1.0
  config.teacher_model = ''
  # Checkpoints: a run directory, a checkpoint directory, DIR@STEP, or a PyTorch file
  # torchvision:PATH / n2uq-official:PATH (n2uq_jax.interop.checkpoints).
  config.teacher_checkpoint = ''
  config.init_model = ''
  config.init_checkpoint = ''

  config.compute_dtype = 'float32'
  config.mesh = ml_collections.ConfigDict({'fsdp': 1, 'fsdp_min_size': 2 ** 18})
  config.distributed = ml_collections.ConfigDict({
      'enabled': False, 'coordinator_address': '', 'num_processes': -1, 'process_id': -1,
      'initialization_timeout': 300, 'barrier_timeout': 600})  # seconds
  config.seed = 0

  config.log_every_steps = 20
  config.eval_every_steps = 0  # 0: at the end of every epoch; < 0: never (throughput runs)
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.async_checkpointing = True
  config.nonfinite_policy = 'stop'  # or 'skip' (NONFINITE_POLICIES)
  config.progress_bar = True
  config.tensorboard = True
  config.compilation_cache_dir = '~/.cache/n2uq_jax/jax'
  return config


def _apply_arg(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  bits, method, fp_downsample = parse_arg(arg)
  config.variants = ','.join(bits)
  config.method = method
  if fp_downsample:
    if 'quantize_downsample' not in config.model_kwargs:
      raise ValueError(f'{FP_DOWNSAMPLE_TOKEN!r} applies to the ResNets only, not '
                       f'{config.model!r}')
    config.model_kwargs.quantize_downsample = False
  return config


def default_config(arg: str = 'fp,w2a2') -> ml_collections.ConfigDict:
  """The embedded digits: an FP ``small_cnn``, then its W2A2 N2UQ version initialised
  from it and distilled from it. A couple of minutes on two CPU cores."""
  config = base_config()
  config.num_epochs = 30
  config.learning_rate = 3e-3
  config.schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.log_every_steps = 22
  return _apply_arg(config, arg)


def imagenet_config(model: str, fp_model: str, arg: str) -> ml_collections.ConfigDict:
  """The official recipe (SPEC 5) on ImageNet from tfds: Adam at 1.25e-3 for batch
  256, quantizer parameters at lr/10, no weight decay, per-epoch linear decay over 128
  epochs, KD-only from a frozen ResNet-101 at temperature 1, initialised from an FP
  checkpoint (set ``init_checkpoint`` and ``teacher_checkpoint``: checkpoints of this
  project, or torchvision weights as ``torchvision:resnet18.pth`` and
  ``torchvision:resnet101.pth``, as in the official recipe)."""
  config = base_config()
  config.model = model
  config.fp_model = fp_model
  if model.startswith('resnet'):
    config.model_kwargs.quantize_downsample = True
  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.image_size = 224
  config.data.transform = 'imagenet'
  from n2uq_jax import data  # pylint: disable=g-import-not-at-top
  config.data.mean = tuple(data.IMAGENET_MEAN)
  config.data.std = tuple(data.IMAGENET_STD)
  config.data.worker_count = 8
  config.data.read_threads = 16
  config.global_batch_size = 256
  config.num_epochs = 128
  config.learning_rate = 1.25e-3
  config.schedule = 'epoch_linear'
  config.warmup_epochs = 0.0
  config.loss = 'kd'
  config.fp_loss = 'kd'  # FP references are "fine-tuned with the same settings"
  config.teacher_model = 'resnet101_fp'
  config.init_model = fp_model
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  return _apply_arg(config, arg)


def cifar10_config(arg: str) -> ml_collections.ConfigDict:
  """CIFAR-10 ResNet-20 from the tfds ``cifar10`` dataset (prepare it first), the
  same recipe family at CIFAR scale: Adam, quantizer parameters at lr/10, cosine
  decay, 200 epochs; the FP variant trains with cross-entropy and the quantized ones
  distil from it when run as ``:fp,w2a2``."""
  config = base_config()
  config.model = 'cifar_resnet20'
  config.fp_model = 'cifar_resnet20_fp'
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.image_size = 32
  config.data.transform = 'cifar'
  config.data.mean = (125.3, 123.0, 113.9)
  config.data.std = (63.0, 62.1, 66.7)
  config.data.worker_count = 2
  config.global_batch_size = 128
  config.num_epochs = 200
  config.learning_rate = 1e-3
  config.schedule = 'cosine'
  config.loss = 'kd'
  config.fp_loss = 'ce'
  config.teacher_model = 'cifar_resnet20_fp'
  config.init_model = 'cifar_resnet20_fp'
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  return _apply_arg(config, arg)


def _choice(config, field, choices):
  value = config[field]
  if value not in choices:
    raise ValueError(f'{field}={value!r} is not valid; choose one of {choices}')


def _positive(config, field, allow_zero=False):
  value = config[field]
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  if not ok:
    raise ValueError(f'{field}={value!r} must be a {"non-negative" if allow_zero else "positive"}'
                     ' number')


def validate(config) -> None:
  """Checks every training field that can be checked without data or devices.

  Raises:
    ValueError: naming the bad field, its value and the valid choices.
  """
  from n2uq_jax import models  # pylint: disable=g-import-not-at-top
  names = models.available_models()
  for field in ('model', 'fp_model'):
    base = config[field].removesuffix(':fp')
    if base not in names:
      raise ValueError(f'{field}={config[field]!r} is not a model; valid: {names}')
  _choice(config, 'method', METHODS)
  variants(config)
  _choice(config, 'optimizer', OPTIMIZERS)
  _choice(config, 'schedule', SCHEDULES)
  _choice(config, 'loss', LOSSES)
  _choice(config, 'fp_loss', LOSSES)
  _choice(config, 'compute_dtype', COMPUTE_DTYPES)
  _choice(config, 'nonfinite_policy', NONFINITE_POLICIES)
  for field in ('global_batch_size', 'num_epochs', 'learning_rate', 'log_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints', 'kd_temperature'):
    _positive(config, field)
  if not isinstance(config.eval_every_steps, int):
    raise ValueError(f'eval_every_steps={config.eval_every_steps!r} must be an integer (0: every '
                     'epoch; < 0: no evaluation)')
  for field in ('weight_decay', 'warmup_epochs', 'quantizer_lr_multiplier'):
    _positive(config, field, allow_zero=True)
  if not isinstance(config.num_train_steps, int):
    raise ValueError(f'num_train_steps={config.num_train_steps!r} must be an integer '
                     '(<= 0: use num_epochs)')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ValueError(f'label_smoothing={config.label_smoothing!r} must lie in [0, 1)')
  for field in ('teacher_model', 'init_model'):
    if config[field] and config[field].removesuffix(':fp') not in names:
      raise ValueError(f'{field}={config[field]!r} is not a model; valid: {names}')
  for field, model_field in (('init_checkpoint', 'init_model'),
                             ('teacher_checkpoint', 'teacher_model')):
    if config[field]:
      interop_checkpoints.check(field, config[field], config[model_field] or config.fp_model)
  for field in ('initialization_timeout', 'barrier_timeout'):
    value = config.distributed.get(field, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'distributed.{field}={value!r} must be a positive integer (seconds)')
  if config.mesh.fsdp < 1:
    raise ValueError(f'mesh.fsdp={config.mesh.fsdp!r} must be >= 1')


def comparable(config) -> dict[str, Any]:
  """The config as a JSON-able dict without :data:`RUNTIME_FIELDS`."""
  d = json.loads(config.to_json_best_effort()) if hasattr(config, 'to_json_best_effort') \
      else dict(config)
  for field in RUNTIME_FIELDS:
    parent, _, leaf = field.rpartition('.')
    (d.get(parent, {}) if parent else d).pop(leaf, None)
  return d


def differences(stored: dict[str, Any], current: dict[str, Any], prefix='') -> list[str]:
  """Dotted names of the fields whose values differ between two config dicts."""
  out = []
  for key in sorted(set(stored) | set(current)):
    a, b = stored.get(key, '<missing>'), current.get(key, '<missing>')
    if isinstance(a, dict) and isinstance(b, dict):
      out.extend(differences(a, b, f'{prefix}{key}.'))
    elif a != b:
      out.append(f'{prefix}{key}: {a!r} (workdir) != {b!r} (now)')
  return out
