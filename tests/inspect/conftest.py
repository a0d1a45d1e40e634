"""A short run of the embedded default (an FP small_cnn, then its W2A2 N2UQ version
initialised from it and distilled from it), shared by the inspection tests."""

import pytest

from n2uq_jax.train import config_lib, loop
from tests.train.conftest import compilation_cache  # pylint: disable=unused-import

TRAIN_STEPS = 6


@pytest.fixture(scope='package')
def default_run(tmp_path_factory, compilation_cache):  # pylint: disable=redefined-outer-name
  """The workdir of ``fp,w2a2`` trained for a few steps, evaluated every 3 steps."""
  workdir = tmp_path_factory.mktemp('default_run')
  config = config_lib.default_config('fp,w2a2')
  config.update(dict(num_train_steps=TRAIN_STEPS, eval_every_steps=3, log_every_steps=2,
                     progress_bar=False, tensorboard=False,
                     compilation_cache_dir=compilation_cache))
  summaries = loop.run(config, str(workdir))
  return workdir, {s['variant']: s for s in summaries}
