"""The DARTS recurrent cell search (Liu et al. ICLR 2019, github.com/quark0/darts
rnn/train_search.py) on the library's epoch driver.

Each step is one window of the train stream (length bptt w.p. 0.95, else bptt / 2)
and one window of length bptt of the arch stream (the valid split with the train
batch's rows, at column i mod (N_valid - 1)): the architecture step on the arch
window (first or second order, Adam), then the weight step on the train window
(SGD, lr * seq_len / bptt, clip 0.25, TAR); both carry their hidden states from
window to window and start each epoch from zeros. Each epoch ends with the
validation perplexity (batch 10) and the derived genotype.

The step is pmapped over the local devices: the train and arch windows' rows are
split over them, gradients averaged, BatchNorm statistics and dropout masks those
of the whole batch (N devices compute what one device computes with the batch).
A checkpoint holds the whole state (weights, arch, Adam, BatchNorm statistics,
both hidden states, the step); window lengths follow from (seed, epoch, window),
so a resumed run repeats the uninterrupted one bit for bit.
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
from pcdarts_jax.run import driver
from pcdarts_jax.run import parallel
from pcdarts_jax.run import rundir
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import model as model_lib
from pcdarts_jax.spaces.rnn import space
from pcdarts_jax.spaces.rnn import steps

LOG_NAME = rundir.SEARCH_LOG
# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ('checkpoint.', 'monitor.', 'search.log_every_steps', 'data.data_dir')
EXTENDABLE = ('search.epochs',)  # A resumed search may raise them.
ConfigError = lm.ConfigError


def validate_search_config(config, num_devices: int = 1):
  """Raises ConfigError (one line naming the field and the allowed values)."""
  lm.validate_space(config)
  corpus_lib.validate_data(config.data)
  model_lib.validate_model(config.model)
  s = config.search
  lm.validate_windows(s, 'search', num_devices)
  lm.require(s.architect in steps.ARCHITECTS,
             f'search.architect={s.architect!r} is not one of {steps.ARCHITECTS}.')
  lm.require(isinstance(s.arch_learning_rate, (int, float)) and s.arch_learning_rate > 0,
             f'search.arch_learning_rate={s.arch_learning_rate!r} must be a number > 0.')
  lm.require(isinstance(s.arch_weight_decay, (int, float)) and s.arch_weight_decay >= 0,
             f'search.arch_weight_decay={s.arch_weight_decay!r} must be a number >= 0.')
  for field in ('arch_beta1', 'arch_beta2'):
    lm.require(isinstance(s[field], (int, float)) and 0 <= s[field] < 1,
               f'search.{field}={s[field]!r} must be a number in [0, 1).')
  driver.validate_run(config)


def arch_optimizer(config):
  s = config.search
  return steps.arch_optimizer(s.arch_learning_rate, s.arch_weight_decay, s.arch_beta1,
                              s.arch_beta2)


def make_step(model, config, arch_opt, axis_name=None):
  """step(state, train_x, train_y, arch_x, arch_y, train_length, arch_length, fresh,
  rng, lr) -> (state, metric sums): one bilevel step of train_search.py on padded
  windows (lengths: their real steps); `fresh` zeroes the hidden states first (an
  epoch's first window). Under `axis_name` the windows are this device's rows."""
  s = config.search
  core_step = steps.make_search_step(
      model, architect=s.architect, alpha=s.alpha, beta=s.beta, clip=s.grad_clip,
      weight_decay=s.weight_decay, arch_opt=arch_opt, axis_name=axis_name)

  def step(state: lm.LMState, train_x, train_y, arch_x, arch_y, train_length, arch_length,
           fresh, rng, lr):
    core = lm.zero_hidden_where(state.core, fresh)
    core, metrics = core_step(core, (train_x, train_y), (arch_x, arch_y), rng, lr,
                              train_length, arch_length)
    sums = lm.step_sums(metrics, train_x.shape[0], train_length, arch_x.shape[0], arch_length,
                        axis_name)
    return state.replace(step=state.step + 1, core=core), sums

  return step


STEP_IN_AXES = (0, 0, 0, 0, 0, None, None, None, None, None)


def arch_numpy(core) -> Dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in jax.device_get(core['arch']).items()}


def _epoch_pictures(paths: rundir.Workdir, epoch: int, arch_values, genotype, writer):
  """The arch heat map and the cell of this epoch under plots/, and in TensorBoard."""
  prefix = os.path.join(paths.plots, f'epoch_{epoch + 1:03d}')
  writer.image_png(epoch + 1, 'arch/heatmap', space.heatmap(
      arch_values, None, prefix + '_arch.png', title=f'epoch {epoch + 1}'))
  for path in space.draw(genotype, prefix + '_cell'):
    if path.endswith('.png'):
      writer.image_png(epoch + 1, 'cells/recurrent', path)


def _records(paths: rundir.Workdir):
  if not os.path.exists(paths.jsonl):
    return []
  with open(paths.jsonl) as f:
    return [json.loads(line) for line in f if line.strip()]


def _summary(paths: rundir.Workdir, genotype, state, meta, n_params: int,
             shapes: int) -> Dict[str, Any]:
  records = _records(paths)
  best = min(records, key=lambda r: r['valid']['loss']) if records else None
  last = records[-1] if records else None
  return {
      'genotype': space.genotype_to_dict(genotype),
      'genotype_str': space.genotype_str(genotype),
      'best': best and {k: best[k] for k in ('epoch', 'valid', 'train', 'arch', 'genotype')},
      'last': last and {k: last[k] for k in ('epoch', 'step', 'lr', 'train', 'arch', 'valid')},
      'epochs': len(records),
      'steps': int(state.step),
      **driver.clock(meta),
      'supernet_weights': n_params,
      'compiled_window_shapes': shapes,
      'resumed_from_steps': meta['resumed_from'],
      'checkpoint': meta['checkpoint'],
  }


def search(config, workdir: str):
  """Runs (or resumes) the RNN search of `config`; returns the final genotype.

  Writes, under `workdir` (process 0): genotypes.jsonl (one line per epoch: train,
  arch and valid loss and perplexity, the genotype), genotype.json, arch.npz
  (`alphas`), summary.json, config.json, checkpoints/, tensorboard/ and plots/.
  Raises driver.Interrupted on SIGTERM/SIGINT (after checkpointing) and
  driver.NonFiniteError on a non-finite loss."""
  num_devices = parallel.device_count()
  validate_search_config(config, num_devices)
  paths = rundir.Workdir(workdir, LOG_NAME)
  rundir.check_resumable(paths, config, RESUMABLE_CHANGES, 'search', EXTENDABLE)
  corpus = lm.load_corpus(config.data)
  s = config.search
  data = lm.streams(corpus, s, 'search', arch=True)
  # This process's rows of the two streams the steps read (all of them on one host).
  train, arch_stream = parallel.host_slice(data['train']), parallel.host_slice(data['search'])
  n_train, n_arch = data['train'].shape[1], data['search'].shape[1]
  valid = lm.eval_split(data['valid'], s.bptt)
  main = parallel.is_main_process()
  longest = lm.longest_window(s)

  model = model_lib.build_model(corpus.ntokens, config.model)
  opt = arch_optimizer(config)
  init_rng, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = lm.LMState(step=jnp.zeros((), jnp.int32),
                     core=steps.init_search_state(model, init_rng, s.batch_size, opt))
  n_params = sum(x.size for x in jax.tree.leaves(state.core['params']))

  def windows(epoch: int):
    return lm.epoch_windows(config.seed, epoch, n_train, s.bptt, s.max_seq_len_delta,
                            s.seq_len_jitter)

  if main:
    os.makedirs(paths.root, exist_ok=True)
  checkpoints = checkpoint.Checkpoints(paths.checkpoints, config.checkpoint.keep)
  meta = {'sums': None, 'resumed_from': []}
  total_steps = sum(len(windows(e)) for e in range(s.epochs))
  resumed = driver.resume(checkpoints, jax.eval_shape(lambda: state), paths, 'search',
                          section='search', epochs=s.epochs, total_steps=total_steps,
                          outputs=(paths.genotype, paths.arch, paths.summary),
                          finishing='the search had finished; writing its final outputs')
  if resumed is not None:
    state, meta = resumed.state, resumed.meta
    if resumed.complete:
      return space.derive(arch_numpy(state.core))

  print(f'RNN search on {config.data.name} ({corpus.ntokens} words; {corpus.train.size:,} '
        f'train tokens): {n_params:,} weights, {config.model.steps} nodes, ~{len(windows(0))} '
        f'windows/epoch of bptt {s.bptt}, {s.epochs} epochs, {s.architect} architect; '
        f'{num_devices} device(s), {s.batch_size // num_devices} rows per device',
        flush=True)
  step_model = model_lib.build_model(corpus.ntokens, config.model, None, parallel.AXIS)
  p_step = lm.CompiledByShape(
      parallel.pmap_step(make_step(step_model, config, opt, parallel.AXIS), STEP_IN_AXES),
      'the search step')
  evaluate = lm.make_evaluator(model, 'the validation pass')
  epoch_windows, clock = (), {}

  def begin_epoch(epoch, first, state):
    nonlocal epoch_windows
    epoch_windows = windows(epoch)
    clock.update(epoch=epoch, tokens=0, start=time.time())
    return state

  def run_step(state, step):
    k = step - phase.first_step(clock['epoch'])
    i, seq_len = epoch_windows[k]
    x, y, length = lm.window(train, i, seq_len, s.seq_len_bucket, longest)
    ax, ay, arch_length = lm.window(arch_stream, i % (n_arch - 1), s.bptt, s.seq_len_bucket,
                                    longest)
    clock['tokens'] += length * s.batch_size
    lr = steps.scaled_lr(s.learning_rate, seq_len, s.bptt)
    return p_step((x.shape[1], ax.shape[1]), state, parallel.shard(x), parallel.shard(y),
                  parallel.shard(ax), parallel.shard(ay), np.int32(length),
                  np.int32(arch_length), np.bool_(k == 0), jax.random.fold_in(step_key, step),
                  np.float32(lr))

  def end_epoch(epoch, state, sums) -> driver.Epoch:
    # Tokens of the train windows stepped in this session's part of the epoch.
    tokens_per_second = clock['tokens'] / max(time.time() - clock['start'], 1e-9)
    core = jax.device_get(parallel.unreplicate(state.core))
    valid_record = lm.evaluation(evaluate(core['params'], core['arch'], core['batch_stats'],
                                          valid))
    arch_values = arch_numpy(core)
    genotype = space.derive(arch_values)
    train_record = lm.loss_record(sums['loss_sum'], sums['count'])
    arch_record = lm.loss_record(sums['arch_loss_sum'], sums['arch_count'])
    norms = {'grad_norm': sums['grad_norm_sum'] / sums['steps'],
             'arch_grad_norm': sums['arch_grad_norm_sum'] / sums['steps'],
             'tokens_per_second': tokens_per_second}
    record = {'lr': s.learning_rate, 'train': train_record, 'arch': arch_record,
              'valid': valid_record, **norms, 'windows': len(epoch_windows),
              'genotype': space.genotype_to_dict(genotype)}
    scalars = {'lr': s.learning_rate, **norms}
    for name, values in (('train', train_record), ('arch', arch_record),
                         ('valid', valid_record)):
      scalars.update({f'{name}/{k}': v for k, v in values.items()})
    scalars.update(space.arch_scalars(arch_values))
    text = (f"train_ppl {train_record['perplexity']:.2f} arch_ppl "
            f"{arch_record['perplexity']:.2f} valid_ppl {valid_record['perplexity']:.2f}\n"
            f'  genotype = {space.genotype_str(genotype)}')
    pictures = lambda writer: _epoch_pictures(paths, epoch, arch_values, genotype, writer)
    return driver.Epoch(record, scalars, text, pictures)

  with driver.session(config, paths) as run:
    phase = driver.Phase(
        'search', paths.jsonl, checkpoints, s.epochs, len(windows(0)), s.batch_size,
        s.log_every_steps, run_step, end_epoch, begin_epoch=begin_epoch,
        advice='Lower search.learning_rate or search.arch_learning_rate, or check the data.',
        epoch_steps=lambda epoch: len(windows(epoch)))
    state, meta = driver.run_phase(run, phase, parallel.replicate(state), meta)
  checkpoints.close()

  host = jax.device_get(parallel.unreplicate(state))
  genotype = space.derive(arch_numpy(host.core))
  if not main:
    return genotype
  rundir.write_atomic(paths.genotype, json.dumps(space.genotype_to_dict(genotype)) + '\n')
  np.savez(paths.arch + '.tmp.npz', **arch_numpy(host.core))
  os.replace(paths.arch + '.tmp.npz', paths.arch)
  summary = _summary(paths, genotype, host, meta, n_params, p_step.shapes)
  rundir.write_atomic(paths.summary, json.dumps(summary, indent=2) + '\n')
  best = summary['best']
  print(f"search done ({driver.clock_text(summary)}): lowest validation "
        f"perplexity {best['valid']['perplexity']:.2f} (epoch {best['epoch']}); genotype "
        f'{space.genotype_str(genotype)} written to {paths.genotype}', flush=True)
  return genotype
