"""Reading a run directory back: its config and its trained model.

A run directory is one variant's directory written by ``train.py`` (for example
``workdir/default/w2a2``): ``config.json``, ``checkpoints/`` and usually ``best/``.
The model is rebuilt from the config exactly as the training loop built it
(``n2uq_jax.train.loop.build_model``) and its parameters and BatchNorm statistics are
restored from the checkpoint, without initialising anything.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from n2uq_jax.train import checkpoint as checkpoint_lib
from n2uq_jax.train import config_lib, loop
from n2uq_jax.train import step as step_lib


def read_config(run_dir: str) -> ml_collections.ConfigDict:
  """The config stored in ``<run_dir>/config.json``.

  Raises:
    ValueError: ``run_dir`` is not a variant directory (naming the variant
      sub-directories when it is a workdir that holds several).
  """
  path = os.path.join(run_dir, 'config.json')
  if not os.path.isfile(path):
    variants = sorted(d for d in os.listdir(run_dir)
                      if os.path.isfile(os.path.join(run_dir, d, 'config.json'))) if (
                          os.path.isdir(run_dir)) else []
    hint = (f'; it holds the variant directories {variants}: pass one of them, e.g. '
            f'{os.path.join(run_dir, variants[-1])}') if variants else (
                ': give a variant directory written by train.py, e.g. workdir/default/w2a2')
    raise ValueError(f'run directory {run_dir!r} has no config.json{hint}')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


def run_variant(config) -> config_lib.Variant:
  """The single variant a run directory's config trains."""
  variants = config_lib.variants(config)
  if len(variants) != 1:
    raise ValueError(f'a run directory holds one variant, its config names {config.variants!r}')
  return variants[0]


def load_model(run_dir: str, config, *, num_classes: int, in_channels: int,
               step: int | None = None) -> tuple[nnx.Module, str]:
  """The trained model of ``run_dir`` in evaluation mode, and where it was read from.

  Args:
    run_dir: the variant directory.
    config: its config (:func:`read_config`).
    num_classes, in_channels: of the run's data (the data pipeline says).
    step: a checkpoint step (in ``best/`` or ``checkpoints/``); default the best
      checkpoint, else the latest.

  Raises:
    ValueError: no checkpoint (at that step) in ``run_dir``.
  """
  variant = run_variant(config)
  name = config_lib.model_name(config, variant)
  dtype = step_lib.compute_dtype(config.compute_dtype)
  kwargs = config_lib.model_kwargs(config, variant)
  abstract_model = nnx.eval_shape(lambda: loop.build_model(
      name, None if variant.is_full_precision else variant, num_classes=num_classes,
      in_channels=in_channels, seed=0, compute_dtype=dtype, kwargs=kwargs))
  model_def, params, model_state = step_lib.split_model(abstract_model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = lambda tree: checkpoint_lib.abstract(tree, jax.tree.map(lambda _: device, tree))
  path = os.path.abspath(run_dir) + (f'@{step}' if step is not None else '')
  params, model_state, where = checkpoint_lib.restore_model(path, target(params),
                                                            target(model_state))
  return model_def.merge(params, model_state, train=False), where
