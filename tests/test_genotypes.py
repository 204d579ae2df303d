"""Genotypes: published cells, JSON I/O, and derivation from architecture values."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts.genotypes import Genotype

PRIMS = list(genotypes.PRIMITIVES)


def test_primitives_order():
  assert PRIMS == ['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
                   'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5']


def test_node_edge_ranges():
  assert genotypes.node_edge_ranges(4) == ((0, 2), (2, 5), (5, 9), (9, 14))
  assert genotypes.node_edge_ranges(2) == ((0, 2), (2, 5))


# ------------------------------------------------------------------ published cells


def test_published_genotypes():
  assert set(genotypes.PUBLISHED) == {'DARTS_V1', 'DARTS_V2', 'PCDARTS', 'PC_DARTS_image'}
  extra_ops = {'sep_conv_7x7', 'conv_7x1_1x7'}
  for name, g in genotypes.PUBLISHED.items():
    assert isinstance(g, Genotype), name
    assert len(g.normal) == 8 and len(g.reduce) == 8, name
    assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [2, 3, 4, 5], name
    for cell in (g.normal, g.reduce):
      for pos, (op, j) in enumerate(cell):
        assert op in set(PRIMS[1:]) | extra_ops, (name, op)
        assert 0 <= j <= pos // 2 + 1, (name, pos, j)  # node i reads states 0..i+1
  # Spot checks against the published genotypes (DARTS' and PC-DARTS' genotypes.py).
  assert genotypes.PCDARTS.normal == [
      ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0),
      ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1),
      ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)]
  assert genotypes.PCDARTS.reduce == [
      ('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1),
      ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3),
      ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)]
  assert genotypes.DARTS_V2.normal[-1] == ('dil_conv_3x3', 2)
  assert genotypes.DARTS_V1.reduce[-1] == ('avg_pool_3x3', 0)
  assert genotypes.PC_DARTS_image.normal[-1] == ('dil_conv_5x5', 4)
  assert genotypes.PC_DARTS_image.reduce[2] == ('dil_conv_5x5', 2)


@pytest.mark.parametrize('name', sorted(genotypes.PUBLISHED))
def test_json_round_trip(name):
  g = genotypes.PUBLISHED[name]
  text = genotypes.to_json(g)
  assert json.loads(text) == genotypes.to_dict(g)
  assert json.loads(text)['normal'][0] == [g.normal[0][0], g.normal[0][1]]
  back = genotypes.from_json(text)
  assert back == g
  assert isinstance(back, Genotype)
  assert all(isinstance(gene, tuple) for gene in back.normal + back.reduce)
  assert genotypes.from_dict(genotypes.to_dict(g)) == g
  other = genotypes.PUBLISHED['DARTS_V1' if name != 'DARTS_V1' else 'DARTS_V2']
  assert genotypes.from_json(genotypes.to_json(other)) != g


def test_from_dict_missing_field():
  d = genotypes.to_dict(genotypes.DARTS_V2)
  del d['reduce_concat']
  with pytest.raises(ValueError):
    genotypes.from_dict(d)


def test_load_genotype(tmp_path):
  assert genotypes.load_genotype('PCDARTS') == genotypes.PCDARTS
  assert genotypes.load_genotype('DARTS_V1') == genotypes.DARTS_V1
  custom = Genotype(normal=[('sep_conv_7x7', 0)] * 8, normal_concat=[2, 3, 4, 5],
                    reduce=[('conv_7x1_1x7', 1)] * 8, reduce_concat=[2, 3, 4, 5])
  path = tmp_path / 'genotype.json'
  path.write_text(genotypes.to_json(custom))
  assert genotypes.load_genotype(str(path)) == custom
  with pytest.raises(ValueError):
    genotypes.load_genotype('NOT_A_GENOTYPE')
  with pytest.raises(ValueError):
    genotypes.load_genotype(str(tmp_path / 'missing.json'))


# ------------------------------------------------------------------- derivation


def _alphas(entries):
  """(14, 8) zeros with alphas[edge, PRIMS.index(op)] = value for each entry."""
  a = np.zeros((14, 8), np.float32)
  for (edge, op), value in entries.items():
    a[edge, PRIMS.index(op)] = value
  return a


NORMAL = {
    # node 0: edges 0, 1
    (0, 'sep_conv_3x3'): 2.0, (1, 'skip_connect'): 3.0,
    # node 1: edges 2, 3, 4
    (2, 'max_pool_3x3'): 1.0, (3, 'dil_conv_3x3'): 4.0, (4, 'avg_pool_3x3'): 2.5,
    # node 2: edges 5..8; edge 5 is dominated by 'none', which must not count
    (5, 'none'): 9.0, (6, 'sep_conv_5x5'): 2.0, (7, 'dil_conv_5x5'): 3.0,
    (8, 'sep_conv_3x3'): 1.0,
    # node 3: edges 9..13
    (9, 'sep_conv_3x3'): 2.0, (10, 'max_pool_3x3'): 1.5, (11, 'avg_pool_3x3'): 0.5,
    (12, 'dil_conv_3x3'): 1.0, (13, 'skip_connect'): 5.0,
}
NORMAL_GENES = [('skip_connect', 1), ('sep_conv_3x3', 0),
                ('dil_conv_3x3', 1), ('avg_pool_3x3', 2),
                ('dil_conv_5x5', 2), ('sep_conv_5x5', 1),
                ('skip_connect', 4), ('sep_conv_3x3', 0)]

REDUCE = {
    # node 0: the op of largest weight per edge; edge 1 is the stronger one.
    (0, 'max_pool_3x3'): 3.0, (0, 'avg_pool_3x3'): 2.9,
    (1, 'max_pool_3x3'): 2.0, (1, 'skip_connect'): 4.0,
    # node 1: edges 2 and 4 have the same largest raw alpha (3), but edge 2's
    # softmax weight is lower (sep_conv_3x3 competes): ranked by softmax, 4 wins.
    # Edge 3 has the largest raw alpha of all, on 'none'.
    (2, 'sep_conv_3x3'): 1.0, (2, 'sep_conv_5x5'): 3.0,
    (3, 'none'): 5.0, (3, 'dil_conv_5x5'): 2.0,
    (4, 'avg_pool_3x3'): 3.0,
    # node 2: one strong edge, the other three tie (uniform rows): the lowest input
    # wins, and within a uniform row the first non-'none' op.
    (7, 'dil_conv_3x3'): 1.0,
    # node 3: two identical edges (inputs 1 and 3): lower input first.
    (10, 'sep_conv_3x3'): 2.0, (12, 'sep_conv_3x3'): 2.0,
}
REDUCE_GENES = [('skip_connect', 1), ('max_pool_3x3', 0),
                ('avg_pool_3x3', 2), ('sep_conv_5x5', 0),
                ('dil_conv_3x3', 2), ('max_pool_3x3', 0),
                ('sep_conv_3x3', 1), ('sep_conv_3x3', 3)]


def test_derive_hand_made():
  arch = {'alphas_normal': _alphas(NORMAL), 'alphas_reduce': _alphas(REDUCE)}
  g = genotypes.derive_genotype(arch)
  assert g.normal == NORMAL_GENES
  assert g.reduce == REDUCE_GENES
  assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [2, 3, 4, 5]
  # jax arrays work as well.
  g2 = genotypes.derive_genotype({k: jnp.asarray(v) for k, v in arch.items()})
  assert g2 == g


def test_derive_never_picks_none():
  rng = np.random.RandomState(0)
  arch = {k: rng.randn(14, 8).astype(np.float32) for k in ('alphas_normal', 'alphas_reduce')}
  for a in arch.values():
    a[:, 0] = 10.0  # 'none' is by far the largest everywhere
  g = genotypes.derive_genotype(arch)
  for cell, alphas in ((g.normal, arch['alphas_normal']), (g.reduce, arch['alphas_reduce'])):
    assert len(cell) == 8
    assert all(op != 'none' for op, _ in cell)
    for node, (start, _) in enumerate(genotypes.node_edge_ranges(4)):
      (op_a, j_a), (op_b, j_b) = cell[2 * node], cell[2 * node + 1]
      assert j_a != j_b and max(j_a, j_b) <= node + 1
      for op, j in ((op_a, j_a), (op_b, j_b)):  # best non-none op of that edge
        assert op == PRIMS[1 + int(np.argmax(alphas[start + j, 1:]))]


def test_betas_change_kept_edges():
  alphas_n = _alphas(NORMAL)
  base = {'alphas_normal': alphas_n, 'alphas_reduce': _alphas(REDUCE)}
  betas_n = np.zeros(14, np.float32)
  betas_n[2] = 3.0  # node 1, input 0: edge weight softmax([3, 0, 0])[0] ~ 0.91
  with_betas = dict(base, betas_normal=betas_n, betas_reduce=np.zeros(14, np.float32))
  g_plain = genotypes.derive_genotype(base)
  g_beta = genotypes.derive_genotype(with_betas)
  # Without betas node 1 keeps inputs 1 and 2; with them input 0 is first and 1 second
  # (0.28 * 0.91 > 0.89 * 0.045 > 0.64 * 0.045).
  assert g_plain.normal[2:4] == [('dil_conv_3x3', 1), ('avg_pool_3x3', 2)]
  assert g_beta.normal[2:4] == [('max_pool_3x3', 0), ('dil_conv_3x3', 1)]
  # Uniform betas within the other nodes do not change their choices.
  assert g_beta.normal[:2] + g_beta.normal[4:] == NORMAL_GENES[:2] + NORMAL_GENES[4:]
  assert g_beta.reduce == g_plain.reduce == REDUCE_GENES
  # The ranking weights are softmax(alphas) times the per-node betas softmax.
  w = genotypes.cell_weights(alphas_n, betas_n)
  sm = np.exp(alphas_n[2]) / np.exp(alphas_n[2]).sum()
  np.testing.assert_allclose(w[2], sm * np.exp(3) / (np.exp(3) + 2), rtol=1e-6)


def test_ties_are_stable():
  zeros = np.zeros((14, 8), np.float32)
  g = genotypes.derive_genotype({'alphas_normal': zeros, 'alphas_reduce': zeros})
  assert g.normal == [('max_pool_3x3', 0), ('max_pool_3x3', 1)] * 4
  assert g.reduce == g.normal
  # Op tie within an edge: the lower op index wins (sep_conv_3x3 before sep_conv_5x5);
  # edge tie among inputs 1..3 of node 2 (input 0 weaker): inputs 1 and 2 in order.
  a = _alphas({(0, 'sep_conv_5x5'): 1.0, (0, 'sep_conv_3x3'): 1.0,
               (6, 'skip_connect'): 2.0, (7, 'skip_connect'): 2.0,
               (8, 'skip_connect'): 2.0, (5, 'skip_connect'): 1.0})
  g = genotypes.derive_genotype({'alphas_normal': a, 'alphas_reduce': zeros})
  assert g.normal[0] == ('sep_conv_3x3', 0)
  assert g.normal[4:6] == [('skip_connect', 1), ('skip_connect', 2)]


def test_derive_wrong_shape():
  good = np.zeros((14, 8), np.float32)
  for bad in (np.zeros((14, 7)), np.zeros((13, 8)), np.zeros((14 * 8,))):
    with pytest.raises(ValueError):
      genotypes.derive_genotype({'alphas_normal': bad, 'alphas_reduce': good})
    with pytest.raises(ValueError):
      genotypes.derive_genotype({'alphas_normal': good, 'alphas_reduce': bad})


def test_derive_custom_primitives_and_steps():
  prims = ('max_pool_3x3', 'sep_conv_3x3', 'skip_connect')  # no 'none'
  a = np.zeros((5, 3), np.float32)  # steps 2: 2 + 3 edges
  a[:, 2] = 1.0
  a[4, 0] = 3.0  # node 1, input 2: strongest, max_pool
  g = genotypes.derive_genotype({'alphas_normal': a, 'alphas_reduce': a},
                                primitives=prims, steps=2)
  assert g.normal == [('skip_connect', 0), ('skip_connect', 1),
                      ('max_pool_3x3', 2), ('skip_connect', 0)]
  assert g.normal_concat == [2, 3]
  with pytest.raises(ValueError):
    genotypes.derive_genotype({'alphas_normal': a, 'alphas_reduce': a}, steps=2)
