"""Fixtures of the interop tests."""

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
  """PyTorch on one thread: its default pool contends with XLA on a small machine
  (a ResNet-50 forward at 32 px took 1.5 s with two threads, 0.5 s with one)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
