"""XLA:CPU compile options of the tests' programs, by how often a program runs.

A test program that runs once or for a few steps spends most of its CPU time in
XLA's LLVM backend, not in running. Less LLVM optimisation compiles it in less
CPU time; programs whose results a test compares are compiled alike. Measured
figures are at each use.
"""

import os

import jax

# Runs once or twice: no LLVM optimisation (about a third less CPU per compile).
RUN_ONCE = {'xla_backend_optimization_level': 0}
# Runs a handful of steps of a tiny program: also without LLVM's expensive passes.
RUN_FEW = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
# Runs tens of steps: LLVM -O1 compiles in less CPU while the steps stay fast
# (at -O0 the steps would cost more than the compile saves).
RUN_SOME = {'xla_backend_optimization_level': 1}
# As RUN_SOME, also without LLVM's expensive passes.
RUN_SOME_LEAN = {'xla_backend_optimization_level': 1, 'xla_llvm_disable_expensive_passes': True}


def jit_once(fn, **kwargs):
  """jax.jit for a program that runs once or twice (RUN_ONCE)."""
  return jax.jit(fn, compiler_options=RUN_ONCE, **kwargs)


def jit_few(fn, **kwargs):
  """jax.jit for a tiny program that runs a handful of times (RUN_FEW)."""
  return jax.jit(fn, compiler_options=RUN_FEW, **kwargs)


def devices_env(devices: int, options=RUN_FEW, base=None) -> dict:
  """The environment of a subprocess that forces `devices` host devices and
  compiles every program with `options` (XLA_FLAGS: the multi-device scripts run
  a few steps of each program, 1 device against N, both compiled alike). N host
  devices share a machine's few cores: a collective waits up to 10 minutes for
  them (XLA's 40 s, on a loaded 2-core CI machine, aborted a correct run)."""
  flags = [f'--xla_force_host_platform_device_count={devices}',
           '--xla_cpu_collective_call_terminate_timeout_seconds=600']
  flags += [f'--{name}={str(value).lower()}' for name, value in options.items()]
  return dict(os.environ if base is None else base, XLA_FLAGS=' '.join(flags))
