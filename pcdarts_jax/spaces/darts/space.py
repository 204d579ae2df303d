"""The DARTS / PC-DARTS cell space (Liu et al. ICLR 2019; Xu et al. ICLR 2020):
an adapter over the existing supernet, genotype, monitor, visualize and network
modules."""

from typing import Dict, Optional, Sequence

import numpy as np

from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.nn import ops
from pcdarts_jax.run import config_fields
from pcdarts_jax.spaces.darts import cell_parts
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.spaces.darts import supernet
from pcdarts_jax.spaces.darts import visualize

Genotype = genotypes.Genotype


def validate_model(config):
  """model.* of the supernet (ConfigErrors naming the field and the allowed
  values): sizes, stem, dtype, depthwise form, channel sampling, edge layout
  (and its merged separable convs) and channel mixing, and the image size its
  reductions need. Every darts and nb201 search config carries these fields
  (nb201 reads init_channels, partial_channels and dtype of them), so both are
  checked."""
  d, m = config.data, config.model
  require, is_int = config_fields.require, config_fields.is_int
  for field in ('init_channels', 'layers', 'partial_channels', 'steps', 'multiplier',
                'stem_multiplier'):
    value = m[field]
    require(is_int(value) and value >= 1, f'model.{field}={value!r} must be an integer >= 1.')
  k, c = m.partial_channels, m.init_channels
  require(c % k == 0,
          f'model.partial_channels={k} must divide model.init_channels={c} '
          f'(allowed: divisors of {c}: {[i for i in range(1, c + 1) if c % i == 0]}).')
  require(m.stem in supernet.STEM_TYPES,
          f'model.stem={m.stem!r} is not one of {supernet.STEM_TYPES}.')
  config_fields.require_dtype(m.dtype)
  require(m.depthwise_impl in ops.DEPTHWISE_IMPLS,
          f'model.depthwise_impl={m.depthwise_impl!r} is not one of {ops.DEPTHWISE_IMPLS}.')
  sampling = m.channel_sampling
  require(sampling in supernet.CHANNEL_SAMPLINGS,
          f'model.channel_sampling={sampling!r} is not one of {supernet.CHANNEL_SAMPLINGS}.')
  try:
    supernet.resolve_edge_impl(m.edge_impl, sampling,
                               m.get('primitives', genotypes.PRIMITIVES))
  except ValueError as e:
    raise config_fields.ConfigError(str(e)) from None
  require(not m.get('merge_separable', False) or m.edge_impl == 'grouped',
          f"model.merge_separable=True is a form of the grouped layout: it needs "
          f"model.edge_impl='grouped' (got {m.edge_impl!r}).")
  mixing = m.channel_mixing
  require(mixing in cell_parts.CHANNEL_MIXINGS,
          f'model.channel_mixing={mixing!r} is not one of {cell_parts.CHANNEL_MIXINGS}.')
  require(mixing != 'shift' or sampling != 'reference_random',
          "model.channel_mixing='shift' has no effect with model.channel_sampling="
          "'reference_random', which (as the reference's model_search_random.py) permutes "
          "no channel after the concat; leave channel_mixing at 'shuffle'.")
  reductions = 2 + (3 if m.stem == 'imagenet' else 0)
  input_pipeline.require_image_size(d, reductions,
                                    f'model.stem={m.stem!r} with two reduction cells')


def build_supernet(config, axis_name: Optional[str] = None, **overrides):
  """`overrides`: supernet.build_supernet's stage overrides (`partial_channels`,
  `op_masks`) and the search's `depthwise_impl`."""
  return supernet.build_supernet(config, axis_name, **overrides)


def derive(arch, model) -> Genotype:
  """Pruned ops (a progressive-learning stage's masks) are never picked."""
  masks = dict(model.op_masks) if model.op_masks is not None else None
  return genotypes.derive_genotype(masked_arch_for_genotype(arch, masks),
                                   model.primitives, model.steps)


def cell_channels(model, cell: int) -> int:
  """Channels of search cell `cell` (doubled at each reduction cell)."""
  return model.init_channels * 2 ** sum(cell >= r for r in supernet.reduction_layers(
      model.layers))


def edge_stride(model, cell: int, edge: int) -> int:
  reduction = cell in supernet.reduction_layers(model.layers)
  return 2 if reduction and edge_input(edge, model.steps) < 2 else 1


def genotype_to_dict(genotype: Genotype) -> dict:
  return genotypes.to_dict(genotype)


def genotype_from_dict(d) -> Genotype:
  return genotypes.from_dict(d)


def genotype_str(genotype: Genotype) -> str:
  return str(genotype)


def genotype_edges(genotype: Genotype) -> Dict[str, list]:
  """{cell type: [(node, input, op)]}: the kept edges, two per node; nodes are
  numbered after the cell's two inputs (2, 3, ...), as the inputs count them."""
  return {kind: [(2 + k // 2, int(j), op) for k, (op, j) in enumerate(getattr(genotype, kind))]
          for kind in ('normal', 'reduce')}


def arch_scalars(arch, model):
  return edge_scalars(arch, model.primitives, model.steps)


def draw(genotype: Genotype, prefix: str):
  return visualize.draw_genotype(genotype, prefix)


def heatmap(arch, model, path: str, title: Optional[str] = None):
  return visualize.arch_heatmap(arch, model.primitives, model.steps, path, title=title)


def build_network(genotype: Genotype, config, axis_name: Optional[str] = None):
  return network.build_network(config, axis_name=axis_name, genotype=genotype)


def prune_masks(arch: Dict[str, np.ndarray], keep: int,
                previous: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
  """Per cell type and edge, 1 for the `keep` ops of largest alpha among those
  still kept (ties: the lower op index), 0 elsewhere."""
  masks = {}
  for kind in ('normal', 'reduce'):
    alphas = np.asarray(arch[f'alphas_{kind}'], np.float64)
    if previous is not None:
      alphas = np.where(np.asarray(previous[kind]) > 0, alphas, -np.inf)
    order = np.argsort(-alphas, axis=-1, kind='stable')[:, :keep]
    mask = np.zeros(alphas.shape, np.int32)
    np.put_along_axis(mask, order, 1, axis=-1)
    masks[kind] = mask
  return masks


def edge_input(edge: int, steps: int) -> int:
  """The input state index j of DARTS cell edge `edge` (0, 1: the cell inputs)."""
  for start, end in genotypes.node_edge_ranges(steps):
    if start <= edge < end:
      return edge - start
  raise ValueError(f'edge {edge} is out of range.')


def masked_arch_for_genotype(arch: Dict[str, np.ndarray],
                             masks: Optional[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
  """Arch values with pruned ops at -inf, so that genotype derivation (softmax,
  then top edges and ops) only picks kept ops."""
  if masks is None:
    return arch
  out = dict(arch)
  for kind in ('normal', 'reduce'):
    out[f'alphas_{kind}'] = np.where(np.asarray(masks[kind]) > 0,
                                     np.asarray(arch[f'alphas_{kind}'], np.float64), -1e30)
  return out


def edge_scalars(arch: Dict[str, np.ndarray], primitives: Sequence[str],
                 steps: int) -> Dict[str, float]:
  """Mean per-edge entropy of softmax(alpha) per cell, every edge's op weights,
  and the normalised betas (when edge normalization is on)."""
  labels = visualize.edge_labels(steps)
  values = {}
  for cell in ('normal', 'reduce'):
    weights = genotypes.cell_weights(arch[f'alphas_{cell}'])
    entropy = -np.sum(weights * np.log(np.maximum(weights, 1e-12)), axis=-1)
    values[f'arch/{cell}/entropy'] = float(entropy.mean())
    for e, label in enumerate(labels):
      for k, op in enumerate(primitives):
        values[f'alpha_{cell}/edge_{label}/{op}'] = float(weights[e, k])
    if f'betas_{cell}' in arch:
      betas = genotypes.edge_weights(arch[f'betas_{cell}'], steps)
      for e, label in enumerate(labels):
        values[f'beta_{cell}/edge_{label}'] = float(betas[e])
  return values
