"""Flags, command-line checks and exit handling shared by the launchers.

Every launcher starts through `app_run`: `--help` lists its flags and the
configs of configs/ that fit it (exit 0); `--show_config` prints the config with
every override applied (exit 0); a misspelled flag or config field, a missing
config file or a config of the wrong kind is one line on stderr, exit status 2,
before anything is loaded or written.

Exit status of the run launchers (search, train): 0 done, or stopped by
SIGTERM/SIGINT after writing a checkpoint (run the same command to resume);
1 a step went non-finite; 2 a config, data or workdir error (nothing was written);
130 / 143 stopped by SIGINT / SIGTERM at once: before the first step (while
compiling, nothing to save) or by a second SIGINT.

This module loads JAX only inside `run`: launch.torch_reference uses the flag
handling and must not load JAX (it would count in its measured memory).
"""

import ast
import glob
import os
import re
import sys
import textwrap
from typing import Any, Callable, List, NamedTuple, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs')
_HELP_ARGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')


class ConfigKind(NamedTuple):
  """The configs a launcher takes: `name` for messages (with its article), a
  test of a config file's name (to list the files of configs/ that fit) and of a
  loaded config."""
  name: str
  fits_file: Callable[[str], bool]
  fits: Callable[[Any], bool]


SEARCH = ConfigKind('a search config', lambda name: name.endswith('_search'),
                    lambda config: 'search' in config)
TRAIN = ConfigKind('a training config', lambda name: name.endswith('_train'),
                   lambda config: 'train' in config)
SGNAS_SEARCH = ConfigKind(
    "an SGNAS search config (model.space='sgnas')",
    lambda name: name.startswith('sgnas_') and name.endswith('_search'),
    lambda config: 'search' in config and config.model.get('space') == 'sgnas')


def fail(message: str):
  """The one-line error of a bad command line: stderr, exit status 2."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def define_config_flag(what: str):
  """--config (a config file, `--config.FIELD=VALUE` overrides) and --show_config."""
  flags.DEFINE_bool('show_config', False,
                    'Print the config, every --config.FIELD override applied, and exit.')
  return config_flags.DEFINE_config_file('config', None, f'{what} config file.',
                                         lock_config=True)


def define_run_flags(what: str):
  """--config, --show_config, --workdir, --compilation_cache and the multi-host
  flags; returns the (config, workdir) flag holders."""
  config = define_config_flag(what)
  workdir = flags.DEFINE_string(
      'workdir', None, f'Directory for the {what.lower()} outputs (created if missing; an '
      'existing one is resumed).')
  flags.DEFINE_string(
      'compilation_cache',
      os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
                   'pcdarts_jax', 'xla'),
      'Persistent XLA compilation cache: a resumed or repeated run skips compiling '
      '(minutes on CPU); on a GPU also XLA\'s per-fusion autotuning results, in its '
      'xla_gpu_per_fusion_autotune_cache_dir/ (a changed program retunes only its new '
      'fusions). Empty string: off.')
  flags.DEFINE_string(
      'coordinator_address', None,
      'Multi-host: host:port of process 0 for jax.distributed.initialize. Every process '
      'runs the same command with its own --process_id; only process 0 writes files '
      '(the workdir must be on a file system all processes see, for checkpoints).')
  flags.DEFINE_integer('num_processes', None, 'Multi-host: process count.')
  flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0..N-1.')
  return config, workdir


def config_files() -> List[Tuple[str, str]]:
  """(name, first paragraph of its docstring, as one line) of every config
  module in configs/; read, not imported: listing them runs none of their code."""
  found = []
  for path in sorted(glob.glob(os.path.join(CONFIGS_DIR, '*.py'))):
    name = os.path.basename(path)[:-3]
    if name.startswith('_'):
      continue
    with open(path) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ''
    found.append((name, ' '.join(doc.strip().split('\n\n')[0].split())))
  return found


def _configs_dir_name() -> str:
  relative = os.path.relpath(CONFIGS_DIR)
  return CONFIGS_DIR if relative.startswith('..') else relative


def _fitting_names(kinds: Sequence[ConfigKind]) -> List[str]:
  return [name for name, _ in config_files() if any(k.fits_file(name) for k in kinds)]


def _launcher_flags():
  """The flags this launcher defines (its own module's and this module's), in
  definition order; absl's own (logging, debugging) are left to --helpfull."""
  by_module = flags.FLAGS.flags_by_module_dict()
  own = []
  for module in (__name__, sys.argv[0], '__main__'):
    own += [f for f in by_module.get(module, []) if f not in own]
  return own


def help_text(doc: str, kinds: Sequence[ConfigKind], required: Sequence[str] = ()) -> str:
  """The launcher's docstring, its flags, and the configs that fit it."""
  lines = [doc.strip(), '', 'Flags:']
  for flag in _launcher_flags():
    default = ('' if flag.default is None or flag.name == 'config' or
               isinstance(flag.default, bool) and not flag.default or '(default' in flag.help
               else f' (default: {flag.default_as_str})')
    if flag.name in required:
      default = ' (required)'
    lines.append(textwrap.fill(f'--{flag.name}: {flag.help}{default}', width=100,
                               initial_indent='  ', subsequent_indent='      '))
  lines.append('  --helpfull: every flag, absl\'s logging and debugging ones too.')
  if kinds:
    names = set(_fitting_names(kinds))
    width = max((len(n) for n in names), default=0) + 5
    lines += ['', f'Configs in {_configs_dir_name()}/ for this launcher '
                  f'(--config={_configs_dir_name()}/NAME.py):']
    lines += [f'  {name + ".py":{width}s}{first_line}' for name, first_line in config_files()
              if name in names] or ['  (none found)']
    lines += ['', "A config's fields: --show_config prints them, with their values after the "
                  'overrides, and exits. Override any field with --config.FIELD=VALUE, e.g. '
                  f'--config.{"search" if SEARCH in kinds else "train"}.epochs=3.']
  return '\n'.join(lines)


def _unquote(text: str) -> str:
  """ml_collections nests a KeyError's repr in an AttributeError's: peel the quotes."""
  for _ in range(3):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
    if not isinstance(value, str):
      break
    text = value
  return text


def _override_error(error: Exception, argv: Sequence[str]) -> str:
  """One line for ml_collections' error about a `--config.a.b=...` override of a
  field the config lacks (it names only the missing key, and maybe a 'Did you
  mean'); None when no override names that key (an error of the config's code)."""
  text = _unquote(str(error))
  first, _, hint = text.partition('\n')
  match = re.fullmatch(r"""['"]?(\w+)['"]?""", first.strip())
  if not match:
    return None
  key = match.group(1)
  for arg in argv:
    if not arg.startswith(('--config.', '-config.')):
      continue
    path = arg.lstrip('-')[len('config.'):].split('=')[0].split('.')
    if key in path:
      parent = '.'.join(['config'] + path[:path.index(key)])
      return (f'{arg}: {parent} has no field {key!r}.' +
              (f' {hint.strip()}' if hint.strip() else '') +
              ' (--show_config lists the fields.)')
  return None


def _flag_error(error: Exception) -> str:
  """absl's message in one line: a multi-line one (a config file that failed to
  load, with its traceback) as its first and last lines."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  text = lines[0] if len(lines) < 2 else f'{lines[0]} {lines[-1]}'
  if isinstance(error, flags.UnrecognizedFlagError):
    text += ' (--help lists the flags.)'
  return text


def parse_flags(argv: List[str], doc: str, kinds: Sequence[ConfigKind] = (),
                required: Sequence[str] = ()) -> List[str]:
  """absl's flag parsing with this package's conventions (the module docstring);
  returns the positional arguments, argv[0] first."""
  options = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  if any(arg in _HELP_ARGS for arg in options):
    print(flags.FLAGS.get_help() if '--helpfull' in options
          else help_text(doc, kinds, required))
    sys.exit(0)
  f = flags.FLAGS
  try:
    rest = f(argv)
    if 'config' in f and f['config'].present:
      'seed' in f.config  # pylint: disable=pointless-statement  (raises a load error)
  except flags.Error as e:
    fail(_flag_error(e))
  except (AttributeError, KeyError) as e:  # A --config.FIELD override of a missing field.
    message = _override_error(e, argv)
    if message is None:
      raise
    fail(message)
  except OSError as e:  # The config file is missing or unreadable.
    errno = re.search(r'\[Errno \d+\].*', str(e))
    detail = errno.group(0) if errno else str(e).strip().splitlines()[-1].strip()
    fail(f'--config={_config_arg(argv)}: {detail} (--help lists the configs).')
  if 'show_config' in f and f.show_config:
    if not f['config'].present:
      fail('--show_config needs --config=FILE (--help lists the configs).')
    print(f.config)
    sys.exit(0)
  for name in required:
    if f[name].value is None:
      what = ' (--help lists the configs)' if name == 'config' else ''
      fail(f'--{name} is required: {f[name].help[0].lower()}{f[name].help[1:]}{what}')
  if kinds and f['config'].present:
    check_config_kind(f.config, kinds, _config_path())
  return rest


def _config_path() -> str:
  return config_flags.get_config_filename(flags.FLAGS['config'])


def _config_arg(argv: Sequence[str]) -> str:
  """The --config value as given (the flag holds none when its file failed to load)."""
  for i, arg in enumerate(argv):
    name, equals, value = arg.lstrip('-').partition('=')
    if name == 'config' and arg.startswith('-'):
      return value if equals else (argv[i + 1] if i + 1 < len(argv) else '')
  return ''


def _launcher_name() -> str:
  return 'launch.' + os.path.splitext(os.path.basename(sys.argv[0]))[0]


def check_config_kind(config, kinds: Sequence[ConfigKind], source: str):
  """One line when `config` is not one of `kinds`: what it is, and the configs
  of configs/ that fit."""
  if any(kind.fits(config) for kind in kinds):
    return
  is_kind = next((k.name for k in (SGNAS_SEARCH, SEARCH, TRAIN) if k.fits(config)),
                 'neither a search config nor a training config')
  wanted = ' or '.join(k.name for k in kinds)
  fitting = ', '.join(_fitting_names(kinds)) or 'none'
  fail(f'{_launcher_name()} needs {wanted}; --config={source} is {is_kind}. '
       f'Configs that fit, in {_configs_dir_name()}/: {fitting}.')


def no_arguments(argv: Sequence[str]):
  if len(argv) > 1:
    fail(f'unexpected arguments {list(argv[1:])}: every setting is a --flag '
         f'(--help lists them).')


def check_output_workdir(path: str):
  """One line, before any data is loaded, when `path` cannot hold a run's
  outputs: a file, or a directory (or the nearest existing parent of a new
  one) this process may not write. Nothing is created here."""
  if os.path.exists(path):
    if not os.path.isdir(path):
      fail(f'--workdir={path!r} is a file; give a directory (it is created if missing).')
    if not os.access(path, os.W_OK | os.X_OK):
      fail(f'--workdir={path!r} is not writable by this user.')
    return
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    fail(f'--workdir={path!r} cannot be created: {parent!r} is a file.')
  if not os.access(parent, os.W_OK | os.X_OK):
    fail(f'--workdir={path!r} cannot be created: {parent!r} is not writable by this user.')


def app_run(main: Callable, doc: str, kinds: Sequence[ConfigKind] = (),
            required: Sequence[str] = ()):
  """absl.app.run(main) with `parse_flags`: `kinds` the configs the launcher
  takes, `required` the flags it needs (checked after --help and --show_config)."""
  app.run(main, flags_parser=lambda argv: parse_flags(argv, doc, kinds, required))


def run_config(workdir: str):
  """The config a run launcher runs: --config with its --config.FIELD overrides.
  A workdir holding a run to resume gives that run's saved config.json instead,
  with this command line's overrides on top (a resume needs none retyped; it may
  raise the epochs). A new search shortened below its file's arch warm-up keeps
  the warm-up's share (config_validation.fit_arch_warmup). Call inside `run`."""
  # pylint: disable=g-import-not-at-top  (JAX only inside `run`)
  from pcdarts_jax.search import validation as config_validation
  from pcdarts_jax.run import rundir
  flag = flags.FLAGS['config']
  given = config_flags.get_override_values(flag)
  config = rundir.resumed_config(flag.value, workdir, given)
  if config is flag.value and 'search' in config:  # A new search.
    file_config = flag.parser.parse(config_flags.get_config_filename(flag))
    config = config_validation.fit_arch_warmup(config, file_config, given)
  return config


# The XLA caches JAX keeps under the persistent cache's directory (a GPU's
# autotuning results per fusion; JAX picks process 0 to write them).
XLA_CACHES = 'xla_gpu_per_fusion_autotune_cache_dir'


def use_compilation_cache(directory: str):
  """The persistent compilation cache in `directory`, for programs that took
  >= 1 s to compile, and the XLA caches of XLA_CACHES under it (CPU compiles
  ignore them). Each setting's JAX environment variable, when set, wins
  (JAX_COMPILATION_CACHE_DIR, ...). Call before the first compile."""
  import jax  # pylint: disable=g-import-not-at-top  (JAX only inside `run`)
  for name, value in (('jax_compilation_cache_dir', directory),
                      ('jax_persistent_cache_min_compile_time_secs', 1.0),
                      ('jax_persistent_cache_enable_xla_caches', XLA_CACHES)):
    if not os.environ.get(name.upper()):
      jax.config.update(name, value)


def run(job: Callable[[], object]):
  """Sets up logging, the compilation cache and jax.distributed, runs `job` and
  maps its errors to the exit statuses above."""
  # pylint: disable=g-import-not-at-top  (JAX only here: see the module docstring)
  from pcdarts_jax.search import validation as config_validation
  from pcdarts_jax.data import datasets as data
  from pcdarts_jax.run import driver
  from pcdarts_jax.run import parallel
  f = flags.FLAGS
  if not f['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if f.compilation_cache:
    use_compilation_cache(f.compilation_cache)
  try:
    parallel.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    job()
  except (config_validation.ConfigError, data.DataError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except driver.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except driver.Interrupted as e:
    print(str(e), flush=True)
    sys.exit(0)
  except KeyboardInterrupt:  # SIGINT outside the step loop (loading data, writing outputs).
    print('\ninterrupted by SIGINT; run the same command to resume from the newest '
          'checkpoint, if one was written.', flush=True)
    sys.exit(130)
