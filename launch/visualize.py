"""Draws the normal and reduction cells of a genotype (graphviz), as PNG and SVG.

  python -m launch.visualize PCDARTS --out /tmp/cells
  python -m launch.visualize /tmp/run/genotype.json --out /tmp/cells

GENOTYPE_OR_JSON: a published genotype (DARTS_V1, DARTS_V2, PCDARTS,
PC_DARTS_image), a genotype.json, or a search workdir holding one. Writes
DIR/NAME_normal.{gv,png,svg} and DIR/NAME_reduce.{gv,png,svg}; NAME is the
genotype's name or the JSON file's name. Without graphviz's `dot` only the .gv
sources are written (exit status 1).
"""

import os
import sys

from absl import app
from absl import flags

from pcdarts_jax import network
from pcdarts_jax import visualize

_OUT = flags.DEFINE_string('out', None, 'Output directory.')
flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('Usage: python -m launch.visualize GENOTYPE_OR_JSON --out DIR')
  source = argv[1]
  try:
    genotype = network.resolve_genotype(source)
    network.check_genotype(genotype, source)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  name = os.path.splitext(os.path.basename(os.path.normpath(source)))[0]
  for path in visualize.draw_genotype(genotype, os.path.join(_OUT.value, name)):
    print(path)
  if not visualize.have_dot():
    print('error: graphviz `dot` not found; wrote the .gv sources only '
          '(apt-get install graphviz).', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
