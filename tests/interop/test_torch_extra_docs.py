"""The PyTorch extra is the CUDA build of torch on x86_64: README.md,
requirements-torch.txt and pyproject.toml say so and give the CPU-only install."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_INDEX = '--index-url https://download.pytorch.org/whl/cpu'


def _read(name):
  with open(os.path.join(ROOT, name), encoding='utf-8') as f:
    return re.sub(r'\s+', ' ', f.read())  # wrapped lines read as one


@pytest.mark.parametrize('name', ['README.md', 'requirements-torch.txt', 'pyproject.toml'])
def test_torch_extra_names_the_cuda_build_and_the_cpu_install(name):
  text = _read(name)
  assert 'CUDA build' in text, name
  assert CPU_INDEX in text, name


def test_readme_gives_the_cpu_install_as_a_command():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    lines = f.read().splitlines()
  assert f'python -m pip install -r requirements-torch.txt {CPU_INDEX}' in lines
