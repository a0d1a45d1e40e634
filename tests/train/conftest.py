"""Fixtures of the training tests: one persistent compilation cache per session, so
that the in-process runs and the subprocesses compile each step once."""

import os

import pytest

from n2uq_jax.train import loop


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: compiles several large models (minutes on 2 CPU cores); part of the '
      'default run, deselect with -m "not slow" for quick iterations')


@pytest.fixture(scope='session')
def compilation_cache(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('jax_cache'))
  loop.configure_compilation_cache(path)
  return path


@pytest.fixture
def quiet_config():
  """Options shared by the test runs: no progress bar, no TensorBoard, asynchronous
  checkpoints (test_lowered_step.py runs the synchronous path)."""
  def apply(config, **overrides):
    config.progress_bar = False
    config.tensorboard = False
    config.compilation_cache_dir = ''
    config.async_checkpointing = True
    config.update(overrides)
    return config
  return apply
