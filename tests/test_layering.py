"""The rooms of the package and the import arrows allowed between them, read from the
source with ``ast`` (no import runs), so that a change cannot quietly add an upward
arrow (``export`` reading runs through ``train``, ``nn`` reaching for ``models``).

    quant <- nn <- models <- runs <- train, export, inspect
    data <- train, inspect;  interop <- train;  nn, quant <- qwix

A room may import itself and the rooms listed for it; a module whose name starts with
``_`` is private to its room.
"""

import ast
import os

import pytest

PACKAGE = 'n2uq_jax'
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

ALLOWED = {
    'quant': set(),
    'nn': {'quant'},
    'models': {'quant', 'nn'},
    'data': set(),
    'runs': {'quant', 'nn', 'models'},
    'interop': {'quant', 'nn', 'models'},
    'qwix': {'quant', 'nn'},
    'train': {'quant', 'nn', 'models', 'data', 'runs', 'interop'},
    'export': {'quant', 'nn', 'models', 'runs'},
    'inspect': {'quant', 'nn', 'models', 'data', 'runs'},
}


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
  """``(line, dotted name)`` of every import in ``tree`` (relative ones resolved
  against ``module``); ``from a import b`` yields both ``a`` and ``a.b``."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parent = module.split('.')[:-node.level]
        base = '.'.join(parent + ([base] if base else []))
      found.append((node.lineno, base))
      found += [(node.lineno, f'{base}.{alias.name}') for alias in node.names]
  return found


def forbidden_imports(source: str, module: str) -> list[str]:
  """The imports of ``source`` (the text of ``module``, a dotted name inside the
  package) that break the layering: an arrow :data:`ALLOWED` does not list, or a
  private module of another room."""
  room = module.split('.')[1]
  problems = []
  for line, name in _imported_modules(ast.parse(source), module):
    parts = name.split('.')
    if parts[0] != PACKAGE or len(parts) < 2 or parts[1] == room:
      continue
    target = parts[1]
    if target not in ALLOWED:
      continue  # `from n2uq_jax import data` also yields `n2uq_jax` + a room name: checked
    if target not in ALLOWED[room]:
      problems.append(f'{module}:{line} imports {name}: {room} -> {target} is not an allowed '
                      f'arrow (allowed: {sorted(ALLOWED[room])})')
    elif len(parts) > 2 and parts[2].startswith('_') and not parts[2].startswith('__'):
      problems.append(f'{module}:{line} imports {name}, private to the {target} room')
  return problems


def _modules():
  for directory, _, files in os.walk(ROOT):
    for file in sorted(files):
      if file.endswith('.py'):
        path = os.path.join(directory, file)
        relative = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
        if relative[-1] == '__init__':
          relative = relative[:-1]
        if len(relative) > 1:
          yield path, '.'.join(relative)


def test_every_room_is_listed():
  rooms = {name for name in os.listdir(ROOT)
           if os.path.isfile(os.path.join(ROOT, name, '__init__.py'))}
  assert rooms == set(ALLOWED), 'list the new room and its allowed arrows in ALLOWED'


def test_no_import_goes_against_the_layering():
  problems = []
  for path, module in _modules():
    with open(path, encoding='utf-8') as f:
      problems += forbidden_imports(f.read(), module)
  assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('source, module', [
    ('from n2uq_jax import train', 'n2uq_jax.export.tables'),
    ('from n2uq_jax.train import config_lib', 'n2uq_jax.inspect.report'),
    ('import n2uq_jax.models.registry', 'n2uq_jax.nn.layers'),
    ('from ..train import loop', 'n2uq_jax.runs.restore'),
    ('from n2uq_jax.quant import _validation', 'n2uq_jax.nn.spec'),
])
def test_an_upward_or_private_import_is_reported(source, module):
  assert forbidden_imports(source, module)
