"""SGNAS: a unified single-path supernet and a FLOPs-conditioned architecture generator.

- `layout`: the layer layouts (ImageNet, CIFAR, the embedded digits) and the
  architecture encoding (L x 6 group choices, one-hot L x 24).
- `flops`: the FLOPs lookup table, exact and expected FLOPs, the FLOPs loss,
  the prior pool.
- `sampling`: fairness-style path sampling for supernet training.
- `supernet`: the unified MBConv block and supernet (soft and single-path forward).
- `generator`: the architecture generator.
- `network`: the stand-alone network of a derived architecture.
- `search`: both search phases and the generation of architectures for a budget.
"""
