"""Import PyTorch DARTS / PC-DARTS checkpoints (search supernet, evaluation
networks) and SGNAS generator checkpoints.

The reference (yuhuixu1993/PC-DARTS `model_search.Network` and its ImageNet twin)
saves a `state_dict` whose key names are PyTorch's module paths of that model.
`supernet_variables` maps those keys onto the variables of
`supernet.build_supernet(config)`; `network_variables` maps the keys of the
reference evaluation networks (model.py `NetworkCIFAR` / `NetworkImageNet`) onto
`network.build_network(config)`. Neither imports torch: the caller hands over
the tensors as numpy arrays (for example
`{k: v.cpu().numpy() for k, v in state_dict.items()}`).

The expected structure comes from `jax.eval_shape` of the model itself, so every
Flax leaf is filled from exactly one PyTorch tensor (per edge, for the stacked edge
parameters), every PyTorch tensor is used, and any mismatch is a one-line
ValueError naming the offending key.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.spaces.darts import supernet
from pcdarts_jax.spaces.darts import cell_parts

# Flax leaf name -> PyTorch parameter/buffer name.
_LEAF_NAMES = {
    'kernel': 'weight',
    'scale': 'weight',
    'bias': 'bias',
    'mean': 'running_mean',
    'var': 'running_var',
}

# Stem modules: CIFAR `stem` = Sequential(conv, BN); ImageNet `stem0` =
# Sequential(conv, BN, ReLU, conv, BN) and `stem1` = Sequential(ReLU, conv, BN).
_STEM_MODULES = {
    'stem_conv': 'stem.0',
    'stem_bn': 'stem.1',
    'stem0_conv1': 'stem0.0',
    'stem0_bn1': 'stem0.1',
    'stem0_conv2': 'stem0.3',
    'stem0_bn2': 'stem0.4',
    'stem1_conv': 'stem1.1',
    'stem1_bn': 'stem1.2',
}

# ReLUConvBN is Sequential(ReLU, conv, BN): its children sit at op.1 / op.2.
_RELU_CONV_BN = {'conv': 'op.1', 'bn': 'op.2'}
# FactorizedReduce keeps its attribute names.
_FACTORIZED_REDUCE = {'conv_1': 'conv_1', 'conv_2': 'conv_2', 'bn': 'bn'}
# SepConv.op = Sequential(ReLU, dw, pw, BN, ReLU, dw, pw, BN).
_SEP_CONV = {'dw1': 'op.1', 'pw1': 'op.2', 'bn1': 'op.3',
             'dw2': 'op.5', 'pw2': 'op.6', 'bn2': 'op.7'}
# DilConv.op = Sequential(ReLU, dw, pw, BN).
_DIL_CONV = {'dw': 'op.1', 'pw': 'op.2', 'bn': 'op.3'}
# The search mixed op wraps each pool as Sequential(pool, BN).
_SEARCH_POOL = {'bn': '1'}
# conv_7x1_1x7 is a bare Sequential(ReLU, conv 1x7, conv 7x1, BN).
_CONV_7x1_1x7 = {'conv_1x7': '1', 'conv_7x1': '2', 'bn': '3'}


def _op_modules(primitive: str, stride: int) -> Dict[str, str]:
  """Flax submodule name -> PyTorch submodule path inside one candidate op."""
  if primitive in ('max_pool_3x3', 'avg_pool_3x3'):
    return _SEARCH_POOL
  if primitive == 'skip_connect':
    # Identity at stride 1 has no variables, so any name found is an error.
    return _FACTORIZED_REDUCE if stride == 2 else {}
  if primitive.startswith('sep_conv_'):
    return _SEP_CONV
  if primitive.startswith('dil_conv_'):
    return _DIL_CONV
  if primitive == 'conv_7x1_1x7':
    return _CONV_7x1_1x7
  return {}


def _reduction_prev(model: supernet.SearchNetwork, cell: int) -> bool:
  """Whether cell `cell` reads a reduced s0 (preprocess0 is a FactorizedReduce)."""
  if cell == 0:
    return model.stem == 'imagenet'  # Its stem halves s0 -> s1, like a reduction.
  return (cell - 1) in supernet.reduction_layers(model.layers)


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  """PyTorch layout -> Flax layout for one tensor (or one edge's slice)."""
  if leaf == 'kernel' and value.ndim == 4:
    # OIHW -> HWIO. Depthwise (C, 1, k, k) -> (k, k, 1, C) and 1x1 (O, I, 1, 1)
    # -> (1, 1, I, O) are the same transpose.
    return value.transpose(2, 3, 1, 0)
  if leaf == 'kernel' and value.ndim == 2:
    return value.T  # Linear (out, in) -> Dense (in, out).
  return value


def _torch_shape(flax_shape: Tuple[int, ...], leaf: str) -> Tuple[int, ...]:
  """The PyTorch shape whose `_to_flax` image is `flax_shape`."""
  if leaf == 'kernel' and len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if leaf == 'kernel' and len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _flax_name(collection: str, path: Tuple[str, ...], index: Optional[int]) -> str:
  name = f'{collection}/' + '/'.join(path)
  return name if index is None else f'{name}[{index}]'


def _plan(model: supernet.SearchNetwork, collection: str, path: Tuple[str, ...],
          shape: Tuple[int, ...]) -> List[Tuple[str, Optional[int]]]:
  """The PyTorch keys that fill one Flax leaf, as (key, edge position or None).

  Edge parameters are stacked along a leading axis (one row per edge of the
  group, see `cell_parts.edge_groups`); each row comes from its own edge's key.
  """
  where = _flax_name(collection, path, None)
  unknown = ValueError(f'no PyTorch name is known for the Flax variable {where}.')
  leaf = path[-1]
  if leaf not in _LEAF_NAMES:
    raise unknown
  suffix = _LEAF_NAMES[leaf]
  top = path[0]
  if top in _STEM_MODULES and len(path) == 2:
    return [(f'{_STEM_MODULES[top]}.{suffix}', None)]
  if top == 'classifier' and len(path) == 2:
    return [(f'classifier.{suffix}', None)]
  if not top.startswith('cell_') or len(path) < 4:
    raise unknown
  cell = int(top[len('cell_'):])
  part = path[1]
  if part in ('preprocess0', 'preprocess1') and len(path) == 4:
    factorized = part == 'preprocess0' and _reduction_prev(model, cell)
    modules = _FACTORIZED_REDUCE if factorized else _RELU_CONV_BN
    if path[2] not in modules:
      raise unknown
    return [(f'cells.{cell}.{part}.{modules[path[2]]}.{suffix}', None)]
  groups = dict(cell_parts.edge_groups(model.steps))
  if part not in groups or len(path) != 5 or path[2] not in model.primitives:
    raise unknown
  primitive, module = path[2], path[3]
  reduction = cell in supernet.reduction_layers(model.layers)
  stride = 2 if reduction and part == 'input_edges' else 1
  modules = _op_modules(primitive, stride)
  if module not in modules:
    raise unknown
  members = groups[part]
  if not shape or shape[0] != len(members):
    raise ValueError(f'{where} has shape {shape}; expected a leading axis of '
                     f'{len(members)} edges ({part}).')
  k = list(model.primitives).index(primitive)
  return [(f'cells.{cell}._ops.{edge}._ops.{k}.{modules[module]}.{suffix}', pos)
          for pos, (edge, _, _) in enumerate(members)]


def _strip_data_parallel(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """Drops the `module.` prefix nn.DataParallel adds (the ImageNet search uses it)."""
  if state_dict and all(k.startswith('module.') for k in state_dict):
    return {k[len('module.'):]: v for k, v in state_dict.items()}
  return state_dict


def _one_line(kind: str, keys: List[str], detail: str = '') -> str:
  more = f' (and {len(keys) - 1} more)' if len(keys) > 1 else ''
  return f'{kind} {keys[0]!r}{detail}{more}.'


def _convert_arch(arch: Mapping[str, Any], expected: Mapping[str, Any],
                  edge_normalization: bool) -> Dict[str, jax.Array]:
  if arch is None or not hasattr(arch, 'keys'):
    raise ValueError(f'arch must be a mapping with {sorted(expected)}; got {type(arch).__name__}.')
  missing = [n for n in expected if n not in arch]
  if missing:
    why = '' if not missing[0].startswith('betas') else \
        ' (config.model.edge_normalization is true)'
    raise ValueError(f'arch lacks {missing[0]!r}{why}; expected {sorted(expected)}.')
  extra = sorted(n for n in arch if n not in expected)
  if extra:
    hint = (' (betas are only used with config.model.edge_normalization=True)'
            if not edge_normalization and extra[0].startswith('betas') else '')
    raise ValueError(f'arch has unexpected entry {extra[0]!r}{hint}; '
                     f'expected {sorted(expected)}.')
  out = {}
  for name, spec in expected.items():
    value = np.asarray(arch[name], np.float32)
    if value.shape != tuple(spec.shape):
      raise ValueError(f'arch[{name!r}] has shape {value.shape}; expected '
                       f'{tuple(spec.shape)}.')
    out[name] = jnp.asarray(value)
  return out


def _load(shapes: Mapping[str, Any], plan, state_dict: Mapping[str, Any],
          what: str, check: str = 'config.model') -> Dict[str, Any]:
  """Fills the `params` and `batch_stats` leaves of `shapes` from `state_dict`.

  `plan(collection, path, shape)` gives the PyTorch keys of one Flax leaf as
  [(key, row or None)]: a whole leaf, or one row of a stacked leaf per key.
  Every leaf must be filled exactly once and every tensor used (BN
  `num_batches_tracked` counters of loaded BNs excepted); the first missing,
  misshapen or unexpected key is reported by name.
  """
  missing, consumed = [], set()
  shape_errors = []
  converted = {}
  for collection in ('params', 'batch_stats'):
    flat = flax.traverse_util.flatten_dict(shapes.get(collection, {}))
    buffers = {}
    for path, spec in flat.items():
      shape = tuple(spec.shape)
      buffer = np.zeros(shape, np.float32)
      entries = plan(collection, path, shape)
      # How many times each row (or the whole leaf) was written.
      filled = np.zeros(shape[0] if entries[0][1] is not None else 1, np.int32)
      for key, index in entries:
        target = shape[1:] if index is not None else shape
        if key not in state_dict:
          missing.append((key, _flax_name(collection, path, index)))
          continue
        value = np.asarray(state_dict[key], np.float32)
        expected = _torch_shape(target, path[-1])
        if value.shape != expected:
          shape_errors.append((key, value.shape, expected))
          continue
        consumed.add(key)
        if index is None:
          buffer[...] = _to_flax(value, path[-1])
          filled[0] += 1
        else:
          buffer[index] = _to_flax(value, path[-1])
          filled[index] += 1
      if not missing and not shape_errors and not np.all(filled == 1):
        # A mapping bug (two keys for one row, or a row with none), not bad input.
        raise RuntimeError(f'{_flax_name(collection, path, None)} was filled '
                           f'{filled.tolist()} times; expected once per row.')
      buffers[path] = buffer
    converted[collection] = buffers

  if missing:
    key, needed_for = missing[0]
    more = f' (and {len(missing) - 1} more missing keys)' if len(missing) > 1 else ''
    raise ValueError(f'state_dict lacks {key!r} (needed for {needed_for}){more}.')
  if shape_errors:
    key, got, expected = shape_errors[0]
    more = f' (and {len(shape_errors) - 1} more)' if len(shape_errors) > 1 else ''
    raise ValueError(f'state_dict[{key!r}] has shape {tuple(got)}; expected '
                     f'{expected}{more}.')
  # A BN's step counter is meaningless here, but only for BNs we did load.
  loaded_bns = {k[:-len('.running_mean')] for k in consumed
                if k.endswith('.running_mean')}
  unexpected = sorted(
      k for k in state_dict if k not in consumed and not (
          k.endswith('.num_batches_tracked') and
          k[:-len('.num_batches_tracked')] in loaded_bns))
  if unexpected:
    raise ValueError(_one_line(
        'state_dict has unexpected key', unexpected,
        f' (not a variable of this {what}: check {check})'))
  return {name: flax.traverse_util.unflatten_dict(
      {p: jnp.asarray(v) for p, v in leaves.items()})
          for name, leaves in converted.items() if leaves}


def supernet_variables(state_dict: Mapping[str, Any], arch: Mapping[str, Any],
                       config) -> Dict[str, Any]:
  """Flax variables for `supernet.build_supernet(config)` from PyTorch tensors.

  Args:
    state_dict: key -> array, the reference search network's `state_dict()`
      (the reference's names; a uniform `module.` prefix is dropped). BN
      `num_batches_tracked` buffers are ignored.
    arch: `alphas_normal`, `alphas_reduce` (edges, ops) and, when the model
      uses edge normalization, `betas_normal`, `betas_reduce` (edges,).
    config: a config with `model` fields (or the model fields themselves).

  Returns:
    {'params', 'batch_stats', 'arch'} of float32 jnp arrays, ready for
    `model.apply(variables, x, train=False)`.

  Raises:
    ValueError: a key is missing, unused, or has the wrong shape (the message
      names it), or the arch entries do not match the model.
  """
  model = supernet.build_supernet(config)
  state_dict = _strip_data_parallel(state_dict)
  shapes = flax.core.unfreeze(jax.eval_shape(
      lambda rng, x: model.init(rng, x, train=False),
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.float32)))
  out = _load(shapes, lambda c, p, s: _plan(model, c, p, s), state_dict, 'supernet')
  out['arch'] = _convert_arch(arch, shapes.get('arch', {}), bool(model.edge_normalization))
  return out


# The evaluation networks' auxiliary head: `features` = Sequential(ReLU, AvgPool,
# conv 1x1, BN, ReLU, conv 2x2, BN, ReLU) on CIFAR; ImageNet lacks the second BN
# (its ReLU sits at index 6). `classifier` keeps its name.
_AUX_HEAD = {'conv1': 'features.2', 'bn1': 'features.3', 'conv2': 'features.5',
             'bn2': 'features.6', 'classifier': 'classifier'}
# Evaluation-cell ops: pools have no variables (no BN after them, unlike the search).
_EVAL_OPS = {'skip_connect': _FACTORIZED_REDUCE, 'conv_7x1_1x7': _CONV_7x1_1x7}


def _network_plan(model, collection: str, path: Tuple[str, ...]) -> List[Tuple[str, None]]:
  """The PyTorch key of one Flax leaf of an evaluation network (model.py naming)."""
  from pcdarts_jax.spaces.darts import network  # pylint: disable=g-import-not-at-top
  where = _flax_name(collection, path, None)
  unknown = ValueError(f'no PyTorch name is known for the Flax variable {where}.')
  leaf = path[-1]
  if leaf not in _LEAF_NAMES:
    raise unknown
  suffix = _LEAF_NAMES[leaf]
  top = path[0]
  if top in _STEM_MODULES and len(path) == 2:
    return [(f'{_STEM_MODULES[top]}.{suffix}', None)]
  if top == 'classifier' and len(path) == 2:
    return [(f'classifier.{suffix}', None)]
  if top == network.AUXILIARY and len(path) == 3 and path[1] in _AUX_HEAD:
    return [(f'auxiliary_head.{_AUX_HEAD[path[1]]}.{suffix}', None)]
  if not top.startswith('cell_') or len(path) != 4:
    raise unknown
  cell, part, module = int(top[len('cell_'):]), path[1], path[2]
  if part in ('preprocess0', 'preprocess1'):
    reduction_prev = (isinstance(model, network.NetworkImageNet) if cell == 0 else
                      cell - 1 in network.reduction_layers(model.layers))
    modules = (_FACTORIZED_REDUCE if part == 'preprocess0' and reduction_prev
               else _RELU_CONV_BN)
  elif part.startswith('op_'):
    j = int(part[len('op_'):])
    reduction = cell in network.reduction_layers(model.layers)
    primitive, _ = (model.genotype.reduce if reduction else model.genotype.normal)[j]
    if primitive.startswith('sep_conv_'):
      modules = _SEP_CONV
    elif primitive.startswith('dil_conv_'):
      modules = _DIL_CONV
    else:
      modules = _EVAL_OPS.get(primitive, {})
  else:
    raise unknown
  if module not in modules:
    raise unknown
  return [(f'cells.{cell}.{part.replace("op_", "_ops.")}.{modules[module]}.{suffix}', None)]


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """key -> numpy array of a saved state_dict: a .npz of its arrays, or a torch
  file (`torch.save(model.state_dict())`, or a checkpoint dict holding one under
  `state_dict`); torch is imported only for the latter."""
  if path.endswith('.npz'):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f'{path!r} needs PyTorch to read (pip install torch); or convert it '
                     f'elsewhere to a .npz of its state_dict arrays.') from None
  loaded = torch.load(path, map_location='cpu')
  # DARTS saves the state_dict bare or under `state_dict`; SGNAS under `model`.
  for wrapper in ('state_dict', 'model'):
    if isinstance(loaded.get(wrapper), dict):
      loaded = loaded[wrapper]
      break
  return {k: v.cpu().numpy() for k, v in loaded.items()}


def network_variables(state_dict: Mapping[str, Any], genotype, config) -> Dict[str, Any]:
  """Flax variables for `network.build_network(config, genotype=genotype)` from a
  reference evaluation network's state_dict (DARTS / PC-DARTS model.py:
  NetworkCIFAR or NetworkImageNet), so published checkpoints run in JAX.

  Args:
    state_dict: key -> array (`stem.*` or `stem0.*`/`stem1.*`,
      `cells.{i}.preprocess{0,1}.*`, `cells.{i}._ops.{j}.*`, `auxiliary_head.*`,
      `classifier.*`); a uniform `module.` prefix (nn.DataParallel) is dropped,
      BN `num_batches_tracked` buffers are ignored. With
      config.model.auxiliary=False, `auxiliary_head.*` keys are ignored too.
    genotype: the cells of the checkpoint (a Genotype).
    config: a train config (`model` fields; `data.name` gives the input size).

  Returns:
    {'params', 'batch_stats'} of float32 jnp arrays.

  Raises:
    ValueError: a key is missing, unused, or has the wrong shape (named).
  """
  from pcdarts_jax.spaces.darts import network  # pylint: disable=g-import-not-at-top
  model = network.build_network(config, genotype=genotype)
  state_dict = _strip_data_parallel(state_dict)
  if not model.auxiliary:  # A checkpoint trained with the head still evaluates.
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith('auxiliary_head.')}
  shapes = network.variable_shapes(model, network.input_shape(config))
  return _load(shapes, lambda c, p, s: _network_plan(model, c, p), state_dict,
               'evaluation network')


# SGNAS generator (eric8607242/SGNAS utils/generator.py `SinGenerator`): Flax
# submodule -> PyTorch module. ConvRelu = Sequential(conv, relu); tail = Sequential(conv).
def _sgnas_generator_module(name: str) -> Optional[str]:
  for flax_prefix, torch_prefix in (('target_head_', 'hc_head.'), ('prior_head_', 'bb_head.')):
    if name.startswith(flax_prefix):
      return f'{torch_prefix}{name[len(flax_prefix):]}.conv'
  if name.startswith('body_'):
    return f'body.block{int(name[len("body_"):]) + 1}.conv'
  return {'head': 'head.conv', 'tail': 'tail.0'}.get(name)


def sgnas_generator_params(state_dict: Mapping[str, Any], generator) -> Dict[str, Any]:
  """Flax params for `sgnas.generator.Generator` from the reference generator's
  state_dict (`hc_head.{0,1,2}.conv.weight`, `bb_head.{0,1}.conv.weight`,
  `head.conv.weight`, `body.block{1,2,3}.conv.weight`, `tail.0.weight`,
  `tail.0.bias`; e.g. the `model` entry of pretrained/imagenet/best_avg.pth, or
  `read_state_dict` of it). A uniform `module.` prefix is dropped.

  Returns the variables ({'params': ...}) for `generator.apply`. Raises
  ValueError naming the first missing, misshapen or unexpected key.
  """
  from pcdarts_jax.sgnas import layout as layout_lib  # pylint: disable=g-import-not-at-top
  state_dict = _strip_data_parallel(state_dict)
  prior = jnp.zeros((1, 1, layout_lib.GROUPS, layout_lib.NUM_CHOICES), jnp.float32)
  shapes = flax.core.unfreeze(jax.eval_shape(generator.init, jax.random.PRNGKey(0), prior,
                                             jnp.zeros((1,), jnp.float32)))

  def plan(collection, path, shape):
    del shape
    module = _sgnas_generator_module(path[0]) if len(path) == 2 else None
    if module is None or path[-1] not in ('kernel', 'bias'):
      raise ValueError(f'no PyTorch name is known for the Flax variable '
                       f'{_flax_name(collection, path, None)}.')
    return [(f'{module}.{_LEAF_NAMES[path[-1]]}', None)]

  return _load(shapes, plan, state_dict, 'SGNAS generator',
               'generator.hidden, generator.body_layers, generator.target_channels')
