"""The PyTorch baseline that launch.benchmark's search figures are compared with.

  pip install torch                # not a dependency of pcdarts-jax (measured: 2.11-2.14)
  python -m launch.torch_reference --batch_size=32 [--steps=10 --warmup=2 --threads=2]
                                   [--device=cuda] [--compile] [--measure=bilevel_step]
                                   [--device_lock=FILE]

The PC-DARTS CIFAR search supernet in PyTorch, written from the reference's
definition (op order, affine-free BatchNorms, partial channels K=4, 2x2
bypass pool, channel shuffle, edge normalization), timed like
launch.benchmark times its steps: the weight step (forward, backward, clip 5,
SGD), the first-order arch step (Adam on the arch batch; the backward also
fills the weights' gradients, as in the reference) and the two in a row, train
mode, random CIFAR-shaped images. The machine's speed drifts from one session
to the next, so a ratio is only meaningful between runs taken side by side.
Prints one JSON line per measurement.
"""

import contextlib
import fcntl
import json
import resource
import sys
import time

from absl import flags
import numpy as np

from launch import common

MEASUREMENTS = ('weight_step', 'arch_step', 'bilevel_step')

_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps before timing.')
_THREADS = flags.DEFINE_integer('threads', 2, 'torch.set_num_threads.')
_CHANNELS = flags.DEFINE_integer('init_channels', 16, 'C of the supernet.')
_LAYERS = flags.DEFINE_integer('layers', 8, 'Cells of the supernet.')
_DEVICE = flags.DEFINE_enum('device', 'cpu', ['cpu', 'cuda'],
                            'Where to run (cuda: with cudnn.benchmark, as the reference search).')
_COMPILE = flags.DEFINE_bool('compile', False,
                             'Run the supernet under torch.compile (the reference runs eagerly).')
_MEASURE = flags.DEFINE_multi_enum('measure', list(MEASUREMENTS), list(MEASUREMENTS),
                                   'Which steps to time.')
_DEVICE_LOCK = flags.DEFINE_string(
    'device_lock', None, 'Lock this file (flock) while stepping, as launch.benchmark does: '
    'benchmarks sharing one accelerator are then timed one at a time, once none compiles.')

# Copies of genotypes.PRIMITIVES and node_edge_ranges(4) (the test checks they
# agree): importing pcdarts_jax loads JAX, which would add to the measured RSS.
PRIMITIVES = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
              'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
NODE_EDGES = ((0, 2), (2, 5), (5, 9), (9, 14))


def build_supernet(torch, init_channels: int, layers: int, num_classes: int = 10,
                   partial_channels: int = 4):
  """The search supernet as a torch.nn.Module with `.arch()` and `.weights()`."""
  nn, F = torch.nn, torch.nn.functional

  def bn(c):
    return nn.BatchNorm2d(c, affine=False)

  def relu_dw_pw_bn(c, k, stride, pad, dilation):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, k, stride, pad, dilation, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), bn(c))

  class FactorizedReduce(nn.Module):

    def __init__(self, c_in, c_out):
      super().__init__()
      self.a = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
      self.b = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
      self.bn = bn(c_out)

    def forward(self, x):
      x = F.relu(x)
      return self.bn(torch.cat([self.a(x), self.b(x[:, :, 1:, 1:])], 1))

  class Zero(nn.Module):

    def __init__(self, stride):
      super().__init__()
      self.stride = stride

    def forward(self, x):
      return x[:, :, ::self.stride, ::self.stride].mul(0.)

  def make_op(name, c, stride):
    if name == 'none':
      return Zero(stride)
    if name == 'max_pool_3x3':
      return nn.Sequential(nn.MaxPool2d(3, stride, 1), bn(c))
    if name == 'avg_pool_3x3':
      return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), bn(c))
    if name == 'skip_connect':
      return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    k = int(name[-1])
    if name.startswith('sep_conv'):
      return nn.Sequential(relu_dw_pw_bn(c, k, stride, k // 2, 1),
                           relu_dw_pw_bn(c, k, 1, k // 2, 1))
    return relu_dw_pw_bn(c, k, stride, k - 1, 2)  # dil_conv_3x3 / 5x5

  class MixedOp(nn.Module):

    def __init__(self, c, stride):
      super().__init__()
      self.stride = stride
      self.ops = nn.ModuleList([make_op(p, c // partial_channels, stride) for p in PRIMITIVES])

    def forward(self, x, weights):
      width = x.shape[1] // partial_channels
      head, bypass = x[:, :width], x[:, width:]
      out = sum(w * op(head) for w, op in zip(weights, self.ops))
      if self.stride == 2:
        bypass = F.max_pool2d(bypass, 2, 2)
      y = torch.cat([out, bypass], 1)
      n, c, h, w = y.shape
      return (y.view(n, partial_channels, c // partial_channels, h, w)
              .transpose(1, 2).reshape(n, c, h, w))

  def relu_conv_bn(c_in, c_out):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), bn(c_out))

  class Cell(nn.Module):

    def __init__(self, c_pp, c_p, c, reduction, reduction_prev):
      super().__init__()
      self.reduction = reduction
      self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else relu_conv_bn(c_pp, c)
      self.pre1 = relu_conv_bn(c_p, c)
      self.edges = nn.ModuleList([MixedOp(c, 2 if reduction and j < 2 else 1)
                                  for start, end in NODE_EDGES for j in range(end - start)])

    def forward(self, s0, s1, weights, betas):
      states = [self.pre0(s0), self.pre1(s1)]
      for start, end in NODE_EDGES:
        states.append(sum(betas[e] * self.edges[e](states[e - start], weights[e])
                          for e in range(start, end)))
      return torch.cat(states[2:], 1)

  class Network(nn.Module):

    def __init__(self):
      super().__init__()
      c = init_channels
      self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, padding=1, bias=False),
                                nn.BatchNorm2d(3 * c))
      c_pp, c_p, c_curr, reduction_prev = 3 * c, 3 * c, c, False
      self.cells = nn.ModuleList()
      for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        c_curr *= 2 if reduction else 1
        self.cells.append(Cell(c_pp, c_p, c_curr, reduction, reduction_prev))
        reduction_prev, c_pp, c_p = reduction, c_p, 4 * c_curr
      self.classifier = nn.Linear(c_p, num_classes)
      arch = lambda *shape: nn.Parameter(1e-3 * torch.randn(*shape))
      self.alphas_normal, self.alphas_reduce = arch(14, 8), arch(14, 8)
      self.betas_normal, self.betas_reduce = arch(14), arch(14)

    def arch(self):
      return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]

    def weights(self):
      arch_ids = {id(p) for p in self.arch()}
      return [p for p in self.parameters() if id(p) not in arch_ids]

    def forward(self, x):
      s0 = s1 = self.stem(x)
      for cell in self.cells:
        kind = 'reduce' if cell.reduction else 'normal'
        weights = F.softmax(getattr(self, f'alphas_{kind}'), dim=-1)
        betas = getattr(self, f'betas_{kind}')
        betas = torch.cat([F.softmax(betas[s:e], dim=0) for s, e in NODE_EDGES])
        s0, s1 = s1, cell(s0, s1, weights, betas)
      return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

  return Network()


# As pcdarts_jax.bench.benchmark.QUIET_WAIT_SECONDS (copied: see above).
QUIET_WAIT_SECONDS = 180.0


@contextlib.contextmanager
def _holding(lock_path):
  """An exclusive flock on `lock_path` for the block (None: no lock), entered once
  no launch.benchmark of the lock compiles (`<lock_path>.compiling`) or
  QUIET_WAIT_SECONDS have passed, as pcdarts_jax.bench.benchmark.holding; yields
  whether nothing compiles."""
  if not lock_path:
    yield True
    return
  with open(lock_path, 'a') as f, open(lock_path + '.compiling', 'a') as quiet:
    fcntl.flock(f, fcntl.LOCK_EX)
    deadline = time.monotonic() + QUIET_WAIT_SECONDS
    while True:
      try:
        fcntl.flock(quiet, fcntl.LOCK_EX | fcntl.LOCK_NB)
        got = True
        break
      except BlockingIOError:
        if time.monotonic() >= deadline:
          got = False
          break
        time.sleep(0.2)
    try:
      yield got
    finally:
      fcntl.flock(quiet, fcntl.LOCK_UN)
      fcntl.flock(f, fcntl.LOCK_UN)


def measure(batch_size: int, steps: int, warmup: int, threads: int, init_channels: int,
            layers: int, device: str = 'cpu', compile_model: bool = False,
            measurements=MEASUREMENTS, device_lock=None):
  """Yields one result dict per measurement (weight, arch, bilevel step).
  Peak memory: the process's peak RSS on the CPU, the allocator's peak on a GPU.
  `compile_model`: the forward pass under torch.compile (compiled in the warm-up
  steps, whose time is reported as `first_steps_seconds`)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit('launch.torch_reference needs PyTorch: pip install torch') from e
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  cuda = device == 'cuda'
  if cuda:
    if not torch.cuda.is_available():
      raise SystemExit('--device=cuda: PyTorch sees no CUDA device')
    torch.backends.cudnn.benchmark = True  # As the reference search sets it.
  net = build_supernet(torch, init_channels, layers).train().to(device)
  forward = torch.compile(net) if compile_model else net
  weight_opt = torch.optim.SGD(net.weights(), 0.1, momentum=0.9, weight_decay=3e-4)
  arch_opt = torch.optim.Adam(net.arch(), 6e-4, betas=(0.5, 0.999), weight_decay=1e-3)
  images = lambda: torch.randn(batch_size, 3, 32, 32, device=device)
  labels = lambda: torch.randint(0, 10, (batch_size,), device=device)
  sync = torch.cuda.synchronize if cuda else lambda: None
  x, y, x_arch, y_arch = images(), labels(), images(), labels()
  loss = torch.nn.functional.cross_entropy

  def weight_step():
    weight_opt.zero_grad()
    loss(forward(x), y).backward()
    torch.nn.utils.clip_grad_norm_(net.weights(), 5.0)
    weight_opt.step()

  def arch_step():
    arch_opt.zero_grad()
    loss(forward(x_arch), y_arch).backward()
    arch_opt.step()

  def bilevel_step():
    arch_step()
    weight_step()

  steps_by_name = {'weight_step': weight_step, 'arch_step': arch_step,
                   'bilevel_step': bilevel_step}
  for name in measurements:
    step = steps_by_name[name]
    with _holding(device_lock) as quiet:
      start = time.perf_counter()
      for _ in range(warmup):
        step()
      sync()
      first_steps_seconds = time.perf_counter() - start
      times = []
      for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()  # CUDA runs asynchronously: time the work, not its launch.
        times.append((time.perf_counter() - start) * 1e3)
    yield {
        'compiled': compile_model, 'first_steps_seconds': first_steps_seconds,
        'framework': 'torch', 'torch_version': torch.__version__, 'threads': threads,
        'measurement': name, 'architect': None if name == 'weight_step' else 'first_order',
        'batch_size': batch_size, 'init_channels': init_channels, 'layers': layers,
        'steps': steps, 'warmup': warmup, 'timed_while_compiling': not quiet,
        'ms_per_step_median': float(np.median(times)),
        'ms_per_step_p10': float(np.percentile(times, 10)),
        'ms_per_step_p90': float(np.percentile(times, 90)),
        'images_per_second': batch_size / (float(np.median(times)) / 1e3),
        'device': torch.cuda.get_device_name() if cuda else 'cpu',
        'peak_memory_bytes': (torch.cuda.max_memory_allocated() if cuda else
                              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
    }


def main(argv):
  common.no_arguments(argv)
  for result in measure(_BATCH.value, _STEPS.value, _WARMUP.value, _THREADS.value,
                        _CHANNELS.value, _LAYERS.value, _DEVICE.value, _COMPILE.value,
                        [m for m in MEASUREMENTS if m in _MEASURE.value], _DEVICE_LOCK.value):
    print(json.dumps(result, sort_keys=True), flush=True)
    print(f"{result['measurement']:14s} batch {result['batch_size']:4d}  "
          f"{result['ms_per_step_median']:8.1f} ms/step (p10 {result['ms_per_step_p10']:.1f}, "
          f"p90 {result['ms_per_step_p90']:.1f})  peak memory "
          f"{result['peak_memory_bytes'] / 2**20:.0f} MB", file=sys.stderr)


if __name__ == '__main__':
  common.app_run(main, __doc__)
