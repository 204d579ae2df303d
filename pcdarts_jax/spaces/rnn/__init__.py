"""The DARTS recurrent cell search space (Liu et al. ICLR 2019, PTB / WikiText-2)."""
