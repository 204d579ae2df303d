"""What users rely on in README.md and docs/: the bound on the README, links and paths that
resolve, the test command CI runs, and command-line overrides that name real config fields.

Reads text and imports config files only (ml_collections, no JAX)."""

import functools
import glob
import importlib
import itertools
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
DOCS = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
PAGES = [README] + DOCS
README_MAX_LINES = 300

FENCE = re.compile(r'^```[^\n]*\n(.*?)^```', re.M | re.S)
INLINE_CODE = re.compile(r'`([^`\n]+)`')
LINK = re.compile(r'\]\(([^)\s]+)\)')
CONFIG_FILE = re.compile(r'configs/[\w{},*]+\.py')
CONFIG_FLAG = re.compile(r'--config=(configs/\w+\.py)')
OVERRIDE = re.compile(r'--config\.([a-z_][\w.]*)=')  # SECTION.FIELD: a placeholder
MODULE_RUN = re.compile(r'python -m (launch\.[a-z_]+)')  # launch.NAME: a placeholder
# Quoted error messages show mistakes (a misspelled field, a missing file) on purpose.
ERROR_MESSAGE = re.compile(r'`error:[^`\n]*`')
PACKAGE_PATH = re.compile(r'(?<![\w/.~-])(?:pcdarts_jax|tests|launch)/[\w/.]*\w')
SHELL_VARIABLE = re.compile(r'^(\w+)="([^"]*)"$')


def _read(path: str) -> str:
  """A page's text without the error messages it quotes."""
  with open(path, encoding='utf-8') as f:
    return ERROR_MESSAGE.sub('`...`', f.read())


def _name(path: str) -> str:
  return os.path.relpath(path, REPO)


def _expand_braces(pattern: str):
  """`a_{x,y}_b` -> [`a_x_b`, `a_y_b`], as the shell expands it."""
  parts = re.split(r'\{([^}]*)\}', pattern)
  choices = [[p] if i % 2 == 0 else p.split(',') for i, p in enumerate(parts)]
  return [''.join(c) for c in itertools.product(*choices)]


def _slug(heading: str) -> str:
  """GitHub's anchor of a markdown heading."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def _anchors(path: str):
  text = FENCE.sub('', _read(path))
  return {_slug(m.group(1)) for m in re.finditer(r'^#+\s+(.*)$', text, re.M)}


def _commands(text: str):
  """Shell commands of the fenced blocks (continuation lines joined, `NAME="..."`
  variables substituted), then every inline code span."""
  for block in FENCE.findall(text):
    variables = {}
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split(' #')[0].strip()
      if not line or line.startswith('#'):
        continue
      assigned = SHELL_VARIABLE.match(line)
      if assigned:
        variables[assigned.group(1)] = assigned.group(2)
        continue
      for name, value in variables.items():
        line = line.replace(f'${name}', value)
      yield ' '.join(line.split())
  yield from INLINE_CODE.findall(FENCE.sub('', text))


@functools.lru_cache(maxsize=None)
def _config(path: str):
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  module = os.path.splitext(path)[0].replace('/', '.')
  return importlib.import_module(module).get_config()


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def _all_configs():
  """Every config file of configs/ (configs/common.py holds shared blocks, no config)."""
  return {_name(p): _config(_name(p)) for p in sorted(glob.glob(os.path.join(REPO, 'configs',
                                                                             '*.py')))
          if os.path.basename(p) not in ('__init__.py', 'common.py')}


def test_readme_is_a_manual_within_its_bound():
  lines = _read(README).splitlines()
  assert len(lines) <= README_MAX_LINES, (
      f'README.md has {len(lines)} lines; at most {README_MAX_LINES}: move detail to docs/.')
  assert '../shared' not in _read(README)


def test_every_doc_page_is_linked_from_the_readme():
  linked = {os.path.normpath(os.path.join(REPO, target.split('#')[0]))
            for target in LINK.findall(_read(README))}
  missing = [_name(page) for page in DOCS if page not in linked]
  assert not missing, f'docs pages not linked from README.md: {missing}'


@pytest.mark.parametrize('page', PAGES, ids=_name)
def test_links_resolve(page):
  """Relative links point at existing files, and their #anchors at existing headings."""
  broken = []
  for target in LINK.findall(_read(page)):
    if re.match(r'\w+://', target) or target.startswith('mailto:'):
      continue
    path, _, anchor = target.partition('#')
    resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(resolved):
      broken.append(target)
    elif anchor and resolved.endswith('.md') and anchor not in _anchors(resolved):
      broken.append(target)
  assert not broken, f'{_name(page)}: broken links {broken}'


def test_readme_commands_are_what_ci_runs():
  """The README's test command is exactly .ci/run's, after the same install."""
  ci = _read(os.path.join(REPO, '.ci', 'run')).splitlines()
  ci_tests = [line.strip() for line in ci if line.strip().startswith('python -m pytest')]
  assert len(ci_tests) == 1, ci_tests
  readme = [line.strip() for block in FENCE.findall(_read(README)) for line in block.splitlines()]
  assert f'.venv/bin/{ci_tests[0]}' in readme, (
      f'README.md must show the test command of .ci/run: .venv/bin/{ci_tests[0]}')
  assert any(line.strip().endswith('pip install --quiet -r requirements.txt') for line in ci)
  main = [line for line in readme if line.startswith('python3 -m venv .venv')]
  assert len(main) == 1 and '.venv/bin/pip install -r requirements.txt' in main[0]
  assert main[0].endswith(
      '.venv/bin/python -m launch.search --config=configs/digits_search.py --workdir=/tmp/run')


@pytest.mark.parametrize('page', PAGES, ids=_name)
def test_named_files_exist(page):
  """Config files (brace lists and globs expanded), launchers and package paths."""
  text = _read(page)
  missing = []
  for pattern in set(CONFIG_FILE.findall(text)):
    for name in _expand_braces(pattern):
      if not glob.glob(os.path.join(REPO, name)):
        missing.append(name)
  for module in set(MODULE_RUN.findall(text)):
    if not os.path.exists(os.path.join(REPO, *module.split('.')) + '.py'):
      missing.append(module)
  for path in set(PACKAGE_PATH.findall(text)):
    if not os.path.exists(os.path.join(REPO, path)):
      missing.append(path)
  assert not missing, f'{_name(page)} names files that do not exist: {sorted(missing)}'


@pytest.mark.parametrize('page', PAGES, ids=_name)
def test_overrides_name_real_fields(page):
  """`--config.a.b=...` in a command with `--config=FILE` is a field of FILE; one shown on
  its own is a field of at least one config."""
  wrong = []
  for command in _commands(_read(page)):
    overrides = OVERRIDE.findall(command)
    if not overrides:
      continue
    files = CONFIG_FLAG.findall(command)
    configs = {f: _config(f) for f in files} if files else _all_configs()
    for field in overrides:
      holders = [f for f, config in configs.items() if _has_field(config, field)]
      if files and len(holders) != len(files):
        wrong.append(f'{field} (not in {sorted(set(files) - set(holders))})')
      elif not holders:
        wrong.append(f'{field} (in no config)')
  assert not wrong, f'{_name(page)}: overrides of unknown fields: {wrong}'


def test_the_checks_catch_mistakes():
  """The helpers above fail on what they exist to catch."""
  assert not _has_field(_config('configs/digits_search.py'), 'search.epoch')
  assert _has_field(_config('configs/digits_search.py'), 'data.data_dir')  # a placeholder
  assert _expand_braces('configs/{a,b}_x.py') == ['configs/a_x.py', 'configs/b_x.py']
  assert _slug('`checkpoint`, `monitor`') == 'checkpoint-monitor'
  assert ERROR_MESSAGE.sub('', 'a `error: --config.search.epochz=3` b') == 'a  b'
  commands = list(_commands('```bash\nL="python -m launch.search --config=configs/x.py"\n'
                            '$L --workdir=/tmp/a \\\n    --config.search.epochs=2\n```\n'))
  assert commands == ['python -m launch.search --config=configs/x.py --workdir=/tmp/a '
                      '--config.search.epochs=2']
