"""Static checks of how the library's modules import each other (no module is run).

A module's `_private` names are its own: another module that reaches for one
(`from pcdarts_jax.loop import _host`, `loop._host`) ties itself to details the
owner may change. Shared helpers are public names of the module that owns them.

Imports go one way, down the layers (run, nn, data < spaces < search, sgnas <
train < bench < launch): no import circle inside pcdarts_jax/, not even through
an import inside a function.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ('pcdarts_jax', 'launch')


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _sources():
  return {_module_name(p): p
          for package in PACKAGES for p in sorted((ROOT / package).rglob('*.py'))}


def _shown(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _is_private(name: str) -> bool:
  return name.startswith('_') and not name.startswith('__')


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
  """The absolute module name of a (possibly relative) `from ... import`."""
  if not node.level:
    return node.module or ''
  base = module.split('.')
  base = base[:len(base) - node.level + (1 if is_package else 0)]
  return '.'.join(base + ([node.module] if node.module else []))


def _dotted(node: ast.AST):
  """'a.b.c' for the expression a.b.c, or None for anything else."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  return '.'.join([node.id] + names[::-1])


def private_imports(sources) -> list:
  """'path:line: what' for every use of another internal module's private name."""
  found = []
  for module, path in sources.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == '__init__.py'
    local = {}  # Local name -> the internal module it is bound to.
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for alias in node.names:
          if alias.name in sources:
            local[alias.asname or alias.name.split('.')[0]] = (
                alias.name if alias.asname else alias.name.split('.')[0])
      elif isinstance(node, ast.ImportFrom):
        source = _absolute(module, node, is_package)
        for alias in node.names:
          full = f'{source}.{alias.name}'
          if full in sources:
            local[alias.asname or alias.name] = full
          elif _is_private(alias.name) and source in sources and source != module:
            found.append(f'{_shown(path)}:{node.lineno}: '
                         f'from {source} import {alias.name}')
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
        continue
      dotted = _dotted(node.value)
      if dotted is None:
        continue
      head, _, rest = dotted.partition('.')
      if head not in local:
        continue
      owner = local[head] + ('.' + rest if rest else '')
      if owner in sources and owner != module:
        found.append(f'{_shown(path)}:{node.lineno}: {dotted}.{node.attr}')
  return sorted(set(found))


def test_no_module_uses_another_modules_private_names():
  offenders = private_imports(_sources())
  assert not offenders, 'private names used across modules:\n' + '\n'.join(offenders)


def _owner(tmp_path) -> pathlib.Path:
  """A made-up module `pcdarts_jax.loop` with one public and one private name."""
  owner = tmp_path / 'loop.py'
  owner.write_text('def search():\n  pass\n\n\ndef _host():\n  pass\n')
  return owner


@pytest.mark.parametrize('snippet, expected', [
    ('from pcdarts_jax.loop import _host', 'from pcdarts_jax.loop import _host'),
    ('from pcdarts_jax import loop\nx = loop._host', 'loop._host'),
    ('from pcdarts_jax import loop as l\nx = l._host(1)', 'l._host'),
    ('import pcdarts_jax.loop\nx = pcdarts_jax.loop._host', 'pcdarts_jax.loop._host'),
    ('from . import loop\nx = loop._host', 'loop._host'),
])
def test_the_check_finds_each_form_of_private_use(tmp_path, snippet, expected):
  user = tmp_path / 'user.py'
  user.write_text(snippet + '\n')
  sources = {'pcdarts_jax.loop': _owner(tmp_path), 'pcdarts_jax.user': user}
  offenders = private_imports(sources)
  assert len(offenders) == 1 and offenders[0].endswith(expected), offenders


def test_the_check_allows_own_and_public_and_dunder_names(tmp_path):
  user = tmp_path / 'user.py'
  user.write_text('from pcdarts_jax import loop\n_mine = 1\nx = loop.search, loop.__name__\n'
                  'import os\ny = os._exit\n')
  sources = {'pcdarts_jax.loop': _owner(tmp_path), 'pcdarts_jax.user': user}
  assert private_imports(sources) == []


def import_graph(sources) -> dict:
  """module -> the internal modules it imports, at any depth of its code (an
  import inside a function counts: it closes a circle as soon as it runs).
  `import a.b` and `from a import b` name module a.b; the packages above it,
  which Python initialises first, are not counted as imported."""
  graph = {}
  for module, path in sources.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == '__init__.py'
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        imported.update(alias.name for alias in node.names if alias.name in sources)
      elif isinstance(node, ast.ImportFrom):
        source = _absolute(module, node, is_package)
        for alias in node.names:
          full = f'{source}.{alias.name}'
          if full in sources:
            imported.add(full)
          elif source in sources:
            imported.add(source)
    graph[module] = imported - {module}
  return graph


def import_cycles(sources) -> list:
  """The import circles among `sources`: each strongly connected set of two or
  more modules of the import graph, sorted (Tarjan's algorithm)."""
  graph = import_graph(sources)
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for other in sorted(graph[module]):
      if other not in index:
        visit(other)
        low[module] = min(low[module], low[other])
      elif other in on_stack:
        low[module] = min(low[module], index[other])
    if low[module] == index[module]:
      component = []
      while True:
        other = stack.pop()
        on_stack.discard(other)
        component.append(other)
        if other == module:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for module in sorted(graph):
    if module not in index:
      visit(module)
  return sorted(found)


def test_no_import_cycles_inside_the_package():
  sources = {m: p for m, p in _sources().items() if m.split('.')[0] == 'pcdarts_jax'}
  circles = import_cycles(sources)
  graph = import_graph(sources)
  detail = [' <-> '.join(c) + ': ' + '; '.join(
      f'{m} -> {", ".join(sorted(graph[m] & set(c)))}' for m in c) for c in circles]
  assert not circles, 'import circles inside pcdarts_jax:\n' + '\n'.join(detail)


def test_the_cycle_check_finds_a_made_up_circle(tmp_path):
  """a -> b at module level, b -> c inside a function, c -> a by a relative
  import: one circle; d imports into it from outside and is not part of it."""
  files = {'a': 'from pcdarts_jax import b\n',
           'b': 'def f():\n  import pcdarts_jax.c\n  return pcdarts_jax.c\n',
           'c': 'from . import a\n',
           'd': 'from pcdarts_jax.a import something\nimport os\n'}
  sources = {}
  for name, text in files.items():
    path = tmp_path / f'{name}.py'
    path.write_text(text)
    sources[f'pcdarts_jax.{name}'] = path
  assert import_cycles(sources) == [['pcdarts_jax.a', 'pcdarts_jax.b', 'pcdarts_jax.c']]
  del sources['pcdarts_jax.c']
  assert import_cycles(sources) == []
