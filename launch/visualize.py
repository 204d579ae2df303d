"""Draws the normal and reduction cells of a genotype (graphviz), as PNG and SVG.

  python -m launch.visualize PCDARTS --out /tmp/cells
  python -m launch.visualize /tmp/run --out /tmp/cells       # a search workdir
  python -m launch.visualize /tmp/run/genotype.json --out /tmp/cells [--name run7]

GENOTYPE_OR_JSON: a published genotype (DARTS_V1, DARTS_V2, PCDARTS,
PC_DARTS_image), a genotype.json, or a search workdir holding one. Writes
DIR/NAME_normal.{gv,png,svg} and DIR/NAME_reduce.{gv,png,svg}; NAME is --name,
else the genotype's name, the workdir's name (for WORKDIR or
WORKDIR/genotype.json) or the JSON file's name, so pictures of several runs
sit side by side. Without graphviz's `dot` only the .gv sources are written
(exit status 1).
"""

import os
import sys

from absl import flags

from launch import common
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.spaces.darts import visualize

_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_NAME = flags.DEFINE_string('name', None, 'Prefix of the file names (default: named after '
                            'the genotype, workdir or JSON file).')


def output_name(source: str) -> str:
  """The file-name prefix of `source`'s pictures: a workdir's name for a workdir
  or its genotype.json (every search writes a genotype.json), else the
  genotype's or the file's name."""
  path = os.path.normpath(source)
  if os.path.isfile(path) and os.path.basename(path) == 'genotype.json':
    path = os.path.dirname(os.path.abspath(path))
  return os.path.splitext(os.path.basename(path))[0]


def main(argv):
  if len(argv) != 2:
    common.fail('give one genotype: python -m launch.visualize GENOTYPE_OR_JSON --out DIR '
                '(--help for more).')
  source = argv[1]
  try:
    genotype = network.resolve_genotype(source)
    network.check_genotype(genotype, source)
  except ValueError as e:
    common.fail(str(e))
  have_dot = visualize.have_dot()
  prefix = os.path.join(_OUT.value, _NAME.value or output_name(source))
  # Without `dot` only the sources are asked for: the one message is the error below.
  for path in visualize.draw_genotype(genotype, prefix,
                                      formats=('png', 'svg') if have_dot else ()):
    print(path)
  if not have_dot:
    print('error: graphviz `dot` not found; wrote the .gv sources only '
          '(apt-get install graphviz).', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  common.app_run(main, __doc__, required=['out'])
