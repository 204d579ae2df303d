"""XLA:CPU compile options of the tests' programs, by how often a program runs.

A test program that runs once or for a few steps spends most of its CPU time in
XLA's compiler, not in running. Less LLVM optimisation compiles it in less CPU
time, and so do XLA's classic loop emitters (SUITE_XLA_FLAGS, every process of
the run); programs whose results a test compares are compiled alike. Measured
figures are at each use.
"""

import os

import jax

# XLA_FLAGS of every process of a test run (tests/conftest.py sets them, after
# the caller's): the classic loop emitters instead of XLA's MLIR fusion emitters
# compile the tests' programs in less CPU (test_grouped_cell, test_supernet and
# test_fused_ops: 378 s of CPU against 529 s; the whole suite 2215 s against
# 2785 s) and run them as fast, bfloat16 aside. The library keeps XLA's defaults.
SUITE_XLA_FLAGS = ('--xla_cpu_use_fusion_emitters=false',)

# Runs once or twice: no LLVM optimisation (about a third less CPU per compile).
RUN_ONCE = {'xla_backend_optimization_level': 0}
# Runs a handful of steps of a tiny program: also without LLVM's expensive passes.
RUN_FEW = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
# Runs tens of steps: LLVM -O1 compiles in less CPU while the steps stay fast
# (at -O0 the steps would cost more than the compile saves). XLA's fusion
# emitters: their bfloat16 code runs faster (test_bf16_fidelity: 70 s against
# 84 s under the loop emitters).
RUN_SOME = {'xla_backend_optimization_level': 1, 'xla_cpu_use_fusion_emitters': True}
# As RUN_SOME, also without LLVM's expensive passes.
RUN_SOME_LEAN = {**RUN_SOME, 'xla_llvm_disable_expensive_passes': True}


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
  env = os.environ if base is None else base
  flags = env.get('XLA_FLAGS', '').split()  # the run's own: SUITE_XLA_FLAGS
  flags += [f'--xla_force_host_platform_device_count={devices}',
            '--xla_cpu_collective_call_terminate_timeout_seconds=600']
  flags += [f'--{name}={str(value).lower()}' for name, value in options.items()]
  return dict(env, XLA_FLAGS=' '.join(flags))
