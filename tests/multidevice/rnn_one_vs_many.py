"""RNN search and training steps on 1 device vs N devices, same global windows (run
in its own process: XLA_FLAGS=--xla_force_host_platform_device_count=N precedes
jax's start).

  python tests/multidevice/rnn_one_vs_many.py ARCHITECT STEPS

Prints one JSON line: the max abs differences of the search state (weights, arch,
Adam, BatchNorm statistics, both hidden states) and its metric sums after STEPS
bilevel steps, and of the training state after STEPS SGD and STEPS ASGD steps;
windows of sampled lengths padded to one shape, and a capped arch window. With
dropout on: each device's masks are its rows of the whole batch's.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import rnn_ptb_train
from configs import rnn_pydoc_search
from pcdarts_jax.rnn import lm
from pcdarts_jax.rnn import search
from pcdarts_jax.rnn import train
from pcdarts_jax.run import parallel
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import genotypes
from pcdarts_jax.spaces.rnn import model as model_lib
from pcdarts_jax.spaces.rnn import steps

BATCH, BPTT = 4, 6
LENGTHS = (6, 3, 5, 6)  # sampled lengths, padded to BPTT


def tiny(config):
  config.model.emsize = config.model.nhid = 8
  config.model.steps = 2
  return config


def windows(stream, k):
  return lm.window(stream, 1 + k * BPTT, LENGTHS[k % len(LENGTHS)], BPTT, BPTT)


def sharded(devices, *arrays):
  return [parallel.shard(a, len(devices)) for a in arrays]


def run_search(config, corpus, devices, n):
  model = model_lib.build_model(corpus.ntokens, config.model)
  step_model = model_lib.build_model(corpus.ntokens, config.model, None, parallel.AXIS)
  opt = search.arch_optimizer(config)
  state = lm.LMState(step=jnp.zeros((), jnp.int32),
                     core=steps.init_search_state(model, jax.random.PRNGKey(0), BATCH, opt))
  step = parallel.pmap_step(search.make_step(step_model, config, opt, parallel.AXIS),
                            search.STEP_IN_AXES, devices=devices)
  state = parallel.replicate(state, devices)
  train_stream = corpus_lib.batchify(corpus.train, BATCH)
  arch_stream = corpus_lib.batchify(corpus.valid, BATCH)
  sums = []
  for k in range(n):
    x, y, length = windows(train_stream, k)
    # The last arch window is capped by the stream's end (4 real steps of 6).
    j = arch_stream.shape[1] - 5 if k == n - 1 else k * BPTT
    ax, ay, arch_length = lm.window(arch_stream, j, BPTT, BPTT, BPTT)
    state, m = step(state, *sharded(devices, x, y, ax, ay), np.int32(length),
                    np.int32(arch_length), np.bool_(k == 0), jax.random.PRNGKey(k),
                    np.float32(20.0 * LENGTHS[k % len(LENGTHS)] / BPTT))
    sums.append(jax.device_get(parallel.unreplicate(m)))
  return jax.device_get(parallel.unreplicate(state)), sums


def run_train(config, corpus, devices, n):
  genotype = genotypes.make([('relu', 0), ('tanh', 1)])
  model = model_lib.build_model(corpus.ntokens, config.model, genotype)
  step_model = model_lib.build_model(corpus.ntokens, config.model, genotype, parallel.AXIS)
  state = parallel.replicate(train.init_state(model, config, jax.random.PRNGKey(0)), devices)
  stream = corpus_lib.batchify(corpus.train, BATCH)
  sums = []
  for name in ('sgd', 'asgd'):
    step = parallel.pmap_step(train.make_step(step_model, config, name, parallel.AXIS),
                              train.STEP_IN_AXES, devices=devices)
    for k in range(n):
      x, y, length = windows(stream, k)
      state, m = step(state, *sharded(devices, x, y), np.int32(length), np.bool_(k == 0),
                      jax.random.PRNGKey(k), np.float32(20.0))
      sums.append(jax.device_get(parallel.unreplicate(m)))
  return jax.device_get(parallel.unreplicate(state)), sums


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  architect, n = sys.argv[1], int(sys.argv[2])
  search_config = tiny(rnn_pydoc_search.get_config())
  search_config.search.architect = architect
  train_config = tiny(rnn_ptb_train.get_config())
  train_config.train.batch_size = BATCH
  corpus = corpus_lib.load_corpus(search_config.data)
  devices = jax.local_devices()
  out = {'devices': len(devices)}
  one, many = run_search(search_config, corpus, devices[:1], n), run_search(
      search_config, corpus, devices, n)
  out.update({f'search_{k}': max_diff(one[0].core[k], many[0].core[k]) for k in one[0].core})
  out['search_sums'] = max_diff(one[1], many[1])
  out['search_arch_moved'] = max_diff(one[0].core['arch'], run_search(
      search_config, corpus, devices[:1], 0)[0].core['arch'])
  one, many = run_train(train_config, corpus, devices[:1], n), run_train(
      train_config, corpus, devices, n)
  out.update({f'train_{k}': max_diff(one[0].core[k], many[0].core[k]) for k in one[0].core})
  out['train_sums'] = max_diff(one[1], many[1])
  print(json.dumps(out))


if __name__ == '__main__':
  main()
