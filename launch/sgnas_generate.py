r"""The architecture an SGNAS search's generator gives for a FLOPs budget.

  python -m launch.sgnas_generate --config=configs/sgnas_digits_search.py \
      --workdir=/tmp/sgd --target_flops=0.3 [--output=/tmp/arch.json]

--config and --workdir are those of the finished search (launch/search.py).
Prints the architecture (per layer 6 groups: 3/5/7 = depthwise kernel, x = skip)
and its exact FLOPs, and writes it as JSON (default WORKDIR/architecture_<T>M.json)
for training from scratch: launch/train.py --config=configs/sgnas_..._train.py
--config.genotype=THAT.json. Exit status 2 on a config or workdir error.
"""

import json
import os
import sys

from absl import flags
from absl import logging

from launch import common
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.run import rundir
from pcdarts_jax.sgnas import layout as layout_lib
from pcdarts_jax.sgnas import search

_CONFIG = common.define_config_flag('The SGNAS search')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The finished SGNAS search directory.')
_TARGET = flags.DEFINE_float('target_flops', None, 'The budget in MFLOPs (multiply-adds).')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the architecture JSON.')


def main(argv):
  common.no_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    record = search.generate_for(_CONFIG.value, _WORKDIR.value, _TARGET.value)
  except (config_validation.ConfigError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  output = _OUTPUT.value or os.path.join(_WORKDIR.value,
                                         f'architecture_{_TARGET.value:g}M.json')
  rundir.write_atomic(output, json.dumps(record, indent=1) + '\n')
  print(f"target {record['target_mflops']:g} MFLOPs -> {record['mflops']:.6g} MFLOPs "
        f"({record['macs']:,} multiply-adds)")
  for i, row in enumerate(record['choices']):
    kernels = layout_lib.group_of_choices(row)
    print(f"  layer {i:2d}: expansion {len(kernels)}, kernels {kernels}")
  print(f"architecture {record['architecture']}\nwritten to {output}")


if __name__ == '__main__':
  common.app_run(main, __doc__, [common.SGNAS_SEARCH],
                 required=['config', 'workdir', 'target_flops'])
