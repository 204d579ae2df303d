"""The one trainer of evaluation networks (CIFAR and ImageNet), and their evaluation.

The network is `networks.build_network(config)`: a DARTS evaluation network of
`config.genotype`, (model.network='sgnas') the stand-alone network of an
SGNAS architecture (pcdarts_jax.sgnas.network), or (model.network='nb201') the
NAS-Bench-201 network of an NB-201 cell genotype (pcdarts_jax.spaces.nb201).

Steps are pure functions run under `parallel.pmap_step` over the local devices
(one device takes the same path): `train_step(state, batch, rng, drop_path_prob)`
and `eval_step(state, batch)`. BatchNorm statistics, gradients and metric sums
are reduced over the device axis on device; the host reads the metric sums only
at log, checkpoint and epoch points. Per-example randomness (crop, flip, cutout,
drop-path, SGNAS dropout) is keyed by the example's global position, so it does
not depend on the device count.

Data access is behind `_datasets(config)`: CIFAR and digits are read into host
memory; ImageNet is streamed by `pcdarts_jax.data.pipeline`. Either way the
host sends uint8 images, flipped (and pad-cropped on CIFAR), cut out and
normalised on device.
"""

import itertools
import json
import math
import os
from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import config_fields
from pcdarts_jax.data import datasets as data
from pcdarts_jax.nn import initializers
from pcdarts_jax.data import augment as augment_lib
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.data import sources
from pcdarts_jax.run import driver
from pcdarts_jax.run import metrics
from pcdarts_jax.run import monitor
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.train import networks
from pcdarts_jax.nn import ops
from pcdarts_jax.run import parallel
from pcdarts_jax.run import rundir
from pcdarts_jax.spaces.darts import visualize
from pcdarts_jax.sgnas import layout as sgnas_layout
from pcdarts_jax.sgnas import network as sgnas_network
from pcdarts_jax.spaces.nb201 import space as nb201_space

IMAGENET = input_pipeline.IMAGENET
DATASETS = input_pipeline.dataset_names()
LR_SCHEDULES = ('cosine', 'linear')
# train.lr_schedule_offset: epoch e (from 0) runs at lr(e + offset). 1: DARTS' and
# PC-DARTS' train.py step the cosine scheduler at the start of each epoch (the
# first epoch already runs below lr, the last at lr_min); 0: lr(e), as PC-DARTS'
# linear ImageNet decay (adjust_lr(epoch)) and AutoDL's NAS-Bench-201 training.
LR_SCHEDULE_OFFSETS = (0, 1)
# train.warmup_lr: what a warm-up epoch e < W scales by (e + 1) / W. base: the
# initial lr; schedule: the schedule's own value for e (PC-DARTS' train_imagenet.py
# scales the scheduled lr).
WARMUP_LRS = ('base', 'schedule')
# The reference's linear decay reaches lr/(epochs - 5) five epochs before the end
# and then slows down, so the lr does not drop to a relatively large step at 0.
LINEAR_TAIL_EPOCHS = 5
# Fields a resumed run may raise (the run goes on to the new end).
EXTENDABLE = ('train.epochs',)
# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ('checkpoint.', 'monitor.', 'train.log_every_steps', 'data.data_dir',
                     'data.manual_dir',
                     'data.download', 'data.archive')
ConfigError = config_fields.ConfigError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ------------------------------------------------------------------ validation


def _number(value, field: str, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = True):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      (value > low if low_open else value >= low) and
      (value < high if high_open else value <= high))
  lo, hi = '(' if low_open else '[', ')' if high_open else ']'
  config_fields.require(ok, f'{field}={value!r} must be a number in {lo}{low}, {high}{hi}.')


def _integer(value, field: str, low: int):
  config_fields.require(
      config_fields.is_int(value) and value >= low,
      f'{field}={value!r} must be an integer >= {low}.')


def validate_train_config(config, num_devices: int = 1):
  """Raises ConfigError (one line naming the field and the allowed values)."""
  d, m, t = config.data, config.model, config.train
  config_fields.require(m.network in networks.NETWORKS,
                        f'model.network={m.network!r} is not one of {networks.NETWORKS}.')
  sgnas, nb201 = m.network == networks.SGNAS, m.network == networks.NB201
  darts = not (sgnas or nb201)
  if darts:  # The DARTS genotype first: it names the run.
    try:
      genotype = network.resolve_genotype(config.genotype)
      network.check_genotype(genotype, f'genotype={config.genotype!r}')
    except ValueError as e:
      raise ConfigError(f'genotype={config.genotype!r}: {e}') from None
  elif nb201:
    try:
      networks.resolve_nb201_genotype(config.genotype)
    except ValueError as e:
      raise ConfigError(f'genotype={config.genotype!r}: {e}') from None
  config_fields.require(d.name in DATASETS, f'data.name={d.name!r} is not one of {DATASETS}.')
  input_pipeline.validate_archive(d)
  input_pipeline.validate_data(config)
  size, _, channels = input_pipeline.image_shape(d)
  config_fields.require(len(d.mean) == channels and len(d.std) == channels,
                        f'data.mean / data.std need {channels} values for {d.name}, got '
                        f'{len(d.mean)} / {len(d.std)}.')
  _integer(d.crop_padding, 'data.crop_padding', 0)
  config_fields.require_bool(d.random_flip, 'data.random_flip')

  classes = input_pipeline.num_classes(d)
  config_fields.require(m.num_classes == classes,
                        f'model.num_classes={m.num_classes!r} but {d.name} has {classes} classes.')
  if sgnas:
    _validate_sgnas_model(config)
  elif nb201:
    _validate_nb201_model(config, size)
  else:
    _validate_darts_model(config, size)
  if not nb201:  # NB-201 cells have no depthwise convs.
    config_fields.require(
        m.depthwise_impl in ops.DEPTHWISE_IMPLS,
        f'model.depthwise_impl={m.depthwise_impl!r} is not one of {ops.DEPTHWISE_IMPLS}.')
  config_fields.require_dtype(m.dtype)

  for field in ('epochs', 'batch_size', 'eval_batch_size', 'eval_every_epochs'):
    _integer(t[field], f'train.{field}', 1)
  for field in ('warmup_epochs', 'cutout_length', 'log_every_steps'):
    _integer(t[field], f'train.{field}', 0)
  _number(t.learning_rate, 'train.learning_rate', 0.0, low_open=True)
  _number(t.learning_rate_min, 'train.learning_rate_min', 0.0, t.learning_rate,
          high_open=False)
  config_fields.require(t.lr_schedule in LR_SCHEDULES,
                        f'train.lr_schedule={t.lr_schedule!r} is not one of {LR_SCHEDULES}.')
  config_fields.require(
      t.lr_schedule != 'linear' or t.epochs > LINEAR_TAIL_EPOCHS,
      f"train.epochs={t.epochs} must be > {LINEAR_TAIL_EPOCHS} for train.lr_schedule="
      f"'linear' (its last {LINEAR_TAIL_EPOCHS} epochs decay more slowly).")
  config_fields.require(t.warmup_epochs < t.epochs,
                        f'train.warmup_epochs={t.warmup_epochs} must be < train.epochs={t.epochs}.')
  offset = t.get('lr_schedule_offset', 0)
  config_fields.require(
      not isinstance(offset, bool) and offset in LR_SCHEDULE_OFFSETS,
      f'train.lr_schedule_offset={offset!r} is not one of {LR_SCHEDULE_OFFSETS} (1: epoch e '
      f'runs at lr(e + 1), as DARTS / PC-DARTS train.py; 0: at lr(e)).')
  config_fields.require(t.get('warmup_lr', 'base') in WARMUP_LRS,
                        f"train.warmup_lr={t.get('warmup_lr')!r} is not one of {WARMUP_LRS}.")
  config_fields.require_bool(t.get('nesterov', False), 'train.nesterov')
  _number(t.momentum, 'train.momentum', 0.0, 1.0)
  _number(t.weight_decay, 'train.weight_decay', 0.0)
  _number(t.grad_clip, 'train.grad_clip', 0.0)
  _number(t.label_smoothing, 'train.label_smoothing', 0.0, 1.0)
  if darts:
    _number(t.aux_weight, 'train.aux_weight', 0.0)
  # Test batches are padded and masked, so only the train batch must split evenly.
  config_fields.require(
      t.batch_size % num_devices == 0,
      f'train.batch_size={t.batch_size} is not divisible by the {num_devices} devices '
      f'(allowed: multiples of {num_devices}).')
  driver.validate_run(config)


def _validate_darts_model(config, size: int):
  """The fields of the DARTS evaluation networks (cifar, imagenet)."""
  d, m = config.data, config.model
  _integer(m.init_channels, 'model.init_channels', 1)
  _integer(m.layers, 'model.layers', 1)
  config_fields.require(m.network != 'imagenet' or m.init_channels % 2 == 0,
                        f'model.init_channels={m.init_channels} must be even for model.network='
                        f"'imagenet' (its stem halves it and cell 0 factor-reduces to it).")
  halvings = 2 + (3 if m.network == 'imagenet' else 0)
  config_fields.require(
      size % 2 ** halvings == 0,
      f'{d.name} images are {size}x{size}; model.network={m.network!r} halves them '
      f'{halvings} times and needs a size divisible by {2 ** halvings}.')
  config_fields.require_bool(m.auxiliary, 'model.auxiliary')
  aux_size = size // 2 ** halvings if m.network == 'imagenet' else size // 4
  config_fields.require(not m.auxiliary or aux_size >= 5,
                        f'model.auxiliary=True needs 5x5 maps at cell 2*layers//3, but {d.name} '
                        f'({size}x{size}) gives {aux_size}x{aux_size}; allowed: False.')
  _number(m.drop_path_prob, 'model.drop_path_prob', 0.0, 1.0)


def _validate_sgnas_model(config):
  """The fields of the SGNAS stand-alone network and its architecture (config.genotype)."""
  m = config.model
  config_fields.require(
      isinstance(m.get('layout'), str) and m.layout in sgnas_layout.PRESETS,
      f"model.layout={m.get('layout')!r} is not one of {tuple(sgnas_layout.PRESETS)}.")
  try:
    networks.resolve_architecture(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  config_fields.require_bool(m.get('se', False), 'model.se')
  config_fields.require(m.get('activation', 'relu6') in sgnas_network.ACTIVATIONS,
                        f"model.activation={m.get('activation')!r} is not one of "
                        f'{sgnas_network.ACTIVATIONS}.')
  _number(m.get('dropout', 0.0), 'model.dropout', 0.0, 1.0)
  config_fields.require(_drop_path_prob(config) == 0,
                        f'model.drop_path_prob={_drop_path_prob(config)!r}: model.network='
                        f"'sgnas' has no drop-path; allowed: 0 (regularise with model.dropout).")


def _validate_nb201_model(config, size: int):
  """The fields of the NAS-Bench-201 network (stem, 3 stages of
  `model.cells_per_stage` cells, two stride-2 ResNet blocks); it has no auxiliary
  head and no drop-path, so those must be off."""
  d, m = config.data, config.model
  _integer(m.init_channels, 'model.init_channels', 1)
  _integer(m.get('cells_per_stage', 5), 'model.cells_per_stage', 1)
  config_fields.require(
      size % 4 == 0,
      f"{d.name} images are {size}x{size}; model.network='nb201' halves them twice and "
      f'needs a size divisible by 4.')
  config_fields.require(not m.get('auxiliary', False),
                        "model.auxiliary=True: model.network='nb201' has no auxiliary head; "
                        'allowed: False.')
  config_fields.require(_drop_path_prob(config) == 0,
                        f'model.drop_path_prob={_drop_path_prob(config)!r}: model.network='
                        f"'nb201' trains without drop-path; allowed: 0.")


def _drop_path_prob(config) -> float:
  """The final drop-path probability; 0 where the network has none (SGNAS configs)."""
  return config.model.get('drop_path_prob', 0.0)


# ------------------------------------------------------------------------ data


DataSource = input_pipeline.DataSource


def _datasets(config, need_train: bool = True) -> DataSource:
  """The train and test data of `config.data` (the only data access of the trainer)."""
  if config.data.name != IMAGENET and not sources.is_own(config.data.name):
    return input_pipeline.memory_source(
        config, data.load_split(config.data, 'train') if need_train else None,
        data.load_split(config.data, 'test'))
  return input_pipeline.train_data_source(config, need_train)


# ----------------------------------------------------------------------- steps


def learning_rate_fn(config, steps_per_epoch: int) -> Callable:
  """lr per step, constant within an epoch e (from 0), which runs at lr(e + offset)
  (`train.lr_schedule_offset`, see LR_SCHEDULE_OFFSETS):
  cosine: lr(t) = lr_min + (lr - lr_min)(1 + cos(pi t / epochs)) / 2;
  linear: lr(t) = lr (E - 5 - t)/(E - 5), in the last 5 epochs lr (E - t)/(5 (E - 5));
  during `warmup_epochs` W (e < W): (e + 1) / W times lr (`train.warmup_lr='base'`)
  or times lr(e + offset) ('schedule', PC-DARTS' train_imagenet.py)."""
  t = config.train
  epochs, lr = float(t.epochs), float(t.learning_rate)
  # Configs older than the fields run at lr(e) and warm up from the base lr, as before.
  offset = float(t.get('lr_schedule_offset', 0))
  warmup_base = t.get('warmup_lr', 'base') == 'base'

  def schedule(count):
    e = (jnp.asarray(count) // steps_per_epoch).astype(jnp.float32)
    at = e + offset
    if t.lr_schedule == 'cosine':
      value = t.learning_rate_min + 0.5 * (lr - t.learning_rate_min) * (
          1.0 + jnp.cos(jnp.pi * at / epochs))
    else:
      tail = LINEAR_TAIL_EPOCHS
      value = jnp.where(epochs - at > tail, lr * (epochs - tail - at) / (epochs - tail),
                        lr * (epochs - at) / ((epochs - tail) * tail))
    if t.warmup_epochs:
      start = lr if warmup_base else value
      value = jnp.where(e < t.warmup_epochs, start * (e + 1.0) / t.warmup_epochs, value)
    return value
  return schedule


def optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch order: clip the raw gradient, add L2 weight decay, SGD momentum
  (Nesterov's with `train.nesterov`, as PyTorch's: g + momentum * buffer)."""
  t = config.train
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
      optax.add_decayed_weights(t.weight_decay),
      optax.sgd(learning_rate_fn(config, steps_per_epoch), momentum=t.momentum,
                nesterov=t.get('nesterov', False)))


def make_train_step(model, config, tx: optax.GradientTransformation,
                    axis_name: Optional[str] = None) -> Callable:
  """(state, batch, rng, drop_path_prob) -> (state, metric sums over the global batch).

  drop_path_prob is a traced scalar (one compile for every epoch); it is ignored
  when config.model.drop_path_prob is 0. Loss = CE + aux_weight CE_aux, both with
  label smoothing.
  """
  d, t = config.data, config.train
  augment = data.train_augment(d)
  use_drop_path = _drop_path_prob(config) > 0

  def step(state: TrainState, batch, rng, drop_path_prob):
    aug_rng, cut_rng, path_rng = jax.random.split(rng, 3)
    images, labels = batch['image'], batch['label']
    n = labels.shape[0]
    # Per-example keys from global positions: independent of the device count.
    images = augment_lib.augment_examples(augment, aug_rng, images, axis_name)
    if t.cutout_length:
      images = augment_lib.augment_examples(lambda k, x: data.cutout(k, x, t.cutout_length),
                                            cut_rng, images, axis_name)

    def loss_fn(params):
      (logits, logits_aux), new_vars = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
          drop_path_prob=drop_path_prob if use_drop_path else None,
          rngs={network.DROP_PATH_RNG: path_rng}, mutable=['batch_stats'])
      loss = metrics.cross_entropy(logits, labels, t.label_smoothing).mean()
      if logits_aux is not None:
        loss += t.aux_weight * metrics.cross_entropy(logits_aux, labels,
                                                     t.label_smoothing).mean()
      return loss, (new_vars['batch_stats'], logits)

    (loss, (batch_stats, logits)), grads = parallel.value_and_grad(
        loss_fn, axis_name, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1,
                          params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
    ones = jnp.ones((n,), jnp.float32)
    sums = {'loss_sum': loss * n, 'count': jnp.sum(ones), **metrics.top5_sums(logits, labels, ones)}
    return state, parallel.psum(sums, axis_name)

  return step


def make_eval_step(model, config, axis_name: Optional[str] = None) -> Callable:
  """(state, masked batch) -> loss, top-1 and top-5 sums (BN running statistics)."""
  d = config.data

  def eval_step(state: TrainState, batch) -> Dict[str, jax.Array]:
    images = data.normalize(batch['image'], d.mean, d.std)
    logits, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                            images, train=False)
    mask = batch['mask']
    sums = {'loss_sum': jnp.sum(metrics.cross_entropy(logits, batch['label']) * mask),
            'count': jnp.sum(mask), **metrics.top5_sums(logits, batch['label'], mask)}
    return parallel.psum(sums, axis_name)

  return eval_step


def evaluate(p_eval_step, state, source: DataSource) -> Dict[str, float]:
  """Loss, top-1 and top-5 accuracy over the whole test split (`state` replicated)."""
  return metrics.summarise(metrics.total(
      p_eval_step(state, batch)
      for batch in parallel.prefetch_to_device(source.test_batches())), top5=True)


# --------------------------------------------------------------------- the run


def create_train_state(model, config, rng, steps_per_epoch: int) -> TrainState:
  tx = optimizer(config, steps_per_epoch)
  sample = jnp.zeros(network.input_shape(config), jnp.float32)
  variables = initializers.init_variables(model, rng, sample)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(variables['params']))


LOG_NAME = rundir.TRAIN_LOG  # the per-epoch JSON-lines log in the workdir


def _check_workdir(paths: rundir.Workdir, config, genotype):
  """Refuses, before anything is written, a workdir this run must not touch."""
  rundir.check_resumable(paths, config, RESUMABLE_CHANGES, 'training run', EXTENDABLE)
  if os.path.exists(paths.genotype) and rundir.has_checkpoints(paths.checkpoints):
    try:
      trained = networks.resolve_architecture(config, paths.genotype)
    except ValueError as e:
      raise ConfigError(f'--workdir={paths.root!r}: its {paths.genotype} does not load for '
                        f'this config ({e}); use a new workdir.') from None
    if (networks.architecture_dict(config, trained) !=
        networks.architecture_dict(config, genotype)):
      raise ConfigError(
          f'--workdir={paths.root!r} trains the genotype in {paths.genotype}, but '
          f'genotype={config.genotype!r} now gives a different one; use a new workdir.')


def train(config, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) the network of `config` on its data; returns the summary.

  Writes, under `workdir` (process 0 only): config.json, genotype.json,
  train_log.jsonl (one line per epoch), summary.json, checkpoints/,
  tensorboard/ and plots/ (the DARTS cells, the NB-201 cell; none for SGNAS).
  genotype.json holds the architecture: the DARTS genotype, the SGNAS architecture
  record with its lookup-table MACs, or the NB-201 {"arch_str", "nodes"} (it loads
  back as `config.genotype`). Raises driver.Interrupted
  on SIGTERM/SIGINT (after checkpointing) and driver.NonFiniteError on a non-finite
  loss.
  """
  config = sources.resolve_config(config, workdir)  # Own data: classes, mean / std.
  validate_train_config(config, parallel.device_count())
  genotype = networks.resolve_architecture(config)  # SGNAS: the (L, 6) choices.
  source = _datasets(config)
  paths = rundir.Workdir(workdir, LOG_NAME)
  main = parallel.is_main_process()
  _check_workdir(paths, config, genotype)  # After every check; before any write.

  t, spe = config.train, source.steps_per_epoch
  model = networks.build_network(config, parallel.AXIS, genotype)
  tx = optimizer(config, spe)
  init_rng, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = create_train_state(model, config, init_rng, spe)
  n_params = network.count_params(model, network.input_shape(config))
  # SGNAS: multiply-adds of the network as built (SE included); the lookup table's
  # figure of the architecture is in genotype.json. NB-201: those of its convs and
  # classifier (NAS-Bench-201 reports FLOPs of the same networks).
  macs = (network.count_macs(model, network.input_shape(config))
          if networks.is_sgnas(config) or networks.is_nb201(config) else None)

  if main:
    os.makedirs(paths.root, exist_ok=True)
    sources.write_run_files(config, paths.root)  # classes.json, data_stats.json
  checkpoints = checkpoint.Checkpoints(paths.checkpoints, config.checkpoint.keep)
  meta = {'sums': None, 'wall_seconds': 0.0, 'resumed_from': []}
  resumed = driver.resume(checkpoints, jax.eval_shape(lambda: state), paths, 'training run',
                          section='train', epochs=t.epochs, total_steps=t.epochs * spe,
                          outputs=(paths.summary,), steps_per_epoch=spe,
                          finishing='the run had finished; evaluating and writing its summary')
  if resumed is None:
    if main and config.monitor.pictures and networks.is_nb201(config):
      nb201_space.draw(genotype, os.path.join(paths.plots, 'nb201'))  # plots/nb201_cell.*
    elif main and config.monitor.pictures and not networks.is_sgnas(config):  # No DARTS cells.
      visualize.draw_genotype(genotype, os.path.join(paths.plots, 'cell'))
  elif resumed.complete:
    with open(paths.summary) as f:
      return json.load(f)
  else:
    state, meta = resumed.state, resumed.meta
  start_step = int(state.step)

  size_text = (f'{n_params:,} parameters, {macs / 1e6:.6g} MFLOPs' if macs is not None else
               f'{n_params:,} parameters (auxiliary head excluded)')
  print(f'{type(model).__name__} {config.genotype}: {size_text}, {spe} steps/epoch, '
        f'{t.epochs} epochs, {parallel.device_count()} device(s)', flush=True)
  p_train = monitor.announce_compile(
      parallel.pmap_step(make_train_step(model, config, tx, parallel.AXIS),
                         in_axes=(0, 0, None, None)), 'the train step')
  p_eval = monitor.announce_compile(
      parallel.pmap_step(make_eval_step(model, config, parallel.AXIS), in_axes=(0, 0),
                         donate_state=False), 'the eval step')
  lr_fn = learning_rate_fn(config, spe)
  batches = source.train_batches(start_step)
  device_batches = None  # This epoch's, on the devices two steps ahead.
  drop_prob = None
  test = {}

  def begin_epoch(epoch, first, state):
    nonlocal device_batches, drop_prob
    drop_prob = jnp.float32(_drop_path_prob(config) * epoch / t.epochs)
    device_batches = parallel.prefetch_to_device(itertools.islice(batches, spe - first))
    return state

  def train_step(state, step):
    return p_train(state, next(device_batches), jax.random.fold_in(step_key, step), drop_prob)

  def end_epoch(epoch, state, sums) -> driver.Epoch:
    nonlocal test
    train_metrics = metrics.summarise(sums, top5=True)
    test = (evaluate(p_eval, state, source)
            if epoch + 1 == t.epochs or (epoch + 1) % t.eval_every_epochs == 0 else {})
    lr = float(lr_fn(epoch * spe))
    scalars = {'lr': lr, 'drop_path_prob': float(drop_prob)}
    for name, values in (('train', train_metrics), ('test', test)):
      scalars.update({f'{name}/{k}': v for k, v in values.items()})
    test_text = (f" test_loss {test['loss']:.4f} test_acc {test['accuracy']:.4f} "
                 f"test_top5 {test['top5_accuracy']:.4f}" if test else '')
    return driver.Epoch(
        {'lr': lr, 'drop_path_prob': float(drop_prob), 'train': train_metrics, 'test': test},
        scalars,
        f"lr {lr:.5f} drop_path {float(drop_prob):.3f} train_loss {train_metrics['loss']:.4f} "
        f"train_acc {train_metrics['accuracy']:.4f}{test_text}")

  # genotype.json goes with config.json: a rerun there may use another genotype.
  write_genotype = lambda: rundir.write_atomic(
      paths.genotype, networks.architecture_json(config, genotype) + '\n')
  with driver.session(config, paths, write_genotype) as run:
    phase = driver.Phase(
        'train', paths.jsonl, checkpoints, t.epochs, spe, t.batch_size, t.log_every_steps,
        train_step, end_epoch, begin_epoch=begin_epoch,
        advice='Lower train.learning_rate or check the data.')
    replicated, meta = driver.run_phase(run, phase, parallel.replicate(state), meta)
  checkpoints.close()
  if not test:  # Resumed after the last epoch: evaluate the final weights again.
    test = evaluate(p_eval, replicated, source)
  summary = _summary(paths, config, genotype, n_params, test, meta, t.epochs * spe)
  if macs is not None:
    summary['macs'] = macs
  if main:
    rundir.write_atomic(paths.summary, json.dumps(summary, indent=2) + '\n')
  print(f"training done: test top-1 accuracy {test['accuracy']:.4f}, top-5 "
        f"{test['top5_accuracy']:.4f} ({driver.clock_text(summary)}); "
        f'summary in {paths.summary}', flush=True)
  return summary


def _summary(paths: rundir.Workdir, config, genotype, n_params: int, test, meta,
             steps: int) -> Dict[str, Any]:
  records = []
  if os.path.exists(paths.jsonl):
    with open(paths.jsonl) as f:
      records = [json.loads(line) for line in f if line.strip()]
  tested = [r for r in records if r.get('test')]
  best = max(tested, key=lambda r: r['test']['accuracy']) if tested else None
  return {
      'genotype_name': config.genotype,
      'genotype': networks.architecture_dict(config, genotype),
      'network': config.model.network,
      'parameters': n_params,
      'test': {**test, 'top1_error': 1.0 - test['accuracy'],
               'top5_error': 1.0 - test['top5_accuracy']},
      'best': best and {'epoch': best['epoch'], 'test': best['test']},
      'epochs': len(records),
      'steps': steps,
      **driver.clock(meta),
      'resumed_from_steps': meta['resumed_from'],
  }


# ------------------------------------------------------------------ evaluation


def _genotype_for(config, workdir: Optional[str]):
  """The architecture a train workdir was trained with (its genotype.json), else the
  config's: a DARTS Genotype, or the (L, 6) choices of an SGNAS architecture."""
  if workdir and os.path.exists(rundir.Workdir(workdir, LOG_NAME).genotype):
    return networks.resolve_architecture(config, rundir.Workdir(workdir, LOG_NAME).genotype)
  return networks.resolve_architecture(config)


def _check_train_workdir(workdir: str):
  """Refuses a workdir that holds no launch.train run (an architecture search)."""
  if os.path.exists(os.path.join(workdir, LOG_NAME)):
    return
  searches = {rundir.SEARCH_LOG: f'--config.genotype={workdir}',
              rundir.SUPERNET_LOG: '--config.genotype=ARCHITECTURE.json (from '
                                   'launch.sgnas_generate)'}
  for log, genotype in searches.items():
    if os.path.exists(os.path.join(workdir, log)):
      raise ConfigError(
          f'--workdir={workdir!r} holds an architecture search ({log}), not a launch.train '
          f'run; train its architecture first (python -m launch.train --config=... '
          f'{genotype} --workdir=NEW) and evaluate that workdir.')


def _config_differences(config, paths: rundir.Workdir) -> str:
  """'' or ' (the run\'s config.json differs in model.layers: 3 -> 4, ...)': the
  model and data fields, which decide the network's arrays."""
  if not os.path.exists(paths.config):
    return ''
  with open(paths.config) as f:
    saved = rundir.flatten(json.load(f))
  now = rundir.flatten(rundir.config_json(config))
  changed = sorted(k for k in set(saved) | set(now)
                   if k.startswith(('model.', 'data.name', 'genotype'))
                   and saved.get(k) != now.get(k))
  if not changed:
    return ''
  details = ', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in changed[:4])
  return f" (the run's config.json differs in {details})"


def evaluate_checkpoint(config, workdir: Optional[str] = None,
                        torch_state_dict: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
  """Top-1/top-5 error on the test split of the newest checkpoint in a train
  `workdir`, or of a reference PyTorch evaluation network's state_dict (numpy
  arrays, see torch_import.network_variables). Exactly one of the two."""
  if (workdir is None) == (torch_state_dict is None):
    raise ValueError('give exactly one of a train workdir and a PyTorch state_dict.')
  config = sources.resolve_config(config, workdir)  # The run's classes, mean / std.
  validate_train_config(config, parallel.device_count())
  if torch_state_dict is not None and (networks.is_sgnas(config) or networks.is_nb201(config)):
    raise ConfigError(f"a PyTorch state_dict can be read only for the DARTS evaluation "
                      f"networks (model.network 'cifar' | 'imagenet'), not "
                      f"{config.model.network!r}.")
  if workdir is not None:
    _check_train_workdir(workdir)
  try:
    genotype = _genotype_for(config, workdir)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  source = _datasets(config, need_train=False)
  model = networks.build_network(config, parallel.AXIS, genotype)
  if workdir is not None:
    paths = rundir.Workdir(workdir, LOG_NAME)
    if not rundir.has_checkpoints(paths.checkpoints):
      raise ConfigError(f'--workdir={workdir!r} holds no checkpoint ({paths.checkpoints}).')
    shapes = network.variable_shapes(model, network.input_shape(config))
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=shapes['params'],
                          batch_stats=shapes['batch_stats'],
                          opt_state=jax.eval_shape(optimizer(config, 1).init, shapes['params']))
    checkpoints = checkpoint.Checkpoints(paths.checkpoints, config.checkpoint.keep,
                                         read_only=True)
    try:
      restored = checkpoints.restore_latest(abstract)
    except checkpoint.CheckpointMismatch as e:
      raise ConfigError(f'{e}{_config_differences(config, paths)}; evaluate with the '
                        f'config the run was trained with (its {paths.config}).') from None
    finally:
      checkpoints.close()
    if restored is None:
      raise ConfigError(f'no checkpoint in {paths.checkpoints} could be restored.')
    step, state, _ = restored
    source_name = f'checkpoint {step} in {paths.checkpoints}'
  else:
    from pcdarts_jax.train import torch_import  # pylint: disable=g-import-not-at-top
    variables = torch_import.network_variables(torch_state_dict, genotype, config)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                       batch_stats=variables['batch_stats'], opt_state=None)
    source_name = 'PyTorch state_dict'
  p_eval = monitor.announce_compile(
      parallel.pmap_step(make_eval_step(model, config, parallel.AXIS), in_axes=(0, 0),
                         donate_state=False), 'the eval step')
  metrics = evaluate(p_eval, parallel.replicate(state), source)
  result = {'top1_error': 1.0 - metrics['accuracy'], 'top5_error': 1.0 - metrics['top5_accuracy'],
            'top1_accuracy': metrics['accuracy'], 'top5_accuracy': metrics['top5_accuracy'],
            'loss': metrics['loss'], 'images': source.test_size, 'source': source_name}
  classes = sources.read_classes(workdir)  # Own data: the run's class names (label order).
  if classes is not None:
    result['classes'] = classes
  return result
