"""The run directory: which saved config binds a resumed run, what a resume may
change (epochs may grow), and stop signals. Nothing here compiles a model."""

import json
import os
import signal
import time

import pytest

from configs import digits_search
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.search import search as loop
from pcdarts_jax.run import rundir


def _workdir(tmp_path, config, checkpoint=True):
  """A workdir as a search leaves it: config.json, and checkpoint 33 if `checkpoint`."""
  paths = rundir.Workdir(str(tmp_path / 'run'), loop.LOG_NAME)
  os.makedirs(paths.checkpoints)
  if checkpoint:
    os.makedirs(os.path.join(paths.checkpoints, '33'))
  with open(paths.config, 'w') as f:
    json.dump(rundir.config_json(config), f)
  return paths


def _tiny():
  config = digits_search.get_config()
  config.model.init_channels, config.model.layers = 4, 2
  config.search.epochs, config.search.arch_start_epoch = 3, 1
  config.data.mean = (0.5,)
  return config


def _check(paths, config):
  rundir.check_resumable(paths, config, loop.RESUMABLE_CHANGES, 'search', loop.EXTENDABLE)


def test_a_resume_takes_the_saved_config_and_the_given_fields(tmp_path, capsys):
  paths = _workdir(tmp_path, _tiny())
  command_line = digits_search.get_config()  # The file, with one override given.
  command_line.search.epochs = 5
  config = rundir.resumed_config(command_line, paths.root, {'search.epochs': 5})
  assert (config.model.init_channels, config.model.layers) == (4, 2)
  assert (config.search.epochs, config.search.arch_start_epoch) == (5, 1)
  assert config.data.mean == (0.5,)  # A tuple again, as the config declares it.
  assert command_line.model.init_channels == 8  # The caller's config is left as it was.
  note = capsys.readouterr().out
  assert ("with its config.json (4 field(s) differ from --config: data.mean, "
          "model.init_channels, model.layers, search.arch_start_epoch)") in note
  _check(paths, config)  # Raised epochs resume the run ...
  assert 'search.epochs raised from 3 to 5' in capsys.readouterr().out
  config.search.epochs = 2  # ... lowered ones do not.
  with pytest.raises(config_validation.ConfigError,
                     match=r'search\.epochs=2 is lower than the 3 of the search'):
    _check(paths, config)
  config.search.epochs = 5
  config.search.learning_rate = 0.05  # Neither does another setting.
  with pytest.raises(config_validation.ConfigError,
                     match=r'search\.learning_rate: 0\.1 -> 0\.05'):
    _check(paths, config)


def test_a_run_older_than_a_config_field_resumes_with_a_note(tmp_path, capsys):
  """A config.json written before a field existed: the field takes the config's
  value (a note names it); a field the run did record still binds."""
  old = _tiny()
  with old.unlocked():
    del old.search['num_seeds']
    del old.search['widen']
  paths = _workdir(tmp_path, old)
  config = _tiny()
  _check(paths, config)
  assert ("predates the config field(s) search.num_seeds=1, search.widen='net2wider'"
          in capsys.readouterr().out)
  config.search.learning_rate = 0.05
  with pytest.raises(config_validation.ConfigError, match=r'search\.learning_rate: 0\.1'):
    _check(paths, config)


def test_a_config_json_without_a_checkpoint_binds_nothing(tmp_path):
  paths = _workdir(tmp_path, _tiny(), checkpoint=False)  # Stopped before checkpoint 1.
  other = digits_search.get_config()
  other.search.learning_rate = 0.05
  assert rundir.resumed_config(other, paths.root, {'search.learning_rate': 0.05}) is other
  _check(paths, other)  # Accepted: the new run rewrites config.json with its first checkpoint.
  with open(paths.jsonl, 'w') as f:  # A search log without a checkpoint is still refused.
    f.write('{"epoch": 1}\n')
  with pytest.raises(config_validation.ConfigError, match='no checkpoint to resume'):
    _check(paths, other)


def _wait_for(condition, timeout=10.0):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline
    time.sleep(0.01)


def test_stop_signals_exit_at_once_before_the_first_step_and_on_a_second_sigint(capsys):
  previous = signal.getsignal(signal.SIGINT)
  exits = []
  with rundir.StopSignals(exit_now=exits.append) as stop:
    os.kill(os.getpid(), signal.SIGINT)  # While compiling: nothing to save.
    _wait_for(lambda: exits)
    assert exits == [130] and stop.received is None
    stop.stepped()
    os.kill(os.getpid(), signal.SIGTERM)  # After a step: checkpoint, then stop.
    _wait_for(lambda: stop.received is not None)
    assert stop.received == signal.SIGTERM and exits == [130]
    os.kill(os.getpid(), signal.SIGINT)  # Impatient: at once.
    _wait_for(lambda: len(exits) == 2)
    assert exits == [130, 130]
  assert signal.getsignal(signal.SIGINT) is previous
  lines = capsys.readouterr().out.strip().splitlines()
  assert [line for line in lines if line] == [
      'received SIGINT before the first step, while compiling: nothing to save; exiting now '
      '(status 130).',
      'received SIGTERM: stopping after this step and writing a checkpoint (SIGINT again '
      'exits at once)...',
      'received SIGINT again: the steps since the last checkpoint are lost; exiting now '
      '(status 130).']
