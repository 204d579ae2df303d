"""Layer layouts of the SGNAS supernet and the encoding of its architectures.

A searchable layer is a unified MBConv block whose hidden width 6·C_in is split
into 6 groups of C_in channels; each group picks one of CHOICES. An architecture
is an int array (L, 6) of choice indices, or the same one-hot as (L, 6, 4)
(the generator's L x 24 map). Group 0 of every layer never skips, so a layer
keeps at least one group (expansion 1..6).
"""

import dataclasses
import json
from typing import Any, Dict, Sequence, Tuple

import numpy as np

CHOICES = ('dw3x3', 'dw5x5', 'dw7x7', 'skip')
KERNELS = (3, 5, 7)
SKIP = CHOICES.index('skip')
GROUPS = 6
NUM_CHOICES = len(CHOICES)
SHORT = ('3', '5', '7', 'x')  # One character per group in architecture strings.

# (out channels, stride) of the searchable layers (ImageNet), as the SGNAS reference.
IMAGENET_LAYERS = ((32, 2), (32, 1), (40, 2), (40, 1), (40, 1), (40, 1), (80, 2), (80, 1),
                   (80, 1), (80, 1), (96, 1), (96, 1), (96, 1), (96, 1), (192, 2), (192, 1),
                   (192, 1), (192, 1), (320, 1))
# CIFAR: the stem and the first searchable layer keep the resolution.
CIFAR_LAYERS = ((32, 1),) + IMAGENET_LAYERS[1:]
# The embedded default (8x8 digits): 6 narrow layers, two reductions.
DIGITS_LAYERS = ((8, 1), (8, 1), (12, 2), (12, 1), (16, 2), (16, 1))

# name: (stem channels, stem stride, first block channels, layers, head channels)
PRESETS = {
    'imagenet': (32, 2, 16, IMAGENET_LAYERS, 1280),
    'cifar': (32, 1, 16, CIFAR_LAYERS, 1280),
    'digits': (8, 1, 8, DIGITS_LAYERS, 64),
}


@dataclasses.dataclass(frozen=True)
class Layer:
  c_in: int
  c_out: int
  stride: int
  size_in: int    # Spatial size (square) of the input.
  size_out: int

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.c_in == self.c_out


@dataclasses.dataclass(frozen=True)
class Layout:
  """Everything about the macro network that the architecture does not choose."""
  name: str
  image_size: int
  image_channels: int
  num_classes: int
  stem_channels: int
  stem_stride: int
  first_channels: int  # The fixed MBConv (expansion 1, k3) after the stem.
  head_channels: int
  layers: Tuple[Layer, ...]

  @property
  def num_layers(self) -> int:
    return len(self.layers)

  @property
  def stem_size(self) -> int:
    return _out_size(self.image_size, self.stem_stride)


def _out_size(size: int, stride: int) -> int:
  return -(-size // stride)  # 'SAME' padding.


def make_layout(name: str, image_size: int, image_channels: int, num_classes: int) -> Layout:
  """The layout preset `name` (one of PRESETS) for images of the given size."""
  if name not in PRESETS:
    raise ValueError(f'model.layout={name!r} is not one of {tuple(PRESETS)}.')
  stem, stem_stride, first, specs, head = PRESETS[name]
  size = _out_size(image_size, stem_stride)
  layers, c_in = [], first
  for c_out, stride in specs:
    out = _out_size(size, stride)
    layers.append(Layer(c_in, c_out, stride, size, out))
    c_in, size = c_out, out
  return Layout(name, image_size, image_channels, num_classes, stem, stem_stride, first, head,
                tuple(layers))


def layout_of_config(config) -> Layout:
  """The layout of a search or train config (`model.layout` on `data.name`'s images)."""
  from pcdarts_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  size, _, channels = input_pipeline.image_shape(config.data)
  return make_layout(config.model.layout, size, channels, config.model.num_classes)


# --------------------------------------------------------------- architectures


def check_choices(choices, layout: Layout, field: str = 'architecture') -> np.ndarray:
  """`choices` as an int array (L, 6); ValueError naming `field` if it is not one."""
  try:
    arr = np.asarray(choices)
  except ValueError:
    raise ValueError(f'{field}: not a rectangular array of choice indices.') from None
  expected = (layout.num_layers, GROUPS)
  if arr.shape != expected or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f'{field}: expected integer choices of shape {expected} (layers x '
                     f'groups) for layout {layout.name!r}, got {arr.dtype} {arr.shape}.')
  if arr.min() < 0 or arr.max() >= NUM_CHOICES:
    raise ValueError(f'{field}: choices must be in 0..{NUM_CHOICES - 1} {CHOICES}.')
  if np.any(arr[:, 0] == SKIP):
    layer = int(np.argmax(arr[:, 0] == SKIP))
    raise ValueError(f'{field}: group 0 of layer {layer} skips; group 0 never skips.')
  return arr.astype(np.int32)


def one_hot(choices) -> np.ndarray:
  """(L, 6) choice indices -> (L, 6, 4) one-hot float32."""
  return np.eye(NUM_CHOICES, dtype=np.float32)[np.asarray(choices)]


def expansions(choices) -> np.ndarray:
  """Non-skipped groups per layer (the layer's expansion ratio)."""
  return (np.asarray(choices) != SKIP).sum(-1)


def to_string(choices) -> str:
  """One line: per layer its 6 groups' kernels or x (skip), e.g. `3x5x77|...`."""
  return '|'.join(''.join(SHORT[c] for c in row) for row in np.asarray(choices))


def from_string(text: str) -> np.ndarray:
  try:
    return np.array([[SHORT.index(ch) for ch in row] for row in text.strip().split('|')],
                    np.int32)
  except ValueError:
    raise ValueError(f'architecture string {text!r}: groups must be one of {SHORT}.') from None


def to_dict(choices, layout: Layout, **extra) -> Dict[str, Any]:
  """JSON-able: the layout name, the choices, and e.g. the FLOPs."""
  return {'layout': layout.name, 'choices': np.asarray(choices).tolist(),
          'architecture': to_string(choices), **extra}


def load(path_or_text: str, layout: Layout, field: str = 'architecture') -> np.ndarray:
  """Choices from an architecture JSON file (sgnas_generate's output) or a string."""
  text = path_or_text
  try:
    with open(path_or_text) as f:
      text = f.read()
  except OSError:
    pass
  try:
    record = json.loads(text)
  except json.JSONDecodeError:
    return check_choices(from_string(text), layout, field)
  if not isinstance(record, dict) or 'choices' not in record:
    raise ValueError(f'{field}={path_or_text!r}: expected a JSON object with "choices".')
  if record.get('layout', layout.name) != layout.name:
    raise ValueError(f"{field}={path_or_text!r} was made for layout {record['layout']!r}, "
                     f'not model.layout={layout.name!r}.')
  return check_choices(record['choices'], layout, field)


def group_of_choices(choices: Sequence[int]) -> Tuple[int, ...]:
  """The kernels of a layer's non-skipped groups, in group order."""
  return tuple(KERNELS[c] for c in choices if c != SKIP)
