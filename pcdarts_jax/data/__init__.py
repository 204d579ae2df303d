"""Data sets, augmentation and the input pipelines of search and training."""
