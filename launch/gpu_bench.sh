#!/usr/bin/env bash
# The GPU measurements of the search step, in one call of a few minutes:
#
#   bash launch/gpu_bench.sh steps  OUT_DIR   # JAX layouts x precisions + the PyTorch baseline
#   bash launch/gpu_bench.sh search OUT_DIR   # the whole CIFAR-10 search on random images
#   bash launch/gpu_bench.sh seeds  OUT_DIR   # N = 1, 2, 4, 8 searches in one vmapped step
#   bash launch/gpu_bench.sh drnas  OUT_DIR   # DrNAS CIFAR-10 progressive stages
#   bash launch/gpu_bench.sh all    OUT_DIR   # steps, then the search: one call of < 10 min
#
# `steps`: the bilevel step (first order) of configs/cifar10_search.py at BATCH (256) for
# edge_impl scan, grouped and grouped with merge_separable (merged), in float32 and bfloat16.
# The six programs compile at the same time (one process each) and step one at a time
# once all have compiled (--device_lock), then the reference supernet
# in PyTorch (launch.torch_reference: eager with cudnn.benchmark, then torch.compile) under
# the same lock. Writes OUT_DIR/<variant>.jsonl, logs, and OUT_DIR/summary.json: per variant
# ms/step, peak memory and the speed-up over the PyTorch eager float32 step of the same run.
# VARIANT_NAMES picks some of the six (default all).
# `seeds`: the bilevel step with search.num_seeds N = 1, 2, 4, 8 (SEEDS), compiled at once and
# timed one at a time; summary.json gives ms per search step and per-search throughput vs N=1.
# `drnas`: the bilevel step of configs/drnas_cifar10_search.py (C 36, 20 cells, batch
# DRNAS_BATCH, 64) at progressive stage 1 with model.scan_cells on and off and at stage 2
# (pruned ops) in the per-edge, the grouped and the merged grouped layout, compiled at once
# and timed one at a time; summary.json as for `steps` (no PyTorch baseline).
# `search`: launch.search for SEARCH_EPOCHS (50) epochs of SEARCH_IMAGES (50000) random
# CIFAR-shaped train images and a fifth as many test images (data.name=arrays) with
# SEARCH_CONFIG (configs/folder_search.py: the CIFAR-10 search on own data), compile
# included, stopped (SIGTERM: a checkpoint, exit 0) if it runs past SEARCH_SECONDS (530)
# from the start; OUT_DIR/search_summary.json has its wall clock, the run's summary and
# each epoch's seconds, and for a stopped run the whole search's wall clock projected
# (benchmark.project_search_from_epochs).
# `all`: what a device budget of 15 minutes holds, in one call: `steps` for VARIANT_NAMES
# (default the grouped and merged layouts; the scan's figures are in docs/benchmarks.md) by
# ALL_STEPS_SECONDS (360) from the start, then `search` in the layout of the fastest
# bfloat16 variant (SEARCH_FLAGS after it) until SEARCH_SECONDS, with
# search.arch_start_epoch=ALL_ARCH_START (2: two weight-step epochs, then bilevel ones) so
# that a few epochs time both kinds; the projection keeps the config's own arch start (15).
# `seeds`, `drnas` and `search` run the configs' dtype `auto` (bfloat16 on a GPU) and layout
# unless EXTRA_FLAGS / SEARCH_FLAGS name others.
#
# Environment: BATCH, STEPS (20), WARMUP (3), STEP_TIMEOUT (seconds from the start by which
# every step process ends, killed if need be: 520, so a call fits in 10 minutes),
# CONFIG, EXTRA_FLAGS (extra flags of each JAX step benchmark), SEARCH_CONFIG, SEARCH_IMAGES,
# SEARCH_EPOCHS, SEARCH_FLAGS (extra --config.* flags of the search), SEARCH_SECONDS,
# SEEDS, DRNAS_BATCH, DRNAS_CONFIG, VARIANT_NAMES, ALL_STEPS_SECONDS, ALL_ARCH_START,
# PYTHON (python3), XLA_FLAGS (default --xla_gpu_enable_triton_gemm=false).
# A missing Python package can come as wheels in .whl/ (installed to /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: gpu_bench.sh steps|seeds|drnas|search|all OUT_DIR}
OUT=${2:?usage: gpu_bench.sh steps|seeds|drnas|search|all OUT_DIR}
case "$MODE" in
  steps|seeds|drnas|search|all) ;;
  *) echo "unknown mode $MODE: steps, seeds, drnas, search or all" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
BATCH=${BATCH:-256}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
STEP_TIMEOUT=${STEP_TIMEOUT:-520}
DEADLINE=$((SECONDS + STEP_TIMEOUT))
left() { echo $((DEADLINE > SECONDS + 1 ? DEADLINE - SECONDS : 1)); }  # seconds to the deadline
CONFIG=${CONFIG:-configs/cifar10_search.py}
mkdir -p "$OUT"
LOCK="$OUT/device.lock"  # held while stepping: the processes step one at a time
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Several processes share the GPU: each takes what it needs instead of 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
# XLA's Triton GEMM fusion crashed compiling batched per-edge matmuls (docs/multi-device.md);
# the GPU figures so far were taken without it. A set XLA_FLAGS (even empty) is kept.
export XLA_FLAGS="${XLA_FLAGS---xla_gpu_enable_triton_gemm=false}"
"$PYTHON" - > "$OUT/environment.json" <<'EOF'
import json, os, platform, jax
info = {'python': platform.python_version(), 'jax': jax.__version__,
        'devices': [str(d) for d in jax.devices()], 'backend': jax.default_backend(),
        'xla_flags': os.environ.get('XLA_FLAGS')}
try:
  import torch
  info['torch'] = torch.__version__
  info['torch_cuda'] = torch.cuda.is_available()
except ImportError:
  info['torch'] = None
print(json.dumps(info))
EOF
cat "$OUT/environment.json"

start_variants() {  # CONFIG BATCH: one bilevel-step benchmark per VARIANTS entry, in the background
  local name
  for name in "${!VARIANTS[@]}"; do
    # shellcheck disable=SC2086
    timeout "$(left)" "$PYTHON" -m launch.benchmark --config="$1" \
      --measure=bilevel_step --architects=first_order --batch_size="$2" \
      --steps="$STEPS" --warmup="$WARMUP" --device_lock="$LOCK" \
      --out="$OUT/$name.jsonl" ${VARIANTS[$name]} ${EXTRA_FLAGS:-} > "$OUT/$name.log" 2>&1 &
  done
}

summarize() {  # the variants' rows in OUT/summary.json, one line each on stdout
  "$PYTHON" - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, '*.jsonl'))):
  name = os.path.basename(path)[:-len('.jsonl')]
  lines = [json.loads(l) for l in open(path) if l.strip().startswith('{')]
  steps = [r for r in lines if r.get('measurement') == 'bilevel_step']
  if steps:
    r = steps[-1]
    rows[name] = {k: r.get(k) for k in ('ms_per_step_median', 'ms_per_step_p10',
                                        'ms_per_step_p90', 'peak_memory_bytes',
                                        'compile_seconds', 'first_steps_seconds',
                                        'batch_size', 'device_kind', 'device', 'dtype',
                                        'edge_impl', 'merge_separable', 'depthwise_impl',
                                        'stage', 'xla_flags', 'timed_while_compiling')}
  else:
    log = os.path.join(out, name + '.log')
    tail = open(log).read()[-600:] if os.path.exists(log) else ''
    rows[name] = {'error': tail}
baseline = rows.get('torch_eager', {}).get('ms_per_step_median')
for name, row in rows.items():
  ms = row.get('ms_per_step_median')
  if ms and baseline:
    row['speedup_over_torch_eager'] = baseline / ms
summary = {'environment': json.load(open(os.path.join(out, 'environment.json'))),
           'measurement': 'bilevel_step (first order)', 'variants': rows}
json.dump(summary, open(os.path.join(out, 'summary.json'), 'w'), indent=1, sort_keys=True)
for name, row in sorted(rows.items()):
  speedup = (f"x{row.get('speedup_over_torch_eager') or float('nan'):5.2f} vs torch eager  "
             if baseline or 'torch_eager' in rows else '')
  print(f"{name:22s} {row.get('ms_per_step_median') or float('nan'):9.1f} ms/step  {speedup}"
        f"peak {(row.get('peak_memory_bytes') or 0) / 2**30:6.2f} GiB  "
        f"compile {row.get('compile_seconds') or float('nan'):6.1f} s  "
        f"{'ERROR' if 'error' in row else ''}"
        f"{'timed while others compiled' if row.get('timed_while_compiling') else ''}")
EOF
}


# The step variants of `steps` and `all`: name -> the benchmark's flags.
declare -A STEP_VARIANTS=(
  [scan_float32]="--config.model.edge_impl=scan --config.model.dtype=float32"
  [grouped_float32]="--config.model.edge_impl=grouped --config.model.dtype=float32"
  [scan_bfloat16]="--config.model.edge_impl=scan --config.model.dtype=bfloat16"
  [grouped_bfloat16]="--config.model.edge_impl=grouped --config.model.dtype=bfloat16"
  [merged_float32]="--config.model.edge_impl=grouped --config.model.merge_separable=True --config.model.dtype=float32"
  [merged_bfloat16]="--config.model.edge_impl=grouped --config.model.merge_separable=True --config.model.dtype=bfloat16"
)

time_steps() {  # NAMES...: those STEP_VARIANTS and the PyTorch baseline, by the deadline
  declare -gA VARIANTS=()
  local name
  for name in "$@"; do
    [ -n "${STEP_VARIANTS[$name]:-}" ] || {
      echo "unknown variant $name: ${!STEP_VARIANTS[*]}" >&2; exit 2; }
    VARIANTS[$name]=${STEP_VARIANTS[$name]}
  done
  start_variants "$CONFIG" "$BATCH"
  # The baseline: PyTorch eager (as the reference runs it), then torch.compile.
  ( timeout "$(left)" "$PYTHON" -m launch.torch_reference --device=cuda \
      --batch_size="$BATCH" --steps="$STEPS" --warmup="$WARMUP" --measure=bilevel_step \
      --device_lock="$LOCK" > "$OUT/torch_eager.jsonl" 2> "$OUT/torch_eager.log"
    timeout "$(left)" "$PYTHON" -m launch.torch_reference --device=cuda --compile \
      --batch_size="$BATCH" --steps="$STEPS" --warmup="$WARMUP" --measure=bilevel_step \
      --device_lock="$LOCK" > "$OUT/torch_compile.jsonl" 2> "$OUT/torch_compile.log" ) &
  wait
  summarize
}

fastest_bfloat16() {  # the STEP_VARIANTS flags of summary.json's fastest bfloat16 row, or none
  local name
  name=$("$PYTHON" -c '
import json, sys
rows = json.load(open(sys.argv[1]))["variants"]
timed = {n: r["ms_per_step_median"] for n, r in rows.items()
         if r.get("dtype") == "bfloat16" and r.get("ms_per_step_median")}
print(min(timed, key=timed.get) if timed else "")' "$OUT/summary.json")
  [ -z "$name" ] || echo "${STEP_VARIANTS[$name]}"
}

run_search() {  # FLAGS: launch.search on random CIFAR-10-shaped arrays until the deadline
  local epochs=${SEARCH_EPOCHS:-50} start end status
  DATA=$(mktemp -d)  # the images (150 MB) stay out of OUT_DIR, also if the run is killed
  trap 'rm -rf "$DATA"' EXIT
  # CIFAR-10's shapes and splits: a train split (halved into weight and arch images by
  # the search) and a test split of a fifth of its size, 10 classes.
  "$PYTHON" - "$DATA/random_cifar10.npz" "${SEARCH_IMAGES:-50000}" <<'EOF'
import sys, numpy as np
rng, n = np.random.default_rng(0), int(sys.argv[2])
images = lambda count: rng.integers(0, 256, (count, 32, 32, 3), np.uint8)
labels = lambda count: rng.integers(0, 10, count).astype(np.int64)
np.savez(sys.argv[1], x_train=images(n), y_train=labels(n), x_test=images(n // 5),
         y_test=labels(n // 5))
EOF
  start=$(date +%s)
  # SIGTERM at the deadline: the search checkpoints and exits 0; SIGKILL 30 s later.
  # shellcheck disable=SC2086
  timeout -k 30 "$(left)" "$PYTHON" -m launch.search \
    --config="${SEARCH_CONFIG:-configs/folder_search.py}" --workdir="$OUT/search" \
    --config.data.name=arrays --config.data.path="$DATA/random_cifar10.npz" \
    --config.search.epochs="$epochs" --config.monitor.pictures=False $1 \
    2>&1 | tee "$OUT/search.log"
  status=${PIPESTATUS[0]}
  end=$(date +%s)
  "$PYTHON" - "$OUT" "$((end - start))" "$status" "$epochs" \
      "${SEARCH_CONFIG:-configs/folder_search.py}" "$1" <<'EOF'
import importlib.util, json, os, sys
from pcdarts_jax.bench import benchmark
out, seconds, status, epochs, config_path, flags = sys.argv[1:]
seconds, status, epochs = int(seconds), int(status), int(epochs)
run_dir = os.path.join(out, 'search')
read = lambda name: (json.load(open(os.path.join(run_dir, name)))
                     if os.path.exists(os.path.join(run_dir, name)) else None)
log = os.path.join(run_dir, 'genotypes.jsonl')
records = [json.loads(l) for l in open(log)] if os.path.exists(log) else []
epoch_seconds = [r['seconds'] for r in records]
# The run's arch start (config.json) and the searched config's own (the projection's).
ran = read('config.json')
spec = importlib.util.spec_from_file_location('search_config', config_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
target_start = module.get_config().search.arch_start_epoch
run_start = ran['search']['arch_start_epoch'] if ran else target_start
projection = benchmark.project_search_from_epochs(epoch_seconds, run_start, seconds, epochs,
                                                  target_start)
summary = {'wall_seconds': seconds, 'exit_status': status, 'search_summary': read('summary.json'),
           'flags': flags, 'epoch_seconds': epoch_seconds, 'arch_start_epoch': run_start,
           'complete': len(records) == epochs and run_start == target_start, **projection,
           'environment': json.load(open(os.path.join(out, 'environment.json')))}
json.dump(summary, open(os.path.join(out, 'search_summary.json'), 'w'), indent=1, sort_keys=True)
whole = summary['projected_wall_seconds']
print(f'search: {len(records)}/{epochs} epochs in {seconds} s wall clock (exit {status}); '
      f'the whole search: {whole if whole is None else round(whole)} s'
      f'{"" if summary["complete"] else " projected (" + projection["projection"] + ")"}')
EOF
}

if [ "$MODE" = steps ]; then
  # shellcheck disable=SC2086
  time_steps ${VARIANT_NAMES:-scan_float32 grouped_float32 merged_float32 scan_bfloat16 grouped_bfloat16 merged_bfloat16}
elif [ "$MODE" = seeds ]; then
  declare -A VARIANTS=()
  for n in ${SEEDS:-1 2 4 8}; do
    VARIANTS[seeds_$n]="--num_seeds=$n"
  done
  start_variants "$CONFIG" "$BATCH"
  wait
  "$PYTHON" - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
rows = {}
for path in glob.glob(os.path.join(out, 'seeds_*.jsonl')):
  lines = [json.loads(l) for l in open(path) if l.strip().startswith('{')]
  steps = [r for r in lines if r.get('measurement') == 'bilevel_step']
  n = int(os.path.basename(path)[len('seeds_'):-len('.jsonl')])
  rows[n] = ({k: steps[-1].get(k) for k in ('ms_per_step_median', 'ms_per_search_step',
                                            'peak_memory_bytes', 'compile_seconds')}
             if steps else {'error': open(path[:-len('.jsonl')] + '.log').read()[-600:]})
one = rows.get(1, {}).get('ms_per_search_step')
for n, row in rows.items():
  if one and row.get('ms_per_search_step'):
    row['per_search_throughput_vs_1'] = one / row['ms_per_search_step']
json.dump({'environment': json.load(open(os.path.join(out, 'environment.json'))),
           'seeds': {str(n): rows[n] for n in sorted(rows)}},
          open(os.path.join(out, 'summary.json'), 'w'), indent=1, sort_keys=True)
for n in sorted(rows):
  r = rows[n]
  print(f"N={n}: {r.get('ms_per_step_median') or float('nan'):9.1f} ms/step, "
        f"{r.get('ms_per_search_step') or float('nan'):8.1f} ms per search step, "
        f"x{r.get('per_search_throughput_vs_1') or float('nan'):5.2f} per-search throughput")
EOF
elif [ "$MODE" = drnas ]; then
  declare -A VARIANTS=(
    [stage1_scan_cells]="--stage=1 --config.model.scan_cells=True"
    [stage1_unrolled_cells]="--stage=1 --config.model.scan_cells=False"
    [stage2_per_edge]="--stage=2 --config.model.edge_impl=scan"
    [stage2_grouped]="--stage=2 --config.model.edge_impl=grouped"
    [stage2_merged]="--stage=2 --config.model.edge_impl=grouped --config.model.merge_separable=True"
  )
  start_variants "${DRNAS_CONFIG:-configs/drnas_cifar10_search.py}" "${DRNAS_BATCH:-64}"
  wait
  summarize
elif [ "$MODE" = search ]; then
  DEADLINE=${SEARCH_SECONDS:-530}
  run_search "${SEARCH_FLAGS:-}"
elif [ "$MODE" = all ]; then
  DEADLINE=${ALL_STEPS_SECONDS:-360}
  # shellcheck disable=SC2086
  time_steps ${VARIANT_NAMES:-grouped_float32 merged_float32 grouped_bfloat16 merged_bfloat16}
  layout=$(fastest_bfloat16)
  echo "search flags: ${layout:-none, the config layout}"
  DEADLINE=${SEARCH_SECONDS:-530}
  run_search "$layout --config.search.arch_start_epoch=${ALL_ARCH_START:-2} ${SEARCH_FLAGS:-}"
fi
