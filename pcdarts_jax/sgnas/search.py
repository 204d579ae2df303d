"""The SGNAS search (SGNAS, Huang & Chu CVPR 2021, github.com/eric8607242/SGNAS):
supernet training, then generator training, and
the generation of an architecture for a FLOPs budget.

`search(config, workdir)` runs both phases (resuming either) through the
library's epoch driver (pcdarts_jax.run.driver), which owns checkpoints, stop
signals, the non-finite check, the per-epoch JSON lines and TensorBoard; a phase
only supplies its jitted step and its end-of-epoch evaluation. Steps are pure
functions pmapped over the local devices (gradients and BatchNorm statistics
averaged over the device axis).

1. Supernet: every step trains `search.num_paths` single paths drawn by
   `sampling.sample_paths` on one batch, accumulating their gradients inside the
   step, then takes one SGD step (per-step cosine, label smoothing).
2. Generator: the supernet is frozen (BatchNorm running statistics); each step
   draws a target T on the grid, feeds the generator the prior architecture of
   the nearest grid target and the normalised T, relaxes its logits with a soft
   Gumbel-softmax (tau decays per epoch) and minimises CE (label smoothing
   `generator.label_smoothing`, 0.1 as the reference) of the soft supernet on
   the held-out split + the FLOPs loss of the expected FLOPs. Each epoch the
   generator is evaluated (argmax architectures): on the target grid (exact
   FLOPs, mean error, Kendall tau), on the selection grid (the summed FLOPs
   loss) and at the middle target (single-path top-1 on the held-out split).
   Three generators are kept (`update_kept`): best_avg, the reference's
   (the best middle-target top-1 among epochs whose summed FLOPs loss is under
   `generator.selection_max_flops_loss`), best_loss (the lowest summed FLOPs
   loss) and tau_minus_error (Kendall tau minus the mean relative FLOPs error);
   `generator.selection` names the one written to generator.msgpack.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import config_fields
from pcdarts_jax.search import seeds
from pcdarts_jax.data import datasets as data
from pcdarts_jax.data import augment as augment_lib
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.data import sources
from pcdarts_jax.run import driver
from pcdarts_jax.run import metrics
from pcdarts_jax.run import monitor
from pcdarts_jax.run import parallel
from pcdarts_jax.run import rundir
from pcdarts_jax.sgnas import flops as flops_lib
from pcdarts_jax.sgnas import generator as generator_lib
from pcdarts_jax.sgnas import layout as layout_lib
from pcdarts_jax.sgnas import sampling
from pcdarts_jax.sgnas import supernet as supernet_lib

SUPERNET_LOG = rundir.SUPERNET_LOG
GENERATOR_LOG = 'generator_log.jsonl'
GENERATOR_FILE = 'generator.msgpack'
POOL_FILE = 'prior_pool.json'
TABLE_FILE = 'flops_table.json'
ARCHITECTURES_FILE = 'architectures.json'
GENERATOR_CHECKPOINTS = 'generator_checkpoints'
# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ('checkpoint.', 'monitor.', 'search.log_every_steps', 'data.data_dir',
                     'data.manual_dir', 'data.download', 'data.archive')
ConfigError = config_fields.ConfigError


@flax.struct.dataclass
class SupernetState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class GeneratorState:
  step: jax.Array
  params: Any
  opt_state: Any


# ------------------------------------------------------------------- config


def flops_range(low: float, high: float, step: float) -> np.ndarray:
  """range(low, high, step) in MFLOPs, for float bounds."""
  count = int(np.floor((high - low) / step - 1e-9)) + 1
  return low + step * np.arange(count)


def targets(config) -> np.ndarray:
  """The target grid in MFLOPs: range(low, high, step) as SGNAS draws it."""
  g = config.generator
  return flops_range(g.flops_low, g.flops_high, g.flops_step)


def selection_targets(config) -> np.ndarray:
  """The grid whose summed FLOPs loss decides best_loss / best_avg: the
  reference evaluates range(low, high, 10) MFLOPs, twice the training step."""
  g = config.generator
  return flops_range(g.flops_low, g.flops_high, g.selection_flops_step)


def middle_target(config) -> float:
  """The target whose single-path accuracy decides best_avg: (low + high) / 2."""
  g = config.generator
  return (g.flops_low + g.flops_high) / 2


def validate_config(config, num_devices: int = 1):
  """Raises ConfigError (one line naming the field and the allowed values)."""
  d, m, s, g = config.data, config.model, config.search, config.generator
  seeds.validate(config, config_fields.require)  # One search: num_seeds > 1 is refused.
  config_fields.require(d.name in input_pipeline.dataset_names(),
                        f'data.name={d.name!r} is not one of {input_pipeline.dataset_names()}.')
  input_pipeline.validate_archive(d)
  config_fields.require(m.layout in layout_lib.PRESETS,
                        f'model.layout={m.layout!r} is not one of {tuple(layout_lib.PRESETS)}.')
  classes = input_pipeline.num_classes(d)
  config_fields.require(m.num_classes == classes,
                        f'model.num_classes={m.num_classes!r} but {d.name} has {classes} classes.')
  config_fields.require(
      d.name == input_pipeline.IMAGENET or 0.0 < d.train_portion < 1.0,
      f'data.train_portion={d.get("train_portion")!r} must be in (0, 1) (SGNAS: 0.8; '
      f'the rest trains the generator).')
  for section, fields in (('search', ('epochs', 'batch_size', 'eval_batch_size', 'num_paths')),
                          ('generator', ('epochs', 'hidden', 'body_layers', 'target_channels',
                                         'pool_size'))):
    for field in fields:
      value = config[section][field]
      config_fields.require(config_fields.is_int(value) and value >= 1,
                            f'{section}.{field}={value!r} must be an integer >= 1.')
  for field in ('learning_rate', 'momentum', 'weight_decay', 'label_smoothing', 'grad_clip'):
    config_fields.require(s[field] >= 0, f'search.{field}={s[field]!r} must be >= 0.')
  config_fields.require(
      s.label_smoothing < 1,
      f'search.label_smoothing={s.label_smoothing!r} must be < 1.')
  config_fields.require(0 <= g.label_smoothing < 1,
                        f'generator.label_smoothing={g.label_smoothing!r} must be in [0, 1).')
  config_fields.require(
      s.batch_size % num_devices == 0,
      f'search.batch_size={s.batch_size} is not divisible by the {num_devices} devices '
      f'(allowed: multiples of {num_devices}).')
  for field in ('learning_rate', 'tau_initial', 'flops_step', 'selection_flops_step',
                'selection_max_flops_loss'):
    config_fields.require(g[field] > 0, f'generator.{field}={g[field]!r} must be > 0.')
  config_fields.require(
      g.pool_bias > 0,
      f'generator.pool_bias={g.pool_bias!r} must be > 0 (MFLOPs).')
  config_fields.require(
      g.prior_pool_file is None or os.path.isfile(g.prior_pool_file),
      f'generator.prior_pool_file={g.prior_pool_file!r} is not a file (a prior_pool.json '
      f'in the reference format, or None to draw the pool).')
  config_fields.require(
      g.soft_bn in supernet_lib.SOFT_BN_MODES,
      f'generator.soft_bn={g.soft_bn!r} is not one of {supernet_lib.SOFT_BN_MODES}.')
  config_fields.require(g.selection in SELECTION_RULES,
                        f'generator.selection={g.selection!r} is not one of {SELECTION_RULES}.')
  for field in ('flops_alpha', 'flops_lambda', 'flops_margin', 'target_jitter'):
    config_fields.require(g[field] >= 0, f'generator.{field}={g[field]!r} must be >= 0.')
  config_fields.require(
      0 < g.tau_decay <= 1,
      f'generator.tau_decay={g.tau_decay!r} must be in (0, 1].')
  config_fields.require(0 <= g.beta1 < 1 and 0 <= g.beta2 < 1,
                        f'generator.beta1/beta2=({g.beta1!r}, {g.beta2!r}) must be in [0, 1).')
  config_fields.require(
      g.eval_accuracy_targets >= 0,
      f'generator.eval_accuracy_targets={g.eval_accuracy_targets!r} must be >= 0.')
  table = flops_lib.lookup_table(layout_lib.layout_of_config(config))
  low, high = (x / flops_lib.MEGA for x in flops_lib.macs_range(table))
  config_fields.require(
      low <= g.flops_low < g.flops_high <= high,
      f'generator.flops_low/flops_high=({g.flops_low}, {g.flops_high}) MFLOPs must '
      f'satisfy {low:.4g} <= low < high <= {high:.4g}, the FLOPs range of '
      f'model.layout={m.layout!r} on {d.name}.')
  config_fields.require(len(targets(config)) >= 2,
                        f'generator.flops_step={g.flops_step} leaves fewer than 2 targets in '
                        f'[{g.flops_low}, {g.flops_high}).')
  driver.validate_run(config)


# -------------------------------------------------------------------- steps


def supernet_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """SGD, momentum, L2 decay, cosine annealing per step, as the SGNAS reference."""
  s = config.search
  schedule = optax.cosine_decay_schedule(s.learning_rate, max(total_steps, 1))
  return optax.chain(
      optax.clip_by_global_norm(s.grad_clip) if s.grad_clip else optax.identity(),
      optax.add_decayed_weights(s.weight_decay),
      optax.sgd(schedule, momentum=s.momentum))


def generator_optimizer(config) -> optax.GradientTransformation:
  g = config.generator
  return optax.adam(g.learning_rate, b1=g.beta1, b2=g.beta2)


def make_supernet_step(model, config, tx, axis_name: Optional[str] = None) -> Callable:
  """step(state, batch, paths (P, L, 6), rng) -> (state, metric sums): the
  gradients of the P single paths on one batch are summed (the reference calls
  backward once per path) and applied in one SGD step; BatchNorm running
  statistics move path after path."""
  augment = data.train_augment(config.data)
  smoothing = config.search.label_smoothing

  def step(state: SupernetState, batch, paths, rng):
    images = augment_lib.augment_examples(augment, rng, batch['image'], axis_name)
    labels = batch['label']

    def path_loss(params, batch_stats, path):
      logits, new = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                path, train=True, hard=True, mutable=['batch_stats'])
      loss = metrics.cross_entropy(logits, labels, smoothing).mean()
      return loss, (new['batch_stats'], logits)

    def one_path(carry, path):
      grads, batch_stats = carry
      (loss, (batch_stats, logits)), path_grads = jax.value_and_grad(
          path_loss, has_aux=True)(state.params, batch_stats, path)
      return (jax.tree.map(jnp.add, grads, path_grads), batch_stats), metrics.batch_sums(
          loss, logits, labels)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats), sums = jax.lax.scan(one_path, (zeros, state.batch_stats), paths)
    grads = parallel.pmean(grads, axis_name)  # One all-reduce for all paths.
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
    sums = jax.tree.map(lambda x: jnp.sum(x) / paths.shape[0], sums)  # Mean over paths.
    return state, parallel.psum(sums, axis_name)

  return step


def make_path_eval_step(model, config, axis_name: Optional[str] = None) -> Callable:
  """eval_step(variables, batch, arch (L, 6)) -> masked metric sums of one single
  path with the running BatchNorm statistics."""
  d = config.data

  def eval_step(variables, batch, arch):
    images = data.normalize(batch['image'], d.mean, d.std)
    logits = model.apply(variables, images, arch, train=False, hard=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return parallel.psum(metrics.masked_sums(losses, logits, batch['label'], batch['mask']),
                         axis_name)

  return eval_step


@dataclasses.dataclass(frozen=True)
class Targets:
  """The target grid and the prior pool, as arrays."""
  grid: np.ndarray        # (T,) training targets, MFLOPs
  prior: np.ndarray       # (K, L, 6, 4) one-hot prior architectures
  low: float
  high: float
  keys: Optional[np.ndarray] = None  # (K,) the priors' FLOPs keys; None: one per grid target

  def normalised(self, target):
    return (target - self.low) / (self.high - self.low)

  def prior_of(self, target):
    """The prior whose key is nearest `target` (traced or not; the first on ties)."""
    keys = self.grid if self.keys is None else self.keys
    return jnp.asarray(self.prior)[jnp.argmin(jnp.abs(jnp.asarray(keys) - target))]


def make_generator_step(supernet, generator, config, table: flops_lib.Table, grid: Targets,
                        tx, axis_name: Optional[str] = None) -> Callable:
  """step(state, supernet_variables, batch, rng, tau) -> (state, metric sums).

  One target per step (the same on every device: `rng` is not per device);
  the loss is the soft supernet's CE on the batch + the FLOPs loss."""
  d, g = config.data, config.generator
  jitter = g.target_jitter

  def step(state: GeneratorState, variables, batch, rng, tau):
    pick_rng, jitter_rng, gumbel_rng = jax.random.split(rng, 3)
    target = (jnp.asarray(grid.grid, jnp.float32)[jax.random.randint(pick_rng, (), 0,
                                                                      len(grid.grid))] +
              jax.random.uniform(jitter_rng, (), jnp.float32, -jitter, jitter))
    prior = grid.prior_of(target)[None]
    images = data.normalize(batch['image'], d.mean, d.std)
    labels = batch['label']

    def loss_fn(params):
      logits = generator.apply(params, prior, grid.normalised(target)[None])
      probs = generator_lib.gumbel_softmax(gumbel_rng, logits, tau)[0]
      out = supernet.apply(variables, images, probs, train=False, hard=False)
      ce = metrics.cross_entropy(out, labels, g.label_smoothing).mean()
      expected = flops_lib.expected_mflops(probs, table)
      penalty = flops_lib.flops_loss(expected, target, g.flops_alpha, g.flops_lambda,
                                     g.flops_margin)
      return ce + penalty, (ce, penalty, expected, out)

    (loss, (ce, penalty, expected, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = parallel.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)
    sums = metrics.batch_sums(ce, out, labels)
    n = sums['count']
    # Per-device copies of the same value: divided by the devices after the psum.
    devices = parallel.psum(jnp.ones(()), axis_name)
    sums.update(flops_loss_sum=penalty / devices, flops_error_sum=jnp.abs(expected - target) /
                devices, steps=1.0 / devices, loss_total_sum=loss * n)
    return state, parallel.psum(sums, axis_name)

  return step


def kendall_tau(x, y) -> float:
  """Kendall's tau-b of two sequences (ties in either count as neither)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  dx = np.sign(x[:, None] - x[None, :])
  dy = np.sign(y[:, None] - y[None, :])
  upper = np.triu_indices(len(x), 1)
  dx, dy = dx[upper], dy[upper]
  denominator = np.sqrt(np.sum(dx != 0) * np.sum(dy != 0))
  return float(np.sum(dx * dy) / denominator) if denominator else 0.0


def selection_score(evaluation: Dict[str, float]) -> float:
  """The `tau_minus_error` rule's score: Kendall tau (ranking the targets right)
  minus the mean relative FLOPs error (meeting them), both on a 0..1 scale. Tau
  alone prefers early, high-temperature epochs whose argmax architectures rank
  well but undershoot every budget by ~15%."""
  return evaluation['kendall_tau'] - evaluation['mean_relative_flops_error']


# The generators a search keeps, each with its own file; `generator.selection`
# names the one written to GENERATOR_FILE.
KEPT_GENERATORS = ('best_avg', 'best_loss', 'tau_minus_error')
SELECTION_RULES = KEPT_GENERATORS


def update_kept(kept: Dict[str, Optional[Dict[str, Any]]], epoch: int,
                evaluation: Dict[str, float], rule: str,
                max_flops_loss: float) -> List[str]:
  """Folds one generator epoch into `kept` (name -> {'epoch', **evaluation} or
  None, changed in place); returns the names whose generator this epoch
  replaces, 'selected' among them when GENERATOR_FILE changes.

  As the reference keeps them (strict improvements, first epoch wins ties):
  - best_loss: the lowest `total_flops_loss` (the FLOPs loss of the argmax
    architectures summed over the selection grid);
  - best_avg: the highest `middle_accuracy` (the single-path top-1 at the middle
    target) among epochs with total_flops_loss < max_flops_loss; none while no
    epoch qualifies (then `best_avg` selects best_loss's generator);
  - tau_minus_error: the highest `selection_score` (this library's rule)."""
  entry = {'epoch': epoch, **evaluation}
  better = {
      'best_loss': kept.get('best_loss') is None or
                   evaluation['total_flops_loss'] < kept['best_loss']['total_flops_loss'],
      'best_avg': evaluation['total_flops_loss'] < max_flops_loss and
                  evaluation['middle_accuracy'] > (kept['best_avg']['middle_accuracy']
                                                   if kept.get('best_avg') else 0.0),
      'tau_minus_error': kept.get('tau_minus_error') is None or
                         evaluation['score'] > kept['tau_minus_error']['score'],
  }
  replaced = [name for name in KEPT_GENERATORS if better[name]]
  for name in replaced:
    kept[name] = entry
  source = selected_source(kept, rule)
  if source in replaced:
    replaced.append('selected')
  return replaced


def selected_source(kept: Dict[str, Optional[Dict[str, Any]]], rule: str) -> str:
  """Which kept generator `rule` selects now: best_avg falls back to best_loss
  while no epoch met the FLOPs-loss bound."""
  return 'best_loss' if rule == 'best_avg' and kept.get('best_avg') is None else rule


def kept_generator_file(name: str) -> str:
  return f'generator_{name}.msgpack'


def generate(generator, params, grid: Targets, target_mflops) -> np.ndarray:
  """Argmax architectures (T, L, 6) for the targets (MFLOPs)."""
  target = jnp.atleast_1d(jnp.asarray(target_mflops, jnp.float32))
  prior = jax.vmap(grid.prior_of)(target)
  logits = generator.apply(params, prior, grid.normalised(target))
  return np.asarray(generator_lib.argmax_choices(logits))


def _train_summary(sums: Dict[str, float]) -> Dict[str, float]:
  """An epoch's train record: loss and accuracy, and the generator's FLOPs terms."""
  out = metrics.summarise(sums)
  if 'steps' in sums:
    steps = max(sums['steps'], 1e-12)
    out.update(flops_loss=sums['flops_loss_sum'] / steps,
               expected_flops_error=sums['flops_error_sum'] / steps)
  return out


def reference_paths(layout: layout_lib.Layout) -> Dict[str, np.ndarray]:
  """Fixed single paths whose validation accuracy tracks supernet training:
  the largest (all 7x7), a middle one (4 groups of 5x5) and the smallest trained
  one (2 groups of 3x3: supernet training samples expansions 2..6)."""
  shape = (layout.num_layers, layout_lib.GROUPS)
  mid = np.full(shape, layout_lib.SKIP, np.int32)
  mid[:, :4] = layout_lib.KERNELS.index(5)
  smallest = np.full(shape, layout_lib.SKIP, np.int32)
  smallest[:, :2] = 0
  return {'max': np.full(shape, layout_lib.KERNELS.index(7), np.int32), 'mid': mid,
          'min': smallest}


def _write_json(path: str, value):
  rundir.write_atomic(path, json.dumps(value, indent=1) + '\n')


def _pool_key(key: float) -> str:
  """A pool key as the reference writes it: '360' for whole MFLOPs."""
  return str(int(key)) if float(key).is_integer() else repr(float(key))


def read_prior_pool(path: str, layout: layout_lib.Layout,
                    field: str = 'generator.prior_pool_file'):
  """(keys (K,), choices (K, L, 6)) of a prior_pool.json in the reference's
  format: {"<MFLOPs>": L x 24 one-hot rows, groups of [k3, k5, k7, skip]}."""
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f'{field}={path!r} cannot be read as JSON ({e}).') from None
  width = layout_lib.GROUPS * layout_lib.NUM_CHOICES
  if not isinstance(record, dict) or not record:
    raise ConfigError(f'{field}={path!r}: expected a JSON object '
                      f'{{"<MFLOPs>": {layout.num_layers} rows of {width} one-hot values}}.')
  keys, choices = [], []
  for key, rows in sorted(record.items(), key=lambda item: float(item[0])):
    try:
      arr = np.asarray(rows, np.float64)
      keys.append(float(key))
    except (TypeError, ValueError):
      raise ConfigError(f'{field}={path!r}: entry {key!r} is not "<MFLOPs>": '
                        f'a numeric array.') from None
    if arr.shape != (layout.num_layers, width) or not np.all(
        arr.reshape(-1, layout_lib.NUM_CHOICES).sum(-1) == 1):
      raise ConfigError(f'{field}={path!r}: prior {key!r} has shape {arr.shape}; expected '
                        f'{layout.num_layers} rows of {width} one-hot values (layout '
                        f'{layout.name!r}).')
    try:
      choices.append(layout_lib.check_choices(
          arr.reshape(layout.num_layers, layout_lib.GROUPS, -1).argmax(-1), layout,
          f'{field} prior {key!r}'))
    except ValueError as e:
      raise ConfigError(str(e)) from None
  return np.asarray(keys), np.stack(choices)


def _pool(config, layout, table, root: str, main: bool, fresh: bool = False) -> Targets:
  """The prior pool (written once; a resumed run reads the same one back; `fresh`:
  a new run draws it again, over one a run stopped before its first checkpoint left).

  As the reference: `generator.pool_size` keys evenly inside the target range
  (one, the middle, by default), each with a prior drawn by
  `flops_lib.sample_prior_pool` within `generator.pool_bias` MFLOPs of it; or
  the pool of `generator.prior_pool_file`. Written in the reference's format."""
  g = config.generator
  path = os.path.join(root, POOL_FILE)
  if os.path.exists(path) and not fresh:
    keys, choices = read_prior_pool(path, layout, path)
  else:
    if g.prior_pool_file:
      keys, choices = read_prior_pool(g.prior_pool_file, layout)
    else:
      keys = flops_lib.pool_keys(g.flops_low, g.flops_high, g.pool_size)
      try:
        choices, _ = flops_lib.sample_prior_pool(layout, table, keys, g.pool_bias, config.seed)
      except ValueError as e:
        raise ConfigError(str(e)) from None
    if main:  # Compact, as the reference's.
      rundir.write_atomic(path, json.dumps({
          _pool_key(k): layout_lib.one_hot(c).reshape(layout.num_layers, -1).tolist()
          for k, c in zip(keys, choices)}) + '\n')
  return Targets(grid=targets(config).astype(np.float32), prior=layout_lib.one_hot(choices),
                 low=float(g.flops_low), high=float(g.flops_high),
                 keys=np.asarray(keys, np.float32))


def describe_pool(grid: Targets, table: flops_lib.Table) -> str:
  """One line per prior: its key, its FLOPs and its architecture."""
  choices = np.argmax(grid.prior, -1)
  return '; '.join(f'{key:.6g}: {flops_lib.architecture_macs(c, table) / 1e6:.6g} MFLOPs '
                   f'{layout_lib.to_string(c)}' for key, c in zip(grid.keys, choices))


# Fields a resumed run may raise: the supernet's epochs only before the generator
# phase has begun (the generator trains on the finished supernet).
EXTENDABLE = ('search.epochs', 'generator.epochs')


def _latest_step(directory: str) -> int:
  """The newest checkpoint's step in `directory` (-1: none), read from the names."""
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(
      directory) else []
  return max(steps, default=-1)


def _check_workdir(paths: rundir.Workdir, config, generator_dir: str):
  """Refuses, before anything is written, a workdir this run must not touch."""
  saved = rundir.saved_config(paths) if config.checkpoint.resume else None
  if (saved is not None and saved.get('search.epochs') != config.search.epochs
      and rundir.has_checkpoints(generator_dir)):
    raise ConfigError(
        f'search.epochs={config.search.epochs}: the search in --workdir={paths.root!r} has '
        f'begun its generator phase on the {saved.get("search.epochs")}-epoch supernet; '
        f'only generator.epochs may be raised now (or use a new workdir). Nothing was '
        f'changed.')
  rundir.check_resumable(paths, config, RESUMABLE_CHANGES, 'SGNAS search', EXTENDABLE)


def search(config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) both SGNAS phases; returns the summary (also summary.json).

  Writes under `workdir`: config.json, flops_table.json, prior_pool.json,
  supernet_log.jsonl, generator_log.jsonl, checkpoints/ (supernet),
  generator_checkpoints/, generator.msgpack (the selected generator),
  generator_best_avg.msgpack, generator_best_loss.msgpack,
  generator_tau_minus_error.msgpack (the kept ones; best_avg once an epoch qualifies),
  architectures.json (its architectures on the target grid), summary.json,
  tensorboard/."""
  num_devices = parallel.device_count()
  config = sources.resolve_config(config, workdir)  # Own data: classes, mean / std.
  validate_config(config, num_devices)
  paths = rundir.Workdir(workdir, SUPERNET_LOG)
  generator_dir = os.path.join(paths.root, GENERATOR_CHECKPOINTS)
  _check_workdir(paths, config, generator_dir)
  inputs = input_pipeline.search_inputs(config)
  main = parallel.is_main_process()
  layout = layout_lib.layout_of_config(config)
  table = flops_lib.lookup_table(layout)
  s, g = config.search, config.generator
  if (_latest_step(paths.checkpoints) >= s.epochs * inputs.train.steps_per_epoch and
      _latest_step(generator_dir) >= g.epochs * inputs.arch.steps_per_epoch and
      os.path.exists(paths.summary)):
    print(driver.complete_text(
        'SGNAS search', workdir, f'{s.epochs} supernet and {g.epochs} generator epochs',
        '--config.search.epochs (before the generator phase) or --config.generator.epochs to '
        'train'), flush=True)
    with open(paths.summary) as f:
      return json.load(f)
  if main:
    os.makedirs(paths.root, exist_ok=True)
    sources.write_run_files(config, paths.root)  # classes.json, data_stats.json
    low, high = flops_lib.macs_range(table)
    _write_json(os.path.join(paths.root, TABLE_FILE),
                {'layout': layout.name, 'unit': 'multiply-adds', 'base': table.base,
                 'choices': list(layout_lib.CHOICES), 'per_group': table.per_group.tolist(),
                 'min': low, 'max': high})
  grid = _pool(config, layout, table, paths.root, main,
               fresh=not rundir.has_checkpoints(paths.checkpoints))
  if main:
    print(f'prior pool ({os.path.join(paths.root, POOL_FILE)}): {describe_pool(grid, table)}',
          flush=True)

  train_iter = input_pipeline.DevicePrefetch(inputs.train)
  held_out_iter = input_pipeline.DevicePrefetch(inputs.arch)
  spe = train_iter.steps_per_epoch
  eval_size = -(-s.eval_batch_size // num_devices) * num_devices
  init_rng, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
  impl = config.model.depthwise_impl
  model = supernet_lib.Supernet(layout, depthwise_impl=impl)
  step_model = supernet_lib.Supernet(layout, parallel.AXIS, impl, g.soft_bn)
  sample = data.normalize(inputs.sample_image, config.data.mean, config.data.std)
  variables = jax.jit(lambda rng: model.init(rng, sample, supernet_lib.init_arch(layout)))(
      init_rng)
  tx = supernet_optimizer(config, s.epochs * spe)
  state = SupernetState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                        batch_stats=variables['batch_stats'],
                        opt_state=tx.init(variables['params']))
  n_weights = sum(x.size for x in jax.tree.leaves(state.params))
  path_eval = monitor.announce_compile(
      parallel.pmap_step(make_path_eval_step(step_model, config, parallel.AXIS),
                         in_axes=(0, 0, None), donate_state=False), 'the path eval step')

  def path_accuracy(variables, arch) -> Dict[str, float]:
    return metrics.summarise(metrics.total(
        path_eval(variables, parallel.shard(batch), jnp.asarray(arch))
        for batch in inputs.eval_batches(eval_size)))

  # --- phase 1: the supernet.
  supernet_ckpt = checkpoint.Checkpoints(paths.checkpoints, config.checkpoint.keep)
  meta = {'wall_seconds': 0.0, 'resumed_from': []}
  restored = driver.restore(supernet_ckpt, jax.eval_shape(lambda: state), paths, 'SGNAS search')
  if restored is not None:
    step_done, state, meta = restored
    train_iter.restore(meta['iterator'])
    print(driver.resuming_text(step_done, paths.checkpoints, phase='the supernet phase'),
          flush=True)
  print(f'SGNAS supernet ({layout.name}, {layout.num_layers} layers): {n_weights:,} weights, '
        f'{spe} steps/epoch, {s.epochs} epochs of {s.num_paths} paths per step; FLOPs '
        f'{table.base / 1e6:.4g}.. per architecture, targets {grid.grid[0]:.4g}..'
        f'{grid.grid[-1]:.4g} M; {num_devices} device(s)', flush=True)
  p_supernet_step = monitor.announce_compile(
      parallel.pmap_step(make_supernet_step(step_model, config, tx, parallel.AXIS),
                         in_axes=(0, 0, None, None)), 'the supernet step')
  refs = reference_paths(layout)

  def supernet_step(state, step):
    paths_ = sampling.sample_paths(config.seed, step, s.num_paths, layout.num_layers)
    return p_supernet_step(state, next(train_iter), paths_, jax.random.fold_in(step_key, step))

  def supernet_epoch_end(epoch, state, sums) -> driver.Epoch:
    host = jax.device_get(parallel.unreplicate(state))
    variables = parallel.replicate({'params': host.params, 'batch_stats': host.batch_stats})
    train = _train_summary(sums)
    valid = {name: path_accuracy(variables, arch) for name, arch in refs.items()}
    scalars = {f'valid_{n}_accuracy': v['accuracy'] for n, v in valid.items()}
    text = ' '.join(f"{n} {v['accuracy']:.4f}" for n, v in valid.items())
    return driver.Epoch(
        {'train': train, 'valid': valid, 'scalars': scalars},
        {**{f'train_{k}': v for k, v in train.items()}, **scalars},
        f"train_loss {train['loss']:.4f} train_acc {train['accuracy']:.4f} valid_acc {text}")

  with driver.session(config, paths) as run:
    phase = driver.Phase(
        'supernet', paths.jsonl, supernet_ckpt, s.epochs, spe, s.batch_size, s.log_every_steps,
        supernet_step, supernet_epoch_end, save_meta=lambda: {'iterator': train_iter.state()},
        label='supernet')
    state, meta = driver.run_phase(run, phase, parallel.replicate(state), meta)
    supernet_ckpt.close()
    host = jax.device_get(parallel.unreplicate(state))
    frozen = parallel.replicate({'params': host.params, 'batch_stats': host.batch_stats})

    # --- phase 2: the generator.
    generator = generator_lib.Generator(g.hidden, g.body_layers, g.target_channels)
    gen_params = generator.init(jax.random.fold_in(init_rng, 2), grid.prior[:1],
                                jnp.zeros((1,), jnp.float32))
    gtx = generator_optimizer(config)
    gen_state = GeneratorState(step=jnp.zeros((), jnp.int32), params=gen_params,
                               opt_state=gtx.init(gen_params))
    gen_ckpt = checkpoint.Checkpoints(generator_dir, config.checkpoint.keep)
    gen_meta = {'wall_seconds': 0.0, 'best': None, 'resumed_from': []}
    restored = driver.restore(gen_ckpt, jax.eval_shape(lambda: gen_state))
    if restored is not None:
      step_done, gen_state, gen_meta = restored
      held_out_iter.restore(gen_meta['iterator'])
      print(driver.resuming_text(step_done, generator_dir, phase='the generator phase'),
            flush=True)
    gspe = held_out_iter.steps_per_epoch
    p_gen_step = monitor.announce_compile(parallel.pmap_step(
        make_generator_step(step_model, generator, config, table, grid, gtx, parallel.AXIS),
        in_axes=(0, 0, 0, None, None)), 'the generator step')
    gen_key = jax.random.fold_in(step_key, 2)
    accuracy_targets = (np.unique(np.round(np.linspace(0, len(grid.grid) - 1,
                                                        g.eval_accuracy_targets)).astype(int))
                        if g.eval_accuracy_targets else np.zeros((0,), int))

    selection_grid = selection_targets(config)
    middle = middle_target(config)

    def generator_step(gstate, step):
      tau = jnp.float32(generator_lib.temperature(config, step // gspe))
      return p_gen_step(gstate, frozen, next(held_out_iter), jax.random.fold_in(gen_key, step),
                        tau)

    def generator_epoch_end(epoch, gstate, sums) -> driver.Epoch:
      params = jax.device_get(parallel.unreplicate(gstate)).params
      choices = generate(generator, params, grid, grid.grid)
      mflops = np.array([flops_lib.architecture_macs(c, table) for c in choices]) / 1e6
      errors = np.abs(mflops - grid.grid)
      tau_k = kendall_tau(grid.grid, mflops)
      rows = [{'target': round(float(t), 6), 'mflops': float(f), 'architecture': layout_lib.to_string(c)}
              for t, f, c in zip(grid.grid, mflops, choices)]
      for i in accuracy_targets:
        rows[i]['valid'] = path_accuracy(frozen, choices[i])
      evaluation = {'kendall_tau': tau_k, 'mean_flops_error': float(errors.mean()),
                    'max_flops_error': float(errors.max()),
                    'mean_relative_flops_error': float((errors / grid.grid).mean()),
                    'tau': generator_lib.temperature(config, epoch)}
      evaluation['score'] = selection_score(evaluation)
      # The reference's selection figures: the FLOPs loss summed over its
      # evaluation grid, and the top-1 at the middle target.
      selection_choices = generate(generator, params, grid, selection_grid)
      selection_mflops = np.array([flops_lib.architecture_macs(c, table)
                                   for c in selection_choices]) / 1e6
      evaluation['total_flops_loss'] = float(np.sum(flops_lib.flops_loss(
          selection_mflops, selection_grid, g.flops_alpha, g.flops_lambda, g.flops_margin)))
      middle_choices = generate(generator, params, grid, [middle])[0]
      evaluation['middle_mflops'] = flops_lib.architecture_macs(middle_choices, table) / 1e6
      evaluation['middle_accuracy'] = path_accuracy(frozen, middle_choices)['accuracy']
      kept = gen_meta.setdefault('kept', {})
      replaced = update_kept(kept, epoch + 1, evaluation, g.selection,
                             g.selection_max_flops_loss)
      if main:  # Each kept generator in its own file, written atomically.
        for name in replaced:
          target = GENERATOR_FILE if name == 'selected' else kept_generator_file(name)
          tmp = os.path.join(paths.root, target + '.tmp')
          with open(tmp, 'wb') as f:
            f.write(flax.serialization.to_bytes(params))
          os.replace(tmp, os.path.join(paths.root, target))
        if 'selected' in replaced:
          _write_json(os.path.join(paths.root, ARCHITECTURES_FILE),
                      {'epoch': epoch + 1, 'selected_by': selected_source(kept, g.selection),
                       **evaluation, 'layout': layout.name, 'targets': rows})
      if 'selected' in replaced:
        gen_meta['best'] = {**kept[selected_source(kept, g.selection)],
                            'selected_by': selected_source(kept, g.selection)}
      train = _train_summary(sums)
      e = evaluation
      acc = ' '.join(f"{row['target']:.4g}M:{row['valid']['accuracy']:.3f}"
                     for row in rows if 'valid' in row)
      names = ','.join(name for name in replaced if name != 'selected')
      text = (f"train_loss {train['loss']:.4f} train_acc {train['accuracy']:.4f} "
              f"flops_loss {train['flops_loss']:.4f} kendall_tau {e['kendall_tau']:.3f} "
              f"mean_flops_error {e['mean_flops_error']:.4g}M tau {e['tau']:.3f} "
              f"total_flops_loss {e['total_flops_loss']:.4g} middle_acc "
              f"{e['middle_accuracy']:.3f}{' valid_acc ' + acc if acc else ''}"
              f"{' kept ' + names if names else ''}{' *' if 'selected' in replaced else ''}")
      return driver.Epoch(
          {'train': train, 'evaluation': evaluation, 'targets': rows, 'kept': replaced,
           'selected': 'selected' in replaced, 'scalars': dict(evaluation)},
          {**{f'train_{k}': v for k, v in train.items()}, **evaluation}, text)

    phase = driver.Phase(
        'generator', os.path.join(paths.root, GENERATOR_LOG), gen_ckpt, g.epochs, gspe,
        s.batch_size, s.log_every_steps, generator_step, generator_epoch_end,
        save_meta=lambda: {'iterator': held_out_iter.state()}, label='generator',
        scalar_offset=s.epochs)
    gen_state, gen_meta = driver.run_phase(run, phase, parallel.replicate(gen_state), gen_meta)
    gen_ckpt.close()
  best = gen_meta['best']
  summary = {
      'layout': layout.name, 'supernet_weights': n_weights,
      'flops_range_mflops': [x / 1e6 for x in flops_lib.macs_range(table)],
      'targets_mflops': [round(float(t), 6) for t in grid.grid],
      'prior_pool': describe_pool(grid, table),
      'supernet': {'epochs': s.epochs, 'steps': s.epochs * spe,
                   'step_seconds': (meta['step_seconds'] / meta['steps_run']
                                    if meta.get('steps_run') else None),
                   **driver.clock(meta),
                   'resumed_from_steps': meta.get('resumed_from', [])},
      'generator': {'epochs': g.epochs, 'selection': g.selection, 'selected': best,
                    'kept': {name: gen_meta.get('kept', {}).get(name)
                             for name in KEPT_GENERATORS},
                    **driver.clock(gen_meta),
                    'resumed_from_steps': gen_meta.get('resumed_from', [])},
  }
  if main:
    _write_json(paths.summary, summary)
    fallback = (' (no epoch had a total FLOPs loss < '
                f'{g.selection_max_flops_loss}: best_loss kept instead)'
                if best['selected_by'] != g.selection else '')
    print(f"SGNAS search done: generator of epoch {best['epoch']} selected by "
          f"{best['selected_by']}{fallback} (middle-target top-1 {best['middle_accuracy']:.4f}, "
          f"total FLOPs loss {best['total_flops_loss']:.4g}, Kendall tau "
          f"{best['kendall_tau']:.3f}, mean FLOPs error {best['mean_flops_error']:.4g} M = "
          f"{100 * best['mean_relative_flops_error']:.1f}%); "
          f'{os.path.join(paths.root, GENERATOR_FILE)}. Generate with: python -m '
          f'launch.sgnas_generate --config=... --workdir={workdir} --target_flops=T', flush=True)
  return summary


def load_generator(config, workdir: str, which: str = 'selected'):
  """(generator, params, Targets, table, layout) of a finished search workdir;
  `which`: 'selected' (GENERATOR_FILE) or one of KEPT_GENERATORS."""
  if which != 'selected' and which not in KEPT_GENERATORS:
    raise ConfigError(f'generator {which!r} is not one of {("selected",) + KEPT_GENERATORS}.')
  name = GENERATOR_FILE if which == 'selected' else kept_generator_file(which)
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    raise ConfigError(f'--workdir={workdir!r} holds no {name}: run the SGNAS search '
                      f'(launch/search.py) to the generator phase first'
                      f'{"" if which != "best_avg" else " (best_avg exists only once an epoch has a total FLOPs loss under generator.selection_max_flops_loss)"}.')
  layout = layout_lib.layout_of_config(config)
  table = flops_lib.lookup_table(layout)
  grid = _pool(config, layout, table, workdir, main=False)
  g = config.generator
  generator = generator_lib.Generator(g.hidden, g.body_layers, g.target_channels)
  shapes = jax.eval_shape(generator.init, jax.random.PRNGKey(0), grid.prior[:1],
                          jnp.zeros((1,), jnp.float32))
  with open(path, 'rb') as f:
    params = flax.serialization.from_bytes(shapes, f.read())
  return generator, params, grid, table, layout


def generate_for(config, workdir: str, target_mflops: float) -> Dict[str, Any]:
  """The architecture the selected generator of `workdir` gives for a budget."""
  generator, params, grid, table, layout = load_generator(config, workdir)
  g = config.generator
  if not g.flops_low <= target_mflops <= g.flops_high:
    print(f'warning: --target_flops={target_mflops} lies outside the trained range '
          f'[{g.flops_low}, {g.flops_high}] MFLOPs; the generator extrapolates.', flush=True)
  choices = generate(generator, params, grid, [target_mflops])[0]
  macs = flops_lib.architecture_macs(choices, table)
  return layout_lib.to_dict(choices, layout, target_mflops=float(target_mflops), macs=macs,
                            mflops=macs / 1e6, expansions=layout_lib.expansions(choices).tolist())
