"""Training a recurrent genotype from scratch (DARTS evaluation, Liu et al. ICLR 2019,
github.com/quark0/darts rnn/train.py) on the library's epoch driver, and the
evaluation of a trained run.

Each step is one window of the train stream (length N(bptt or bptt / 2, 5), at
least 5, at most bptt + max_seq_len_delta): NLL + TAR, the gradient clipped to
0.25, SGD with lr * seq_len / bptt. After each epoch the validation loss (batch
10) decides, as train.py does: a new best is saved (best_checkpoint/: the weights
evaluated, under ASGD the averaged ones); under SGD, once the loss is worse than
the best of all but the last `nonmono` epochs, the run switches to ASGD (torch's
averaged SGD, t0 = 0, lambd = 0) from the next epoch on. The end: the best
weights' test perplexity (batch 1).

The state's optimizer part always holds ASGD's (step, eta, ax), reset at the
switch, so every checkpoint has one layout; the switch epoch, the SGD epochs'
validation losses and the best epoch are in the checkpoints' meta, and window
lengths follow from (seed, epoch, window): a resumed run repeats the
uninterrupted one bit for bit. Steps are pmapped as in the search (rows split
over the devices, gradients averaged, dropout masks of the whole batch).
"""

import json
import os
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.rnn import lm
from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import driver
from pcdarts_jax.run import parallel
from pcdarts_jax.run import rundir
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import genotypes
from pcdarts_jax.spaces.rnn import model as model_lib
from pcdarts_jax.spaces.rnn import space
from pcdarts_jax.spaces.rnn import steps

LOG_NAME = rundir.TRAIN_LOG
BEST_DIR = 'best_checkpoint'  # the weights of the best validation epoch
RESUMABLE_CHANGES = ('checkpoint.', 'monitor.', 'train.log_every_steps', 'data.data_dir')
EXTENDABLE = ('train.epochs',)
ConfigError = lm.ConfigError


def resolve_genotype(name_or_path: str) -> genotypes.Genotype:
  """A published recurrent genotype's name (DARTS_V1, DARTS_V2, DARTS), a
  genotype.json, or a search workdir holding one."""
  if not isinstance(name_or_path, str) or not name_or_path:
    raise ValueError(f'genotype={name_or_path!r}: give a name of {tuple(genotypes.PUBLISHED)}, '
                     f'a genotype.json or an RNN search workdir.')
  if name_or_path in genotypes.PUBLISHED:
    return genotypes.by_name(name_or_path)
  path = os.path.expanduser(name_or_path)
  if os.path.isdir(path):
    path = os.path.join(path, 'genotype.json')
  if not os.path.isfile(path):
    raise ValueError(f'genotype={name_or_path!r} is neither one of '
                     f'{tuple(genotypes.PUBLISHED)} nor a genotype.json (or a search workdir '
                     f'holding one).')
  try:
    with open(path) as f:
      return genotypes.from_dict(json.load(f))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'genotype={name_or_path!r}: {path} is not a recurrent genotype ({e}).')


def validate_train_config(config, num_devices: int = 1):
  """Raises ConfigError (one line naming the field and the allowed values)."""
  lm.validate_space(config)
  try:
    resolve_genotype(config.genotype)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  corpus_lib.validate_data(config.data)
  model_lib.validate_model(config.model, search=False)
  t = config.train
  lm.validate_windows(t, 'train', num_devices)
  config_fields.require_bool(t.asgd, 'train.asgd')
  lm.require(config_fields.is_int(t.nonmono) and t.nonmono >= 1,
             f'train.nonmono={t.nonmono!r} must be an integer >= 1.')
  driver.validate_run(config)


def make_step(model, config, optimizer: str, axis_name=None):
  """step(state, x, y, length, fresh, rng, lr) -> (state, metric sums): one window of
  train.py under SGD ('sgd') or ASGD ('asgd'); `fresh` zeroes the hidden state first."""
  t = config.train
  core_step = steps.make_train_step(model, alpha=t.alpha, beta=t.beta, clip=t.grad_clip,
                                    weight_decay=t.weight_decay, optimizer=optimizer,
                                    axis_name=axis_name)

  def step(state: lm.LMState, x, y, length, fresh, rng, lr):
    core = lm.zero_hidden_where(state.core, fresh)
    core, metrics = core_step(core, (x, y), rng, lr, length)
    return (state.replace(step=state.step + 1, core=core),
            lm.step_sums(metrics, x.shape[0], length, axis_name=axis_name))

  return step


STEP_IN_AXES = (0, 0, 0, None, None, None, None)


def init_state(model, config, rng) -> lm.LMState:
  """A fresh model; the ASGD state (reset at the switch) is there from the start."""
  core = steps.init_train_state(model, rng, config.train.batch_size)
  core['opt'] = steps.asgd_init(core['params'], config.train.learning_rate)
  return lm.LMState(step=jnp.zeros((), jnp.int32), core=core)


def eval_params(core: Dict, averaged: bool):
  """The weights train.py evaluates: ASGD's average `ax` after the switch."""
  return core['opt']['ax'] if averaged else core['params']


def _check_workdir(paths: rundir.Workdir, config, genotype):
  rundir.check_resumable(paths, config, RESUMABLE_CHANGES, 'training run', EXTENDABLE)
  if os.path.exists(paths.genotype) and rundir.has_checkpoints(paths.checkpoints):
    try:
      trained = resolve_genotype(paths.genotype)
    except ValueError as e:
      raise ConfigError(f'--workdir={paths.root!r}: its {paths.genotype} does not load ({e}); '
                        f'use a new workdir.') from None
    if trained != genotype:
      raise ConfigError(f'--workdir={paths.root!r} trains the genotype in {paths.genotype}, '
                        f'but genotype={config.genotype!r} now gives a different one; use a '
                        f'new workdir.')


def _records(paths: rundir.Workdir):
  if not os.path.exists(paths.jsonl):
    return []
  with open(paths.jsonl) as f:
    return [json.loads(line) for line in f if line.strip()]


def best_params(best: checkpoint.Checkpoints, like):
  """(params, meta) of the best validation epoch, or None when none was saved."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), like)
  restored = best.restore_latest({'params': shapes})
  if restored is None:
    return None
  _, state, meta = restored
  return state['params'], meta


def train(config, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) the genotype of `config` on its corpus; returns the summary.

  Writes, under `workdir` (process 0): config.json, genotype.json,
  train_log.jsonl (one line per epoch: train and valid loss and perplexity, the
  optimizer), checkpoints/, best_checkpoint/ (the best validation epoch's
  weights), summary.json (the best weights' test perplexity), tensorboard/ and
  plots/ (the cell). Raises driver.Interrupted on SIGTERM/SIGINT (after
  checkpointing) and driver.NonFiniteError on a non-finite loss."""
  num_devices = parallel.device_count()
  validate_train_config(config, num_devices)
  genotype = resolve_genotype(config.genotype)
  paths = rundir.Workdir(workdir, LOG_NAME)
  _check_workdir(paths, config, genotype)
  corpus = lm.load_corpus(config.data)
  t = config.train
  data = lm.streams(corpus, t, 'train')
  train_stream = parallel.host_slice(data['train'])
  n_train = data['train'].shape[1]
  valid, test = lm.eval_split(data['valid'], t.bptt), lm.eval_split(data['test'], t.bptt)
  main = parallel.is_main_process()
  longest = lm.longest_window(t)

  model = model_lib.build_model(corpus.ntokens, config.model, genotype)
  init_rng, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = init_state(model, config, init_rng)
  n_params = sum(x.size for x in jax.tree.leaves(state.core['params']))

  def windows(epoch: int):
    return lm.epoch_windows(config.seed, epoch, n_train, t.bptt, t.max_seq_len_delta,
                            t.seq_len_jitter)

  if main:
    os.makedirs(paths.root, exist_ok=True)
  checkpoints = checkpoint.Checkpoints(paths.checkpoints, config.checkpoint.keep)
  best = checkpoint.Checkpoints(os.path.join(paths.root, BEST_DIR), 1)
  # What the epochs decide, saved with every checkpoint.
  history = {'val_losses': [], 'asgd_from': None, 'best': None}
  meta = {'sums': None, 'resumed_from': []}
  total_steps = sum(len(windows(e)) for e in range(t.epochs))
  resumed = driver.resume(checkpoints, jax.eval_shape(lambda: state), paths, 'training run',
                          section='train', epochs=t.epochs, total_steps=total_steps,
                          outputs=(paths.summary,),
                          finishing='the run had finished; evaluating and writing its summary')
  if resumed is not None and resumed.complete:
    best.close()
    with open(paths.summary) as f:
      return json.load(f)
  if resumed is not None:
    state, meta = resumed.state, resumed.meta
    history = {k: meta.get(k, v) for k, v in history.items()}
  elif main and config.monitor.pictures:
    space.draw(genotype, os.path.join(paths.plots, 'cell'))

  print(f'RNN training of {config.genotype} ({space.genotype_str(genotype)}) on '
        f'{config.data.name} ({corpus.ntokens} words; {corpus.train.size:,} train tokens): '
        f'{n_params:,} parameters, ~{len(windows(0))} windows/epoch of bptt {t.bptt}, '
        f'{t.epochs} epochs; {num_devices} device(s), {t.batch_size // num_devices} rows per '
        f'device', flush=True)
  step_model = model_lib.build_model(corpus.ntokens, config.model, genotype, parallel.AXIS)
  p_steps = {name: lm.CompiledByShape(
      parallel.pmap_step(make_step(step_model, config, name, parallel.AXIS), STEP_IN_AXES),
      f'the {name.upper()} train step') for name in ('sgd', 'asgd')}
  p_switch = parallel.pmap_step(
      lambda st: st.replace(core={**st.core, 'opt': steps.asgd_init(st.core['params'],
                                                                    t.learning_rate)}),
      in_axes=(0,))
  evaluate = lm.make_evaluator(model, 'the evaluation pass')
  epoch_windows, clock = (), {}

  def averaging(epoch: int) -> bool:
    return history['asgd_from'] is not None and epoch >= history['asgd_from']

  def begin_epoch(epoch, first, state):
    nonlocal epoch_windows
    epoch_windows = windows(epoch)
    clock.update(epoch=epoch, tokens=0, start=time.time())
    if averaging(epoch) and epoch == history['asgd_from'] and first == 0:
      state = p_switch(state)  # train.py creates torch.optim.ASGD here.
      print(f'switching to ASGD from epoch {epoch + 1} (validation loss above the best of '
            f'all but the last {t.nonmono} epochs)', flush=True)
    return state

  def run_step(state, step):
    epoch = clock['epoch']
    k = step - phase.first_step(epoch)
    i, seq_len = epoch_windows[k]
    x, y, length = lm.window(train_stream, i, seq_len, t.seq_len_bucket, longest)
    clock['tokens'] += length * t.batch_size
    lr = steps.scaled_lr(t.learning_rate, seq_len, t.bptt)
    return p_steps['asgd' if averaging(epoch) else 'sgd'](
        (x.shape[1],), state, parallel.shard(x), parallel.shard(y), np.int32(length),
        np.bool_(k == 0), jax.random.fold_in(step_key, step), np.float32(lr))

  def end_epoch(epoch, state, sums) -> driver.Epoch:
    tokens_per_second = clock['tokens'] / max(time.time() - clock['start'], 1e-9)
    averaged = averaging(epoch)
    params = eval_params(jax.device_get(parallel.unreplicate(state.core)), averaged)
    valid_loss = evaluate(params, None, {}, valid)
    valid_record = lm.evaluation(valid_loss)
    improved = history['best'] is None or valid_loss < history['best']['loss']
    if improved:
      history['best'] = {'epoch': epoch + 1, 'loss': valid_loss}
      if epoch + 1 not in best.steps():  # A redone epoch after a kill: the same weights.
        best.save(epoch + 1, {'params': params}, {'epoch': epoch + 1, 'valid': valid_record})
    switched = False
    if t.asgd and not averaged:
      history['val_losses'].append(valid_loss)
      if steps.should_switch_to_asgd(history['val_losses'], t.nonmono):
        history['asgd_from'], switched = epoch + 1, True
    train_record = lm.loss_record(sums['loss_sum'], sums['count'])
    optimizer = 'asgd' if averaged else 'sgd'
    record = {'lr': t.learning_rate, 'optimizer': optimizer, 'train': train_record,
              'valid': valid_record, 'best': improved, 'switch_to_asgd': switched,
              'grad_norm': sums['grad_norm_sum'] / sums['steps'],
              'tokens_per_second': tokens_per_second, 'windows': len(epoch_windows)}
    scalars = {'lr': t.learning_rate, 'asgd': float(averaged), 'grad_norm': record['grad_norm'],
               'tokens_per_second': tokens_per_second}
    for name, values in (('train', train_record), ('valid', valid_record)):
      scalars.update({f'{name}/{k}': v for k, v in values.items()})
    text = (f"{optimizer} train_ppl {train_record['perplexity']:.2f} valid_ppl "
            f"{valid_record['perplexity']:.2f}{' *' if improved else ''}"
            f"{' (switching to ASGD)' if switched else ''}")
    return driver.Epoch(record, scalars, text)

  write_genotype = lambda: rundir.write_atomic(
      paths.genotype, json.dumps(space.genotype_to_dict(genotype)) + '\n')
  with driver.session(config, paths, write_genotype) as run:
    phase = driver.Phase(
        'train', paths.jsonl, checkpoints, t.epochs, len(windows(0)), t.batch_size,
        t.log_every_steps, run_step, end_epoch, begin_epoch=begin_epoch,
        save_meta=lambda: dict(history),
        advice='Lower train.learning_rate or check the data.',
        epoch_steps=lambda epoch: len(windows(epoch)))
    state, meta = driver.run_phase(run, phase, parallel.replicate(state), meta)
  checkpoints.close()

  host = jax.device_get(parallel.unreplicate(state.core))
  final = eval_params(host, averaging(t.epochs - 1))
  kept = best_params(best, final)
  best.close()
  params, best_meta = kept if kept is not None else (final, None)
  result = {'valid': lm.evaluation(evaluate(params, None, {}, valid)),
            'test': lm.evaluation(evaluate(params, None, {}, test))}
  records = _records(paths)
  summary = {
      'genotype_name': config.genotype,
      'genotype': space.genotype_to_dict(genotype),
      'parameters': n_params,
      **result,
      'best_epoch': best_meta['epoch'] if best_meta else None,
      'asgd_from_epoch': None if history['asgd_from'] is None else history['asgd_from'] + 1,
      'epochs': len(records),
      'steps': int(jax.device_get(parallel.unreplicate(state.step))),
      **driver.clock(meta),
      'compiled_window_shapes': sum(p.shapes for p in p_steps.values()),
      'resumed_from_steps': meta['resumed_from'],
  }
  if main:
    rundir.write_atomic(paths.summary, json.dumps(summary, indent=2) + '\n')
  print(f"training done: test perplexity {result['test']['perplexity']:.2f} (valid "
        f"{result['valid']['perplexity']:.2f}) of the weights of epoch "
        f"{summary['best_epoch']}; {driver.clock_text(summary)}; summary in "
        f'{paths.summary}', flush=True)
  return summary


def evaluate_checkpoint(config, workdir: str) -> Dict[str, Any]:
  """Validation and test perplexity of a training workdir: its best validation
  epoch's weights (best_checkpoint/), else those of its newest checkpoint (the
  averaged ones after an ASGD switch). The architecture is the run's genotype.json."""
  paths = rundir.Workdir(workdir, LOG_NAME)
  if not os.path.exists(paths.jsonl) or not os.path.exists(paths.genotype):
    raise ConfigError(f'--workdir={workdir!r} holds no RNN training run ({LOG_NAME} and '
                      f'genotype.json); give the workdir of launch.train with an RNN config.')
  try:
    genotype = resolve_genotype(paths.genotype)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  corpus_lib.validate_data(config.data)
  model_lib.validate_model(config.model, search=False)
  corpus = lm.load_corpus(config.data)
  t = config.train
  data = lm.streams(corpus, t, 'train')
  model = model_lib.build_model(corpus.ntokens, config.model, genotype)
  shapes = jax.eval_shape(lambda: init_state(model, config, jax.random.PRNGKey(0)))
  best = checkpoint.Checkpoints(os.path.join(paths.root, BEST_DIR), 1, read_only=True)
  try:
    kept = best_params(best, shapes.core['params'])
    if kept is not None:
      params, best_meta = kept
      source = f"best validation epoch {best_meta['epoch']} ({BEST_DIR}/)"
    else:
      checkpoints = checkpoint.Checkpoints(paths.checkpoints, 1, read_only=True)
      restored = checkpoints.restore_latest(shapes)
      checkpoints.close()
      if restored is None:
        raise ConfigError(f'--workdir={workdir!r} holds no checkpoint that restores.')
      # No epoch has ended yet (each end saves a best), so no ASGD average either.
      step, state, _ = restored
      params = state.core['params']
      source = f'checkpoint {step} in {paths.checkpoints}'
  except checkpoint.CheckpointMismatch as e:
    raise ConfigError(f'{e}; evaluate with the config the run was trained with (its '
                      f'{paths.config}).') from None
  finally:
    best.close()
  evaluate = lm.make_evaluator(model, 'the evaluation pass')
  out = {}
  for name in ('valid', 'test'):
    loss = evaluate(params, None, {}, lm.eval_split(data[name], t.bptt))
    out.update({f'{name}_loss': loss, f'{name}_perplexity': steps.perplexity(loss)})
  return {**out, 'test_tokens': int(corpus.test.size), 'genotype': space.genotype_str(genotype),
          'source': source}
