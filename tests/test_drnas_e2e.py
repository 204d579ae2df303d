"""DrNAS from the launcher: two progressive-learning stages on the embedded data,
in the DARTS space and in the NAS-Bench-201 space."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search(workdir, config, *overrides):
  cmd = [sys.executable, '-m', 'launch.search', f'--config={config}', f'--workdir={workdir}',
         '--compilation_cache=', '--config.monitor.pictures=False',
         '--config.search.epochs=2', "--config.search.stage_epochs=(1,1)",
         '--config.search.arch_start_epoch=0', *overrides]
  # Nearly all of each run is compiling its four programs: LLVM's -O1 compiles them
  # in about 12% less CPU time and still runs the 22 steps fast (-O0 would not).
  flags = ' '.join(filter(None, [os.environ.get('XLA_FLAGS', ''),
                                 '--xla_backend_optimization_level=1']))
  result = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=flags),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  with open(os.path.join(workdir, 'genotypes.jsonl')) as f:
    records = [json.loads(line) for line in f]
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return result.stdout, records, summary


def test_drnas_darts_space_two_stages(tmp_path):
  # Two nodes per cell (5 edges, not 14): stage 2's cells compute each edge's
  # kept ops separately (no scan), and compile in a third of the time. Two
  # cells (both reductions; the normal alphas are still searched) for CI time.
  out, records, summary = _search(str(tmp_path / 'run'), 'configs/drnas_digits_search.py',
                                  '--config.model.layers=2', '--config.model.steps=2',
                                  '--config.model.multiplier=2')
  assert 'stage 2: ops pruned to 4 per edge, partial channels k=2' in out
  assert [r['epoch'] for r in records] == [1, 2]  # As on the console.
  assert all(r['arch'] and np.isfinite(r['arch']['loss']) for r in records)
  # Stage 2 keeps 4 of the 7 ops per edge; the final cells use kept ops only.
  genotype = summary['genotype']
  ops = {op for op, _ in genotype['normal'] + genotype['reduce']}
  assert 'none' not in ops and len(genotype['normal']) == len(genotype['reduce']) == 4
  assert genotype['normal_concat'] == [2, 3]
  arch = np.load(tmp_path / 'run' / 'arch.npz')
  assert set(arch.files) == {'alphas_normal', 'alphas_reduce'}  # No edge normalization.


# CI time (~55 s): the DARTS-space run above goes through the same progressive
# stages from the launcher; the NB-201 space's pruned stages are tested in
# test_nb201 (masks, masked ops neither built nor computed) and its search steps
# in test_seeds. -m slow runs it.
@pytest.mark.slow
def test_drnas_nb201_space_two_stages(tmp_path):
  out, records, summary = _search(
      str(tmp_path / 'run'), 'configs/nb201_digits_search.py',
      '--config.model.relaxation=dirichlet', "--config.search.stage_partial_channels=(2,1)",
      "--config.search.stage_ops=(5,3)")
  assert 'stage 2: ops pruned to 3 per edge, partial channels k=1' in out
  assert len(records) == 2 and records[1]['valid']['accuracy'] > 0.1
  assert summary['genotype_str'].count('~') == 6
  assert summary['genotype_str'].startswith('|') and '+' in summary['genotype_str']
