"""The DARTS / PC-DARTS cell space (Liu et al. ICLR 2019; Xu et al. ICLR 2020):
an adapter over the existing supernet, genotype, monitor, visualize and network
modules."""

from typing import Optional

from pcdarts_jax import genotypes
from pcdarts_jax import monitor
from pcdarts_jax import network
from pcdarts_jax import progressive
from pcdarts_jax import supernet
from pcdarts_jax import visualize

Genotype = genotypes.Genotype


def build_supernet(config, axis_name: Optional[str] = None, **overrides):
  """`overrides`: supernet.build_supernet's stage overrides (`partial_channels`,
  `op_masks`)."""
  return supernet.build_supernet(config, axis_name, **overrides)


def derive(arch, model) -> Genotype:
  """Pruned ops (a progressive-learning stage's masks) are never picked."""
  masks = dict(model.op_masks) if model.op_masks is not None else None
  return genotypes.derive_genotype(progressive.masked_arch_for_genotype(arch, masks),
                                   model.primitives, model.steps)


def prune_masks(arch, keep: int, previous=None):
  return progressive.prune_masks(arch, keep, previous)


def cell_channels(model, cell: int) -> int:
  """Channels of search cell `cell` (doubled at each reduction cell)."""
  return model.init_channels * 2 ** sum(cell >= r for r in supernet.reduction_layers(
      model.layers))


def edge_stride(model, cell: int, edge: int) -> int:
  reduction = cell in supernet.reduction_layers(model.layers)
  return 2 if reduction and progressive.edge_input(edge, model.steps) < 2 else 1


def genotype_to_dict(genotype: Genotype) -> dict:
  return genotypes.to_dict(genotype)


def genotype_from_dict(d) -> Genotype:
  return genotypes.from_dict(d)


def genotype_str(genotype: Genotype) -> str:
  return str(genotype)


def arch_scalars(arch, model):
  return monitor.arch_scalars(arch, model.primitives, model.steps)


def draw(genotype: Genotype, prefix: str):
  return visualize.draw_genotype(genotype, prefix)


def heatmap(arch, model, path: str, title: Optional[str] = None):
  return visualize.arch_heatmap(arch, model.primitives, model.steps, path, title=title)


def build_network(genotype: Genotype, config, axis_name: Optional[str] = None):
  return network.build_network(config, axis_name=axis_name, genotype=genotype)
