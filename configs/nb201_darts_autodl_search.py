"""DARTS in the NAS-Bench-201 space as AutoDL-Projects runs it for the
NAS-Bench-201 paper (Dong & Yang ICLR 2020, github.com/D-X-Y/AutoDL-Projects:
exps/NAS-Bench-201-algos/DARTS-V1.py with configs/nas-benchmark/algos/DARTS.config),
CIFAR-10.

  python -m launch.search --config=configs/nb201_darts_autodl_search.py \
      --workdir=/tmp/nb201_autodl [--config.nb201.table=nb201.json]

C 16, 5 cells per stage, 50 epochs, batch 64, SGD lr 0.025 cosine to 1e-3
(epoch e at lr(e)), Nesterov momentum 0.9, wd 5e-4, gradient clip 5; arch Adam
3e-4, betas (0.5, 0.999), wd 1e-3, first order (DARTS-V1; DARTS-V2 is
`--config.search.architect=second_order`), arch steps from the first epoch;
AutoDL's CIFAR-10 normalisation. Left different: AutoDL splits the train set
into its two halves by a shuffled index file (ours: in order), and its step
updates the weights before the architecture (ours: architecture first).
configs/nb201_cifar10_search.py holds DrNAS' settings for the same space.
"""

from configs import nb201_cifar10_search


def get_config():
  config = nb201_cifar10_search.get_config()
  config.data.mean = tuple(x / 255 for x in (125.3, 123.0, 113.9))
  config.data.std = tuple(x / 255 for x in (63.0, 62.1, 66.7))
  s = config.search
  s.epochs = 50
  s.weight_decay = 5e-4
  s.nesterov = True
  s.lr_schedule_offset = 0      # AutoDL sets epoch e's lr(e) as the epoch starts
  return config
