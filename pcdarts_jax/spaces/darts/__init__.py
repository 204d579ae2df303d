"""The DARTS / PC-DARTS cell search space: supernet, genotypes, evaluation networks."""
