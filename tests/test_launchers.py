"""The launchers' command lines: --help, --show_config, and the one-line errors
(exit status 2, nothing written) that come before any data is loaded or any
step compiled; the compile announcements and progress estimates of a run."""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import common
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.run import monitor
from pcdarts_jax.spaces.darts import visualize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ('search', 'train', 'evaluate', 'benchmark', 'visualize', 'sgnas_generate',
             'torch_reference')


def _run(launcher, *args, timeout=120):
  return subprocess.run([sys.executable, '-m', f'launch.{launcher}', *args], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu'),
                        capture_output=True, text=True, timeout=timeout)


def _one_line_error(result) -> str:
  """The run's only stderr line, after checking it exited 2 with nothing else."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  return lines[0]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize('launcher,config,override,parent,key,hint', [
    ('search', 'digits_search', 'search.epochz=3', 'config.search', 'epochz', 'epochs'),
    ('search', 'digits_search', 'serch.epochs=3', 'config', 'serch', 'search'),
    ('train', 'digits_train', 'train.learning_rat=0.1', 'config.train', 'learning_rat',
     'learning_rate'),
])
def test_a_misspelled_field_is_one_line_with_the_hint(tmp_path, launcher, config, override,
                                                      parent, key, hint):
  workdir = tmp_path / 'run'
  line = _one_line_error(_run(launcher, f'--config=configs/{config}.py',
                              f'--workdir={workdir}', f'--config.{override}'))
  assert f'--config.{override}' in line and f'{parent} has no field {key!r}' in line
  assert f'Did you mean "{hint}"' in line
  assert not workdir.exists()


def test_bad_flags_and_values_are_one_line(tmp_path):
  workdir = tmp_path / 'run'
  config = '--config=configs/digits_search.py'
  assert "'workdirr'" in _one_line_error(_run('search', config, '--workdirr=x'))
  line = _one_line_error(_run('search', config, f'--workdir={workdir}',
                              '--config.search.epochs=abc'))
  assert '--config.search.epochs=abc' in line and 'abc' in line
  assert 'unexpected arguments' in _one_line_error(_run('search', config,
                                                         f'--workdir={workdir}', 'extra'))
  assert '--workdir is required' in _one_line_error(_run('search', config))
  assert '--config is required' in _one_line_error(_run('train', f'--workdir={workdir}'))
  assert not workdir.exists()


def test_a_missing_config_file_is_one_line(tmp_path):
  line = _one_line_error(_run('search', '--config=configs/no_such_config.py',
                              f'--workdir={tmp_path / "run"}', '--config.search.epochs=1'))
  assert '--config=configs/no_such_config.py' in line and 'No such file' in line
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('launcher,config,needs,fits,not_fits', [
    ('search', 'digits_train', 'a search config', 'digits_search', 'digits_train'),
    ('train', 'digits_search', 'a training config', 'digits_train', 'digits_search'),
    ('evaluate', 'digits_search', 'a training config', 'digits_train', 'digits_search'),
    ('sgnas_generate', 'digits_search', 'an SGNAS search config', 'sgnas_digits_search',
     'nb201_digits_search'),
])
def test_a_config_of_the_wrong_kind_names_the_configs_that_fit(tmp_path, launcher, config,
                                                              needs, fits, not_fits):
  args = {'search': [f'--workdir={tmp_path / "run"}'], 'train': [f'--workdir={tmp_path / "run"}'],
          'evaluate': [f'--workdir={tmp_path}'],
          'sgnas_generate': [f'--workdir={tmp_path}', '--target_flops=1']}[launcher]
  line = _one_line_error(_run(launcher, f'--config=configs/{config}.py', *args))
  assert f'launch.{launcher} needs {needs}' in line
  assert f'--config=configs/{config}.py is a' in line
  fitting = line.split('Configs that fit')[1]
  assert fits in fitting.replace(',', ' ').split() and not_fits not in fitting
  assert not (tmp_path / 'run').exists()


def test_a_workdir_that_is_a_file_is_refused_before_loading(tmp_path):
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('mine')
  for workdir, says in ((a_file, 'is a file'), (a_file / 'run', 'cannot be created')):
    start = time.time()
    line = _one_line_error(_run('search', '--config=configs/digits_search.py',
                                f'--workdir={workdir}'))
    assert says in line and str(workdir) in line
    assert time.time() - start < 60  # No data loaded, nothing compiled.
  assert a_file.read_text() == 'mine'


def test_an_unwritable_workdir_is_refused(tmp_path, monkeypatch, capsys):
  # os.access decides; root may write anywhere, so the answer is given here.
  monkeypatch.setattr(common.os, 'access', lambda path, mode: False)
  for workdir, says in ((tmp_path, 'is not writable'),
                        (tmp_path / 'new' / 'run', 'cannot be created')):
    with pytest.raises(SystemExit) as exit_:
      common.check_output_workdir(str(workdir))
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
  monkeypatch.undo()
  common.check_output_workdir(str(tmp_path / 'new' / 'run'))  # Usable: no exit.
  assert not (tmp_path / 'new').exists()  # The check creates nothing.


def test_evaluate_checks_its_inputs_before_loading(tmp_path):
  config = '--config=configs/digits_train.py'
  line = _one_line_error(_run('evaluate', config, f'--torch_checkpoint={tmp_path}/missing.pt'))
  assert 'missing.pt' in line and 'no such file' in line and 'torch' not in line.split(':', 2)[-1]
  # A checkpoint's weights belong to the genotype it was trained with.
  line = _one_line_error(_run('evaluate', config, f'--workdir={tmp_path}',
                              '--config.genotype=DARTS_V2'))
  assert '--config.genotype' in line and '--workdir' in line
  line = _one_line_error(_run('evaluate', config, f'--workdir={tmp_path}'))
  assert 'holds no checkpoint' in line
  assert 'exactly one of' in _one_line_error(_run('evaluate', config))


# ------------------------------------------------------------------ --help, --show_config


@pytest.mark.parametrize('launcher', LAUNCHERS)
def test_help_lists_the_flags_and_the_configs_that_fit(launcher):
  result = _run(launcher, '--help')
  assert result.returncode == 0, result.stderr[-2000:]
  text = result.stdout
  own_flags = {'search': ['config', 'workdir', 'show_config', 'compilation_cache'],
               'train': ['config', 'workdir', 'show_config'],
               'evaluate': ['config', 'workdir', 'torch_checkpoint', 'show_config'],
               'benchmark': ['config', 'measure', 'batch_size', 'sweep', 'show_config'],
               'visualize': ['out', 'name'],
               'sgnas_generate': ['config', 'workdir', 'target_flops', 'output', 'show_config'],
               'torch_reference': ['batch_size', 'steps', 'device']}[launcher]
  for name in own_flags:
    assert f'  --{name}: ' in text, name
  listed = {line.split()[0] for line in text.splitlines()
            if line.startswith('  ') and line.split()[0].endswith('.py')}
  names = dict(common.config_files())
  fits = {'search': lambda n: n.endswith('_search'), 'train': lambda n: n.endswith('_train'),
          'evaluate': lambda n: n.endswith('_train'),
          'benchmark': lambda n: n.endswith(('_search', '_train')),
          'sgnas_generate': lambda n: n.startswith('sgnas_') and n.endswith('_search')
          }.get(launcher, lambda n: False)
  assert listed == {f'{n}.py' for n in names if fits(n)}
  for name in listed:  # Each with its docstring's summary.
    assert f'{name}' in text and names[name[:-3]][:40] in text
  if listed:
    assert '--show_config' in text and '--config.' in text


def test_config_summaries_come_from_the_docstrings():
  summaries = dict(common.config_files())
  assert summaries['digits_search'].startswith('The embedded default: a real PC-DARTS search')
  assert all(summaries.values()), [n for n, s in summaries.items() if not s]


def test_show_config_prints_the_config_with_overrides(tmp_path):
  result = _run('search', '--config=configs/digits_search.py', '--show_config',
                '--config.search.epochs=3')
  assert result.returncode == 0, result.stderr[-2000:]
  assert '\n  epochs: 3\n' in result.stdout and 'partial_channels: 2' in result.stdout
  line = _one_line_error(_run('train', '--show_config'))
  assert '--show_config needs --config' in line


# ------------------------------------------------------------------ visualize


def test_visualize_names_pictures_after_the_run_and_reports_dot_once(tmp_path):
  for run, genotype in (('run_a', genotypes.DARTS_V1), ('run_b', genotypes.PCDARTS)):
    (tmp_path / run).mkdir()
    (tmp_path / run / 'genotype.json').write_text(json.dumps(genotypes.to_dict(genotype)))
  out = tmp_path / 'cells'
  results = [_run('visualize', str(tmp_path / 'run_a' / 'genotype.json'), f'--out={out}'),
             _run('visualize', str(tmp_path / 'run_b'), f'--out={out}'),
             _run('visualize', 'PCDARTS', f'--out={out}', '--name=published')]
  for result in results:
    assert result.returncode == (0 if visualize.have_dot() else 1), result.stderr
    # Without dot: one line saying so (not a warning and an error).
    assert result.stderr.count('dot') == (0 if visualize.have_dot() else 1), result.stderr
  for prefix in ('run_a', 'run_b', 'published'):
    for kind in ('normal', 'reduce'):
      assert (out / f'{prefix}_{kind}.gv').exists(), sorted(os.listdir(out))
  assert 'label=sep_conv_3x3' in (out / 'run_a_normal.gv').read_text()


def test_heatmap_labels_show_the_distance_from_uniform():
  weights = np.array([[0.129, 0.121] + [0.125] * 6,
                      [0.5, 0.25, 0.25, 0, 0, 0, 0, 0]])  # The second edge has 3 ops left.
  percent = visualize.percent_from_uniform(weights)
  np.testing.assert_allclose(percent[0, :3], [3.2, -3.2, 0.0], atol=1e-9)
  np.testing.assert_allclose(percent[1, :4], [50.0, -25.0, -25.0, 0.0], atol=1e-9)
  labels = visualize.percent_labels(percent)
  assert list(labels[0, :3]) == ['+3.2%', '-3.2%', '+0.0%']
  assert list(labels[1, :3]) == ['+50%', '-25%', '-25%']


# ------------------------------------------------------------------ compiling, progress


def test_first_call_announces_compiling_with_its_time(capsys):
  calls = []

  @jax.jit
  def step(x):
    return x * 2

  announced = monitor.announce_compile(lambda x: calls.append(1) or step(x), 'the test step')
  assert float(announced(jnp.float32(1))) == 2.0
  assert float(announced(jnp.float32(2))) == 4.0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == 'compiling the test step...'
  assert out[1].startswith('compiled the test step in ') and out[1].endswith('s')
  assert len(out) == 2 and len(calls) == 2


def test_progress_rate_and_time_left_leave_the_compiling_step_out(monkeypatch, capsys):
  now = [1000.0]
  monkeypatch.setattr(monitor.time, 'time', lambda: now[0])
  monkeypatch.setattr(monitor.time, 'perf_counter', lambda: now[0])

  calls = []

  def compiling_step():  # Its first call compiles: 74 s.
    now[0] += 74.0 if not calls else 0.0
    calls.append(1)
    return jnp.zeros(())

  step = monitor.announce_compile(compiling_step, 'the search step')
  progress = monitor.Progress(epoch=0, epochs=1, total_steps=62, batch_size=8, log_every=2,
                              interactive=False)
  assert progress.images_per_second() is None
  step()
  progress.update()
  assert progress.images_per_second() is None  # No compiled step yet.
  for _ in range(3):
    step()
    now[0] += 0.5  # Compiled steps: 2 per second.
    progress.update()
  assert progress.images_per_second() == pytest.approx(16.0)
  assert progress.seconds_left() == pytest.approx((62 - 4) / 2.0)
  lines = capsys.readouterr().out.splitlines()
  assert lines[:2] == ['compiling the search step...', 'compiled the search step in 74.0s']
  assert lines[2].split()[3:] == ['2/62', 'img/s', '16.0', 'left', '0:30']
  assert lines[3].split()[3:] == ['4/62', 'img/s', '16.0', 'left', '0:29']
  # The next epoch's steps are all compiled: every one counts.
  progress = monitor.Progress(epoch=1, epochs=2, total_steps=62, batch_size=8, log_every=0,
                              interactive=False)
  now[0] += 1.0
  progress.update()
  assert progress.images_per_second() == pytest.approx(8.0)


def test_progress_bar_starts_after_the_first_step():
  progress = monitor.Progress(epoch=0, epochs=2, total_steps=10, batch_size=8, log_every=0,
                              interactive=True)
  assert progress._bar is None  # pylint: disable=protected-access
  progress.update()
  bar = progress._bar  # pylint: disable=protected-access
  assert bar is not None and bar.n == 1 and bar.initial == 1
  progress.update()
  assert bar.n == 2
  progress.close()
