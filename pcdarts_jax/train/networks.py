"""The stand-alone networks a train config can name, by `model.network`:
the DARTS evaluation networks ('cifar', 'imagenet') of a cell genotype, and the
SGNAS network ('sgnas') of an (L, 6) choice matrix."""

from typing import Any, Dict, Optional

import flax.linen as nn

from pcdarts_jax.run import config_fields
from pcdarts_jax.sgnas import network as sgnas_network
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import network as darts_network

SGNAS = 'sgnas'
NETWORKS = darts_network.NETWORKS + (SGNAS,)


def is_sgnas(config) -> bool:
  return config_fields.field(config.model, 'network', 'cifar') == SGNAS


def resolve_architecture(config, name_or_path: Optional[str] = None):
  """What `config.genotype` (or `name_or_path`) names for `config.model.network`:
  a DARTS Genotype (see darts network.resolve_genotype), or for 'sgnas' the (L, 6)
  choices of an SGNAS architecture (a JSON file, a train workdir or an
  architecture string)."""
  name = config.genotype if name_or_path is None else name_or_path
  if is_sgnas(config):
    return sgnas_network.resolve_architecture(config, name)
  return darts_network.resolve_genotype(name)


def architecture_dict(config, architecture) -> Dict[str, Any]:
  """The JSON record of an architecture (a train workdir's genotype.json)."""
  if is_sgnas(config):
    return sgnas_network.architecture_dict(config, architecture)
  return genotypes.to_dict(architecture)


def architecture_json(config, architecture) -> str:
  if is_sgnas(config):
    return sgnas_network.architecture_json(config, architecture)
  return genotypes.to_json(architecture)


def build_network(config, axis_name: Optional[str] = None, genotype=None) -> nn.Module:
  """The network of a train config (`config.model`, `config.genotype`).

  `genotype` overrides `config.genotype`: a name, a genotype.json path or a
  search workdir, or a Genotype; for model.network='sgnas' the architecture's
  (L, 6) choices.
  """
  network = config_fields.field(config.model, 'network', 'cifar')
  if network not in NETWORKS:
    raise ValueError(f'model.network={network!r} is not one of {NETWORKS}.')
  if network == SGNAS:
    choices = resolve_architecture(config) if genotype is None else genotype
    return sgnas_network.build_network(config, choices, axis_name)
  return darts_network.build_network(config, axis_name, genotype)
