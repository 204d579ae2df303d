"""launch/visualize.py: both cells of a published or searched genotype, as graphviz
source, PNG and SVG."""

import json
import os
import re
import subprocess
import sys

import pytest

from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import visualize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'launch.visualize', *args], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                        text=True, timeout=120)


def _graph(path):
  """(intermediate nodes, labelled edges as (source, target, op)) of a .gv file."""
  with open(path) as f:
    source = f.read()
  nodes = set(re.findall(r'^\s*(\d+) \[', source, re.M))
  edges = re.findall(r'^\s*("?[^\s"]+"?) -> (\d+) \[label=(\w+)', source, re.M)
  return nodes, [(s.strip('"'), t, op) for s, t, op in edges]


def _expected_edges(cell):
  names = {0: 'c_{k-2}', 1: 'c_{k-1}'}
  return sorted((names.get(j, str(j - 2)), str(i // 2), op) for i, (op, j) in enumerate(cell))


@pytest.mark.skipif(not visualize.have_dot(), reason='graphviz `dot` is not installed')
def test_published_and_json_genotypes_are_drawn(tmp_path):
  out = tmp_path / 'cells'
  run = _run('PC_DARTS_image', f'--out={out}')
  assert run.returncode == 0, run.stderr
  searched = genotypes.DARTS_V1
  path = tmp_path / 'genotype.json'
  path.write_text(json.dumps(genotypes.to_dict(searched)))
  run = _run(str(path), f'--out={out}')
  assert run.returncode == 0, run.stderr
  # A run's genotype.json is named after its workdir (here the test's tmp_path).
  for name, genotype in (('PC_DARTS_image', genotypes.PC_DARTS_image),
                         (tmp_path.name, searched)):
    for kind in ('normal', 'reduce'):
      prefix = out / f'{name}_{kind}'
      for ext in ('png', 'svg', 'gv'):
        assert os.path.getsize(f'{prefix}.{ext}') > 0
      with open(f'{prefix}.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
      with open(f'{prefix}.svg') as f:
        assert '<svg' in f.read()
      nodes, edges = _graph(f'{prefix}.gv')
      assert nodes == {'0', '1', '2', '3'}
      assert len(edges) == 8
      assert sorted(edges) == _expected_edges(getattr(genotype, kind))


def test_unknown_genotype_is_an_error(tmp_path):
  run = _run('NOT_A_GENOTYPE', f'--out={tmp_path}')
  assert run.returncode == 2
  assert 'neither a published genotype' in run.stderr
  assert not os.listdir(tmp_path)
