"""The stand-alone networks a train config can name, by `model.network`:
the DARTS evaluation networks ('cifar', 'imagenet') of a cell genotype, the
SGNAS network ('sgnas') of an (L, 6) choice matrix, and the NAS-Bench-201
network ('nb201') of an NB-201 cell genotype."""

import json
import os
from typing import Any, Dict, Optional

import flax.linen as nn

from pcdarts_jax.run import config_fields
from pcdarts_jax.sgnas import network as sgnas_network
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import network as darts_network
from pcdarts_jax.spaces.nb201 import space as nb201_space

SGNAS = 'sgnas'
NB201 = 'nb201'
NETWORKS = darts_network.NETWORKS + (SGNAS, NB201)
NB201_FORM = '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'


def is_sgnas(config) -> bool:
  return config_fields.field(config.model, 'network', 'cifar') == SGNAS


def is_nb201(config) -> bool:
  return config_fields.field(config.model, 'network', 'cifar') == NB201


def resolve_nb201_genotype(name_or_path) -> nb201_space.Genotype:
  """An NB-201 genotype from its string (`|op~0|+|op~0|op~1|+|...|`), a
  genotype.json (as an NB-201 search or training writes it: {"arch_str": ...}),
  or a search / train workdir holding one. Raises ValueError."""
  if not isinstance(name_or_path, str):
    return nb201_space.parse(nb201_space.genotype_str(name_or_path))
  text = name_or_path.strip()
  if '~' in text and '|' in text:
    return nb201_space.parse(text)
  path = os.path.join(text, 'genotype.json') if os.path.isdir(text) else text
  if not os.path.isfile(path):
    raise ValueError(f'{text!r} is neither an NB-201 genotype string ({NB201_FORM!r}) nor '
                     f'a genotype.json or a workdir holding one.')
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} does not read as JSON: {e}') from None
  if not isinstance(record, dict) or not ({'arch_str', 'nodes'} & set(record)):
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    hint = (" (a DARTS-space genotype: train it with model.network='cifar')"
            if isinstance(record, dict) and 'normal' in record else '')
    raise ValueError(f'{path} holds no NB-201 genotype ("arch_str" or "nodes"); got '
                     f'{keys}{hint}.')
  return nb201_space.genotype_from_dict(record)


def resolve_architecture(config, name_or_path: Optional[str] = None):
  """What `config.genotype` (or `name_or_path`) names for `config.model.network`:
  a DARTS Genotype (see darts network.resolve_genotype), or for 'sgnas' the (L, 6)
  choices of an SGNAS architecture (a JSON file, a train workdir or an
  architecture string), for 'nb201' an NB-201 genotype (resolve_nb201_genotype)."""
  name = config.genotype if name_or_path is None else name_or_path
  if is_sgnas(config):
    return sgnas_network.resolve_architecture(config, name)
  if is_nb201(config):
    return resolve_nb201_genotype(name)
  return darts_network.resolve_genotype(name)


def architecture_dict(config, architecture) -> Dict[str, Any]:
  """The JSON record of an architecture (a train workdir's genotype.json)."""
  if is_sgnas(config):
    return sgnas_network.architecture_dict(config, architecture)
  if is_nb201(config):
    return nb201_space.genotype_to_dict(architecture)
  return genotypes.to_dict(architecture)


def architecture_json(config, architecture) -> str:
  if is_sgnas(config):
    return sgnas_network.architecture_json(config, architecture)
  if is_nb201(config):
    return json.dumps(nb201_space.genotype_to_dict(architecture))
  return genotypes.to_json(architecture)


def build_network(config, axis_name: Optional[str] = None, genotype=None) -> nn.Module:
  """The network of a train config (`config.model`, `config.genotype`).

  `genotype` overrides `config.genotype`: a name, a genotype.json path or a
  search workdir, or a Genotype; for model.network='sgnas' the architecture's
  (L, 6) choices; for 'nb201' an NB-201 genotype or its string.
  """
  network = config_fields.field(config.model, 'network', 'cifar')
  if network not in NETWORKS:
    raise ValueError(f'model.network={network!r} is not one of {NETWORKS}.')
  if network == SGNAS:
    choices = resolve_architecture(config) if genotype is None else genotype
    return sgnas_network.build_network(config, choices, axis_name)
  if network == NB201:
    if genotype is None or isinstance(genotype, str):
      genotype = resolve_architecture(config, genotype)
    return nb201_space.build_network(genotype, config, axis_name)
  return darts_network.build_network(config, axis_name, genotype)
