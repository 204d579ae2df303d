"""An optional NAS-Bench-201 results table, supplied by the user (`nb201.table`).

The official benchmark file (about 2 GB, a torch pickle) is not needed here;
export it once to one of these simple formats and pass
`--config.nb201.table=PATH`:

- JSON (`.json`): {arch_str: {dataset: accuracy, ...}, ...}, e.g.
  {"|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|":
   {"cifar10": 94.37, "cifar100": 73.51, "imagenet16_120": 47.31}}
- CSV (any other suffix): a header `arch_str,<dataset>,<dataset>,...` and one
  row per architecture; an empty cell means "not known".

Dataset keys are this project's `data.name` values (`cifar10`, `cifar100`,
`imagenet16_120`); accuracies are in percent. Export from the official file
(needs torch and `pip install nas-bench-201`), test accuracy after the 200-epoch
schedule:

  import json
  from nas_201_api import NASBench201API
  api = NASBench201API('NAS-Bench-201-v1_1-096897.pth', verbose=False)
  names = {'cifar10': 'cifar10', 'cifar100': 'cifar100',
           'imagenet16_120': 'ImageNet16-120'}
  table = {arch: {ours: api.get_more_info(i, theirs, hp='200', is_random=False)
                  ['test-accuracy'] for ours, theirs in names.items()}
           for i, arch in enumerate(api)}
  json.dump(table, open('nb201.json', 'w'))

Without a table nothing is looked up.
"""

import csv
import json
import math
import os
from typing import Dict, Optional

from pcdarts_jax.spaces.nb201 import space as nb201

Table = Dict[str, Dict[str, float]]


class TableError(ValueError):
  """The `nb201.table` file is missing or malformed."""


def _number(value, where: str) -> Optional[float]:
  if value is None or value == '':
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = math.nan
  if isinstance(value, bool) or not math.isfinite(number):
    raise TableError(f'{where}: accuracy {value!r} is not a finite number.')
  return number


def load_table(path: str) -> Table:
  """{arch_str: {dataset: accuracy}} from a JSON or CSV file (see the module doc)."""
  field = f'nb201.table={path!r}'
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise TableError(f'{field} does not exist; give a JSON or CSV NB-201 results table '
                     f'(see pcdarts_jax/spaces/nb201/table.py for the format and how to '
                     f'export it), or leave nb201.table unset.')
  rows = {}
  try:
    if path.endswith('.json'):
      with open(path) as f:
        raw = json.load(f)
      if not isinstance(raw, dict):
        raise TableError(f'{field}: the JSON must map architecture strings to '
                         f'{{dataset: accuracy}}; got a {type(raw).__name__}.')
      for arch, accs in raw.items():
        if not isinstance(accs, dict):
          raise TableError(f'{field}: the entry of {arch!r} must be {{dataset: accuracy}}; '
                           f'got {accs!r}.')
        rows[arch] = accs
    else:
      with open(path, newline='') as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or reader.fieldnames[0] != 'arch_str':
          raise TableError(f'{field}: a CSV table needs the header "arch_str,<dataset>,..."'
                           f'; got {reader.fieldnames}.')
        for row in reader:
          arch = row.pop('arch_str')
          rows[arch] = row
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
    raise TableError(f'{field} cannot be read: {type(e).__name__}: {e}') from e
  table = {}
  for line, (arch, accs) in enumerate(rows.items(), start=1):
    try:
      key = nb201.genotype_str(nb201.parse(arch))
    except ValueError as e:
      raise TableError(f'{field}, entry {line}: {e}') from e
    values = {str(k): _number(v, f'{field}, {arch!r} {k!r}') for k, v in accs.items()}
    table[key] = {k: v for k, v in values.items() if v is not None}
  if not table:
    raise TableError(f'{field} holds no architectures.')
  return table


def from_config(config) -> Optional[Table]:
  """The table named by `config.nb201.table`, or None when unset."""
  section = config.get('nb201') if hasattr(config, 'get') else None
  path = section.get('table') if section is not None else None
  return None if path is None else load_table(path)


def lookup(table: Optional[Table], genotype_str: str, dataset: str) -> Optional[float]:
  """The accuracy of `genotype_str` on `dataset`, or None when there is no table,
  or it has no entry for that architecture or data set."""
  if not table:
    return None
  return table.get(genotype_str, {}).get(dataset)
