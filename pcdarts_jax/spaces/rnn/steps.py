"""Pure steps of the DARTS RNN search and training (github.com/quark0/darts:
rnn/train_search.py, rnn/train.py, rnn/architect.py), for a loop to drive.

A step factory closes over the model and the static hyperparameters and returns a
function of arrays only, to be jitted by the caller (one program per sequence
length). State is a dict of pytrees:

- search: {'params', 'arch', 'arch_opt', 'batch_stats', 'hidden', 'hidden_valid'}
- train:  {'params', 'opt' ({} under SGD, the ASGD state after the switch), 'hidden'}

The loop per epoch (as the reference): zero hidden states; for each window of
`epoch_windows` take the train batch at column i (and, in the search, the arch
batch of the valid stream at column i % (N_valid - 1), length bptt); step with
lr * seq_len / bptt; carry the hidden states (gradients stop at the window).

For the run loop the steps also take `length` arguments (the real steps of a window
padded to a fixed length, so that one program serves many lengths; losses and
regularisers count only the real steps) and an `axis_name` (the batch split over a
pmap axis: gradients averaged over it, BatchNorm statistics and dropout masks of the
whole batch; the state's hidden rows [B, nhid] stay whole on every device, each
device steps its own rows and the new rows are gathered).
"""

import math
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcdarts_jax.run import parallel
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import model as model_lib

HVP_R = 1e-2  # architect.py _hessian_vector_product: R = 0.01 / ||v||.
ARCHITECTS = ('first_order', 'second_order')


# ------------------------------------------------------------------ losses


def _masked_mean(values, mask):
  """Mean of values [B, T, ...] over the steps where mask [1 or B, T] is 1 (None: all)."""
  if mask is None:
    return jnp.mean(values)
  mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (values.ndim - 2)), values.shape)
  return jnp.sum(values * mask) / jnp.sum(mask)


def nll(log_probs, targets, mask=None):
  """Mean negative log-likelihood of targets [B, T] under log_probs [B, T, V] (over the
  real steps of `mask`, model.step_mask)."""
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return -_masked_mean(picked, mask)


def activation_regularization(out: model_lib.LMOutput, alpha: float, beta: float, mask=None):
  """AR alpha * mean(dropped_output^2) + TAR beta * mean((raw_h[t+1] - raw_h[t])^2), over
  the real steps (pairs of real steps for TAR) of `mask`."""
  reg = 0.0
  if alpha:
    reg = reg + alpha * _masked_mean(jnp.square(out.dropped_output), mask)
  if beta:
    reg = reg + beta * _masked_mean(jnp.square(out.raw_output[:, 1:] - out.raw_output[:, :-1]),
                                    None if mask is None else mask[:, 1:])
  return reg


def apply_model(model, params, arch, batch_stats, tokens, hidden, rng, train: bool,
                length=None):
  """(LMOutput, new batch_stats). arch None: the genotype model; batch_stats {} if none;
  length: the real steps of a padded window (None: all)."""
  variables = {'params': params}
  if arch is not None:
    variables['arch'] = arch
  if batch_stats:
    variables['batch_stats'] = batch_stats
  if not train:
    return model.apply(variables, tokens, hidden, train=False, length=length), batch_stats
  out, updates = model.apply(variables, tokens, hidden, train=True, length=length,
                             rngs={'dropout': rng}, mutable=['batch_stats'])
  return out, updates.get('batch_stats', batch_stats)


def lm_loss(model, params, arch, batch_stats, tokens, targets, hidden, rng, train: bool,
            alpha: float = 0.0, beta: float = 0.0, length=None):
  """(NLL + AR + TAR, (NLL, next hidden, new batch_stats)): differentiable in params, arch.
  length: the real steps of a window padded to tokens.shape[1] (None: all)."""
  out, batch_stats = apply_model(model, params, arch, batch_stats, tokens, hidden, rng, train,
                                 length)
  mask = model_lib.step_mask(length, tokens.shape[1])
  raw = nll(out.log_probs, targets, mask)
  return raw + activation_regularization(out, alpha, beta, mask), (raw, out.hidden, batch_stats)


# ------------------------------------------------------------- optimisation


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def clip_grads(grads, max_norm: float):
  """torch clip_grad_norm: scale by max_norm / (norm + 1e-6) when that is < 1.
  Returns (clipped, norm before clipping); max_norm <= 0 leaves grads as they are."""
  norm = global_norm(grads)
  if max_norm <= 0:
    return grads, norm
  coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
  return jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), grads), norm


def scaled_lr(lr: float, seq_len: int, bptt: int) -> float:
  """The reference's lr for a window of seq_len (sampled, before capping at the stream's end)."""
  return lr * seq_len / bptt


def sgd_update(params, grads, lr, weight_decay: float):
  """torch SGD without momentum: p - lr (g + wd p)."""
  return jax.tree_util.tree_map(lambda p, g: p - lr * (g + weight_decay * p), params, grads)


def asgd_init(params, lr: float) -> Dict:
  """torch.optim.ASGD(lr, t0=0, lambd=0) state, as train.py creates at the switch."""
  return {'step': jnp.zeros((), jnp.int32), 'eta': jnp.asarray(lr, jnp.float32),
          'ax': jax.tree_util.tree_map(jnp.zeros_like, params)}


def asgd_update(params, grads, state: Dict, lr, weight_decay: float):
  """One torch ASGD step with lambd = 0, t0 = 0: p - eta (g + wd p), then `ax` the
  running average of the iterates from the second step on (torch's mu = 1 / max(1, k-1)
  at step k). torch takes eta from the lr the group had at the previous step, so the
  step uses state['eta'] and stores this step's lr for the next (the reference's
  seq_len scaling lags one window under ASGD). Returns (params, state)."""
  k = state['step'] + 1
  eta = state['eta']
  params = jax.tree_util.tree_map(lambda p, g: p - eta.astype(p.dtype) * (g + weight_decay * p),
                                  params, grads)
  mu = 1.0 / jnp.maximum(1, k - 1).astype(jnp.float32)
  ax = jax.tree_util.tree_map(
      lambda a, p: jnp.where(mu == 1.0, p, a + (p - a) * mu.astype(p.dtype)), state['ax'], params)
  return params, {'step': k, 'eta': jnp.asarray(lr, jnp.float32), 'ax': ax}


def should_switch_to_asgd(val_losses: Sequence[float], nonmono: int) -> bool:
  """train.py's switch from SGD to ASGD: val_losses are the validation losses of the
  SGD epochs so far, the newest last; switch when the newest is worse than the best
  of those older than the last `nonmono` before it."""
  history, current = list(val_losses[:-1]), val_losses[-1]
  return len(history) > nonmono and current > min(history[:-nonmono])


def arch_optimizer(learning_rate: float, weight_decay: float, b1: float, b2: float):
  """torch Adam with weight_decay (L2 added to the gradient), eps 1e-8."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1, b2, eps=1e-8), optax.scale(-learning_rate))


# ---------------------------------------------------------- sequence lengths


def sample_seq_len(rng: np.random.Generator, bptt: int, max_seq_len_delta: int,
                   jitter: bool = True) -> int:
  """train.py: bptt w.p. 0.95 else bptt / 2; then (jitter) int(N(that, 5)), at least 5
  and at most bptt + max_seq_len_delta. train_search.py has the jitter commented out:
  int(bptt) or int(bptt / 2)."""
  base = bptt if rng.random() < 0.95 else bptt / 2.
  if not jitter:
    return int(base)
  return min(max(5, int(rng.normal(base, 5))), bptt + max_seq_len_delta)


def epoch_windows(n: int, bptt: int, rng: np.random.Generator, max_seq_len_delta: int,
                  jitter: bool) -> Iterator[Tuple[int, int]]:
  """(column i, sampled seq_len) of each step of an epoch over a [B, n] stream (the
  reference's `while i < n - 2`); the batch at i is capped at the stream's end by
  corpus.get_batch, the lr scale uses the sampled seq_len."""
  i = 0
  while i < n - 2:
    seq_len = sample_seq_len(rng, bptt, max_seq_len_delta, jitter)
    yield i, seq_len
    i += seq_len


# ---------------------------------------------------------------- weights


def make_weight_step(model, *, alpha: float, beta: float, clip: float, weight_decay: float,
                     optimizer: str = 'sgd', axis_name: Optional[str] = None) -> Callable:
  """step(params, opt_state, arch, batch_stats, hidden, tokens, targets, rng, lr,
  length=None) -> (params, opt_state, batch_stats, hidden, metrics): NLL + AR + TAR,
  the gradient (averaged over `axis_name`) clipped to `clip`, then SGD ('sgd',
  opt_state passed through) or ASGD ('asgd') with wd."""
  if optimizer not in ('sgd', 'asgd'):
    raise ValueError(f"optimizer={optimizer!r} is not one of ('sgd', 'asgd').")

  def step(params, opt_state, arch, batch_stats, hidden, tokens, targets, rng, lr,
           length=None):
    grad_fn = parallel.value_and_grad(lm_loss, axis_name, argnums=1, has_aux=True)
    (loss, (raw, hidden, batch_stats)), grads = grad_fn(
        model, params, arch, batch_stats, tokens, targets, hidden, rng, True, alpha, beta,
        length)
    grads, norm = clip_grads(grads, clip)
    if optimizer == 'sgd':
      params = sgd_update(params, grads, lr, weight_decay)
    else:
      params, opt_state = asgd_update(params, grads, opt_state, lr, weight_decay)
    metrics = {'loss': raw, 'total_loss': loss, 'grad_norm': norm}
    return params, opt_state, batch_stats, jax.lax.stop_gradient(hidden), metrics

  return step


# ------------------------------------------------------------ architecture


def hessian_vector_fd(arch_grad_fn: Callable, params, vector, r: float = HVP_R):
  """(g(w + R v) - g(w - R v)) / 2R with R = r / ||v||: the mixed second derivative
  d/dw [d/da L] applied to v, by central differences (architect.py)."""
  scale = r / global_norm(vector)
  shift = lambda sign: jax.tree_util.tree_map(lambda p, v: p + sign * scale * v, params, vector)
  gp, gn = arch_grad_fn(shift(1.0)), arch_grad_fn(shift(-1.0))
  return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * scale), gp, gn)


def unrolled_arch_grad(model, params, arch, batch_stats, train_batch, valid_batch, rng, eta,
                       *, weight_decay: float, clip: float, r: float = HVP_R,
                       train_length=None, valid_length=None,
                       axis_name: Optional[str] = None):
  """The second-order arch gradient of rnn/architect.py _backward_step_unrolled:

    w' = w - eta (clip(dL_train/dw) + wd w)
    v  = clip(dL_val(w', a)/dw') + wd w'
    grad = dL_val(w', a)/da - eta * HVP_fd(dL_train/da at w', v)

  (the reference takes the Hessian term at w', with the train batch). The losses are
  the plain NLL in training mode (dropout, BatchNorm on batch statistics). batches:
  (hidden, tokens, targets); lengths: their real steps (None: all); every gradient is
  averaged over `axis_name`. Returns (grad, valid loss, next valid hidden)."""
  h_t, x_t, y_t = train_batch
  h_v, x_v, y_v = valid_batch
  k_train, k_valid, k_hvp = jax.random.split(rng, 3)

  def loss(p, a, batch, key, length):
    h, x, y = batch
    return lm_loss(model, p, a, batch_stats, x, y, h, key, True, length=length)

  g_w = parallel.grad(lambda p: loss(p, arch, (h_t, x_t, y_t), k_train, train_length)[0],
                      axis_name)(params)
  g_w, _ = clip_grads(g_w, clip)
  unrolled = jax.tree_util.tree_map(lambda p, g: p - eta * (g + weight_decay * p), params, g_w)
  (val_loss, (_, h_next, _)), (d_w, d_a) = parallel.value_and_grad(
      lambda p, a: loss(p, a, (h_v, x_v, y_v), k_valid, valid_length), axis_name,
      argnums=(0, 1), has_aux=True)(unrolled, arch)
  d_w, _ = clip_grads(d_w, clip)
  vector = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, d_w, unrolled)
  # One dropout draw for both shifted points (the reference draws a fresh one per pass).
  arch_grad = lambda p: parallel.grad(
      lambda a: loss(p, a, (h_t, x_t, y_t), k_hvp, train_length)[0], axis_name)(arch)
  implicit = hessian_vector_fd(arch_grad, unrolled, vector, r)
  grad = jax.tree_util.tree_map(lambda g, h: g - eta * h, d_a, implicit)
  return grad, val_loss, h_next


def make_arch_step(model, *, architect: str, weight_decay: float, clip: float,
                   optimizer: optax.GradientTransformation, hvp_r: float = HVP_R,
                   axis_name: Optional[str] = None) -> Callable:
  """step(arch, arch_opt, params, batch_stats, train_batch, valid_batch, rng, eta,
  train_length=None, valid_length=None) -> (arch, arch_opt, batch_stats, next valid
  hidden, metrics); gradients averaged over `axis_name`. 'first_order': the
  gradient of the valid NLL at w (this forward pass also moves the BatchNorm running
  statistics, as the reference's); 'second_order': unrolled_arch_grad (the reference runs
  it on a copy of the model, so the statistics stay). eta: the weights' current lr;
  hvp_r: the finite difference's step r (R = r / ||v||)."""
  if architect not in ARCHITECTS:
    raise ValueError(f'search.architect={architect!r} is not one of {ARCHITECTS}.')

  def step(arch, arch_opt, params, batch_stats, train_batch, valid_batch, rng, eta,
           train_length=None, valid_length=None):
    if architect == 'first_order':
      h_v, x_v, y_v = valid_batch
      (val_loss, (_, h_next, batch_stats)), grad = parallel.value_and_grad(
          lm_loss, axis_name, argnums=2, has_aux=True)(
              model, params, arch, batch_stats, x_v, y_v, h_v, rng, True, length=valid_length)
    else:
      grad, val_loss, h_next = unrolled_arch_grad(
          model, params, arch, batch_stats, train_batch, valid_batch, rng, eta,
          weight_decay=weight_decay, clip=clip, r=hvp_r, train_length=train_length,
          valid_length=valid_length, axis_name=axis_name)
    updates, arch_opt = optimizer.update(grad, arch_opt, arch)
    arch = optax.apply_updates(arch, updates)
    metrics = {'arch_loss': val_loss, 'arch_grad_norm': global_norm(grad)}
    return arch, arch_opt, batch_stats, jax.lax.stop_gradient(h_next), metrics

  return step


# ------------------------------------------------------- composite steps


def init_search_state(model, rng, batch_size: int, optimizer: optax.GradientTransformation):
  """The search state of a fresh search model, zero hidden states."""
  variables = model_lib.init_variables(model, rng)
  # Two arrays (not one twice): a step may donate the state's buffers.
  return {'params': variables['params'], 'arch': variables['arch'],
          'arch_opt': optimizer.init(variables['arch']),
          'batch_stats': variables.get('batch_stats', {}),
          'hidden': model_lib.init_hidden(batch_size, model.nhid),
          'hidden_valid': model_lib.init_hidden(batch_size, model.nhid)}


def init_train_state(model, rng, batch_size: int):
  """The training state of a fresh genotype model (SGD: opt {}), zero hidden state."""
  variables = model_lib.init_variables(model, rng)
  return {'params': variables['params'], 'opt': {},
          'hidden': model_lib.init_hidden(batch_size, model.nhid)}


def reset_hidden(state: Dict) -> Dict:
  """Zero hidden states, as each epoch starts."""
  zero = lambda h: jnp.zeros_like(h)
  return {k: (zero(v) if k in ('hidden', 'hidden_valid') else v) for k, v in state.items()}


def own_rows(hidden, rows: int, axis_name: Optional[str]):
  """This device's rows of the whole batch's hidden state [B, nhid] (all: one device)."""
  if axis_name is None:
    return hidden
  return jax.lax.dynamic_slice_in_dim(hidden, jax.lax.axis_index(axis_name) * rows, rows, 0)


def all_rows(hidden, axis_name: Optional[str]):
  """The whole batch's hidden state from each device's rows (the inverse of own_rows)."""
  return hidden if axis_name is None else jax.lax.all_gather(hidden, axis_name, tiled=True)


def make_search_step(model, *, architect: str, alpha: float, beta: float, clip: float,
                     weight_decay: float, arch_opt: optax.GradientTransformation,
                     axis_name: Optional[str] = None) -> Callable:
  """step(state, train_xy, valid_xy, rng, lr, train_length=None, valid_length=None) ->
  (state, metrics): train_search.py's batch: the arch step (valid batch; eta = lr),
  then the weight step (train batch, same incoming hidden). lr: the window's scaled lr;
  lengths: the real steps of padded windows. Under `axis_name` the batches are this
  device's rows and the state's hidden states those of the whole batch."""
  arch_step = make_arch_step(model, architect=architect, weight_decay=weight_decay, clip=clip,
                             optimizer=arch_opt, axis_name=axis_name)
  weight_step = make_weight_step(model, alpha=alpha, beta=beta, clip=clip,
                                 weight_decay=weight_decay, optimizer='sgd',
                                 axis_name=axis_name)

  def step(state, train_xy, valid_xy, rng, lr, train_length=None, valid_length=None):
    k_arch, k_weights = jax.random.split(rng)
    hidden = own_rows(state['hidden'], train_xy[0].shape[0], axis_name)
    hidden_valid = own_rows(state['hidden_valid'], valid_xy[0].shape[0], axis_name)
    train_batch = (hidden,) + tuple(train_xy)
    valid_batch = (hidden_valid,) + tuple(valid_xy)
    arch, arch_state, batch_stats, hidden_valid, m_arch = arch_step(
        state['arch'], state['arch_opt'], state['params'], state['batch_stats'], train_batch,
        valid_batch, k_arch, lr, train_length, valid_length)
    params, _, batch_stats, hidden, m_w = weight_step(
        state['params'], {}, arch, batch_stats, hidden, *train_xy, k_weights, lr, train_length)
    state = {'params': params, 'arch': arch, 'arch_opt': arch_state,
             'batch_stats': batch_stats, 'hidden': all_rows(hidden, axis_name),
             'hidden_valid': all_rows(hidden_valid, axis_name)}
    return state, {**m_w, **m_arch}

  return step


def make_train_step(model, *, alpha: float, beta: float, clip: float, weight_decay: float,
                    optimizer: str, axis_name: Optional[str] = None) -> Callable:
  """step(state, xy, rng, lr, length=None) -> (state, metrics): train.py's batch (SGD or
  ASGD); `axis_name` and `length` as for make_search_step."""
  weight_step = make_weight_step(model, alpha=alpha, beta=beta, clip=clip,
                                 weight_decay=weight_decay, optimizer=optimizer,
                                 axis_name=axis_name)

  def step(state, xy, rng, lr, length=None):
    hidden = own_rows(state['hidden'], xy[0].shape[0], axis_name)
    params, opt, _, hidden, metrics = weight_step(state['params'], state['opt'], None, {},
                                                  hidden, *xy, rng, lr, length)
    return {'params': params, 'opt': opt, 'hidden': all_rows(hidden, axis_name)}, metrics

  return step


def switch_to_asgd(state: Dict, lr: float) -> Dict:
  """The training state after the switch: ASGD from the current weights (base lr)."""
  return {**state, 'opt': asgd_init(state['params'], lr)}


def eval_params(state: Dict):
  """The weights to evaluate: under ASGD the averaged ones (train.py evaluates `ax`)."""
  opt = state.get('opt') or {}
  return opt['ax'] if 'ax' in opt else state['params']


# -------------------------------------------------------------- evaluation


def make_eval_step(model) -> Callable:
  """step(params, arch, batch_stats, hidden, tokens, targets, length=None) -> (summed
  NLL, hidden): evaluation mode (no dropout, BatchNorm on running statistics); length:
  the real steps of a padded window (the padding is not summed)."""

  def step(params, arch, batch_stats, hidden, tokens, targets, length=None):
    out, _ = apply_model(model, params, arch, batch_stats, tokens, hidden, None, False, length)
    picked = jnp.take_along_axis(out.log_probs, targets[..., None], axis=-1)[..., 0]
    mask = model_lib.step_mask(length, tokens.shape[1])
    return -jnp.sum(picked if mask is None else picked * mask), out.hidden

  return step


def evaluate(eval_step: Callable, params, arch, batch_stats, data: np.ndarray,
             bptt: int) -> float:
  """Mean token NLL over a whole [B, N] split, windows of bptt, the hidden state carried
  (its perplexity is exp of it). The reference divides the summed window means by N
  rather than the N - 1 predicted columns; this is the exact token mean."""
  hidden = model_lib.init_hidden(data.shape[0], _nhid(params), _dtype(params))
  total, count = 0.0, 0
  for i in corpus_lib.eval_chunks(data.shape[1], bptt):
    x, y = corpus_lib.get_batch(data, i, bptt)
    summed, hidden = eval_step(params, arch, batch_stats, hidden, jnp.asarray(x), jnp.asarray(y))
    total += float(summed)
    count += y.size
  return total / count


def perplexity(loss: float) -> float:
  return math.exp(min(loss, 700.0))


def _nhid(params) -> int:
  return params['cell']['Ws'].shape[1]


def _dtype(params):
  return params['cell']['Ws'].dtype
