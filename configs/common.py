"""Config blocks every base config shares: checkpointing and monitoring."""

import ml_collections


def checkpoint(every_steps: int, keep: int = 3) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.every_steps = every_steps  # also at every epoch end; 0 = epoch ends only
  c.keep = keep                # newest checkpoints kept
  c.resume = True              # False: refuse a non-empty workdir
  c.async_save = True          # write in the background while the steps go on (False: wait)
  return c


def monitor(pictures: bool = True) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tensorboard = True         # event files in WORKDIR/tensorboard
  c.pictures = pictures        # cells and arch heat-maps in WORKDIR/plots (where a space has them)
  c.progress = 'auto'          # auto (bar on a terminal) | bar | lines
  return c
