"""Monitoring outputs: TensorBoard records, arch scalars, progress lines, pictures."""

import os
import re
import struct

import numpy as np
import pytest

from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.run import monitor
from pcdarts_jax.spaces.darts import space as darts_space
from pcdarts_jax.spaces.darts import visualize

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _arch(rng, edge_normalization=True):
  arch = {'alphas_normal': rng.normal(size=(14, 8)), 'alphas_reduce': rng.normal(size=(14, 8))}
  if edge_normalization:
    arch.update(betas_normal=rng.normal(size=14), betas_reduce=rng.normal(size=14))
  return arch


def test_summary_writer_round_trip(tmp_path):
  writer = monitor.SummaryWriter(str(tmp_path / 'tb'))
  writer.scalars(1, {'train/loss': 2.5, 'lr': 0.1})
  writer.scalars(2, {'train/loss': 1.25})
  png = tmp_path / 'x.png'
  visualize.arch_heatmap(_arch(np.random.default_rng(0)), genotypes.PRIMITIVES, 4, str(png))
  writer.image_png(2, 'arch/heatmap', str(png))
  writer.close()
  assert monitor.read_scalars(str(tmp_path / 'tb')) == {
      'train/loss': {1: 2.5, 2: 1.25}, 'lr': {1: pytest.approx(0.1)}}
  files = os.listdir(tmp_path / 'tb')
  assert len(files) == 1 and files[0].startswith('events.out.tfevents.')


def test_disabled_writer_writes_nothing(tmp_path):
  writer = monitor.SummaryWriter(str(tmp_path / 'tb'), enabled=False)
  writer.scalars(1, {'a': 1.0})
  writer.close()
  assert not (tmp_path / 'tb').exists()


def test_arch_scalars():
  rng = np.random.default_rng(1)
  arch = _arch(rng)
  arch['alphas_normal'][:] = 0.0  # uniform: entropy log(8)
  values = darts_space.edge_scalars(arch, genotypes.PRIMITIVES, 4)
  assert values['arch/normal/entropy'] == pytest.approx(np.log(8))
  assert values['arch/reduce/entropy'] < np.log(8)
  labels = visualize.edge_labels(4)
  for label in labels:
    total = sum(values[f'alpha_reduce/edge_{label}/{op}'] for op in genotypes.PRIMITIVES)
    assert total == pytest.approx(1.0)
  # Normalised betas sum to one over each node's incoming edges.
  for node, (start, end) in enumerate(genotypes.node_edge_ranges(4)):
    total = sum(values[f'beta_normal/edge_{labels[e]}'] for e in range(start, end))
    assert total == pytest.approx(1.0)
  without = darts_space.edge_scalars(_arch(rng, False), genotypes.PRIMITIVES, 4)
  assert not any(k.startswith('beta') for k in without)


def test_edge_labels_follow_the_supernet_edge_order():
  labels = visualize.edge_labels(4)
  assert labels == ['k-2->0', 'k-1->0', 'k-2->1', 'k-1->1', '0->1',
                    'k-2->2', 'k-1->2', '0->2', '1->2',
                    'k-2->3', 'k-1->3', '0->3', '1->3', '2->3']


def test_cell_graph_has_the_genotype_edges():
  g = visualize.cell_graph(genotypes.PCDARTS.normal, genotypes.PCDARTS.normal_concat)
  source = g.source
  found = re.findall(r'"?([\w{}\-]+)"?\s*->\s*"?([\w{}\-]+)"?\s*\[label=(\w+)', source)
  names = {0: 'c_{k-2}', 1: 'c_{k-1}'}
  expected = [(names.get(j, str(j - 2)), str(i // 2), op)
              for i, (op, j) in enumerate(genotypes.PCDARTS.normal)]
  assert sorted(found) == sorted(expected)
  concat = re.findall(r'"?(\d)"?\s*->\s*"c_\{k\}"', source)
  assert sorted(concat) == ['0', '1', '2', '3']


@pytest.mark.skipif(not visualize.have_dot(), reason='graphviz dot is installed by .ci/run')
def test_draw_genotype_writes_png_and_svg(tmp_path):
  paths = visualize.draw_genotype(genotypes.DARTS_V2, str(tmp_path / 'darts_v2'))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ['darts_v2_normal.gv', 'darts_v2_normal.png', 'darts_v2_normal.svg',
                   'darts_v2_reduce.gv', 'darts_v2_reduce.png', 'darts_v2_reduce.svg']
  with open(tmp_path / 'darts_v2_normal.png', 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  svg = (tmp_path / 'darts_v2_reduce.svg').read_text()
  assert 'max_pool_3x3' in svg and 'c_{k}' in svg


def test_heatmap_png(tmp_path):
  path = visualize.arch_heatmap(_arch(np.random.default_rng(2)), genotypes.PRIMITIVES, 4,
                                str(tmp_path / 'h.png'), title='epoch 3')
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == PNG_MAGIC
  width, height = struct.unpack('>II', head[16:24])
  assert width > 600 and height > 300


def test_progress_prints_plain_lines_when_not_interactive(capsys):
  progress = monitor.Progress(epoch=1, epochs=5, total_steps=7, batch_size=8, log_every=3,
                              interactive=False)
  for _ in range(7):
    progress.update({'loss': 1.5})
  progress.close()
  lines = capsys.readouterr().out.strip().splitlines()
  assert [l.split()[3] for l in lines] == ['3/7', '6/7']
  assert all(l.lstrip().startswith('epoch 2/5 step') and 'loss 1.5000' in l for l in lines)
