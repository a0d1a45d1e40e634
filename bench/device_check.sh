#!/usr/bin/env bash
# The accelerator check of bench/BENCHMARKS.md, in one run that stays under 8 minutes on
# one GPU (each part has a time limit; a part that fails or runs out is reported and the
# next one runs):
#   1. bench/quantizers.py: the N2UQ quantizers against a ReLU, forward + backward (on an
#      accelerator the activation backward takes its broadcast-and-reduce form), at the
#      book's shape and at batch 256;
#   2. bench/train_step.py: the ResNet-18 W2A2 train step against the float ResNet-18s;
#   3. CIFAR-10 ResNet-20 training throughput through train.py on the JPEG folders, full
#      precision and W2A2 N2UQ (cross-entropy), read from metrics.jsonl.
#
#   OUT=DIR bash bench/device_check.sh          # on the GPU machine ($OUT is set there)
#   SMALL=1 OUT=DIR bash bench/device_check.sh  # tiny shapes and steps: a CPU dry run
#
# Everything goes into $OUT (default bench/device_check_out), at most six files:
# device_check.txt (the machine, each part's time and status, the throughput figures),
# quantizers.txt, train_step.txt, cifar10_fp.txt, cifar10_w2a2.txt (each part's output)
# and cifar10_metrics.jsonl (both runs' metrics).
#
# Optional environment:
#   DATA_DIR       a folder holding train/<class>/<image>.jpg (CIFAR-10 as JPEG folders);
#                  without it the tarball CIFAR_TARBALL (default $N2UQ_CIFAR10_TARBALL,
#                  ../shared/datasets/cifar10/train.tar.gz or shared/datasets/cifar10/
#                  train.tar.gz) is extracted into a temporary folder.
#   PYTHON         the interpreter (default python3).
#   WHEELS         a folder of wheels (and sdists) installed first with pip --no-index
#                  --no-deps, for a machine that cannot reach a package index:
#                  bench/device_wheels.sh DIR downloads those a GPU image with JAX lacks.
#   CIFAR_STEPS, CIFAR_WORKERS, LIMIT_QUANTIZERS, LIMIT_TRAIN_STEP, LIMIT_CIFAR (seconds
#                  per CIFAR run): override the settings below.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-bench/device_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
REPORT="$OUT/device_check.txt"
: >"$REPORT"

if [ "${SMALL:-0}" = "1" ]; then
  QUANTIZER_RUNS=("--shape 2 16 16 16 --kernel 3 3 16 16 --bits 2 --repeats 3")
  TRAIN_STEP_ARGS="--batch 2 --image-size 32 --steps 1 --repeats 1"
  CIFAR_STEPS="${CIFAR_STEPS:-4}"; CIFAR_BATCH=16; CIFAR_LOG=2; CIFAR_WORKERS="${CIFAR_WORKERS:-0}"
else
  QUANTIZER_RUNS=("--shape 32 56 56 64 --bits 2 4 --repeats 100"
                  "--shape 256 56 56 64 --kernel 3 3 512 512 --bits 2 --repeats 50")
  TRAIN_STEP_ARGS="--batch 128 --image-size 224 --steps 5 --repeats 5"
  CIFAR_STEPS="${CIFAR_STEPS:-400}"; CIFAR_BATCH=128; CIFAR_LOG=50; CIFAR_WORKERS="${CIFAR_WORKERS:-8}"
fi
LIMIT_QUANTIZERS="${LIMIT_QUANTIZERS:-90}"
LIMIT_TRAIN_STEP="${LIMIT_TRAIN_STEP:-170}"
LIMIT_CIFAR="${LIMIT_CIFAR:-90}"

say() { echo "$*" | tee -a "$REPORT"; }

# part NAME LIMIT LOGFILE COMMAND...: runs COMMAND under a time limit, output to LOGFILE,
# and reports its status and wall time.
part() {
  local name="$1" limit="$2" log="$3"; shift 3
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local status=$?
  local note="ok"
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then note="TIMED OUT after ${limit} s"
  elif [ "$status" != 0 ]; then note="FAILED (exit $status), see $(basename "$log")"; fi
  say "[$name] $note; $((SECONDS - start)) s"
  return "$status"
}

say "device check $(date -u +%Y-%m-%dT%H:%M:%SZ), small=${SMALL:-0}"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
command -v nvidia-smi >/dev/null && say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation "$WHEELS"/* \
    >>"$REPORT" 2>&1 \
    && say "installed the wheels of $WHEELS" || say "installing the wheels of $WHEELS FAILED"
fi
"$PY" - >>"$REPORT" 2>&1 <<'EOF'
import importlib, platform
import jax
print(f'python {platform.python_version()}, jax {jax.__version__}, devices {jax.devices()}')
for name in ('flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'grain', 'tensorflow_datasets'):
  try:
    print(f'{name} {getattr(importlib.import_module(name), "__version__", "?")}')
  except ImportError as error:
    print(f'{name} MISSING ({error}); carry its wheel in WHEELS')
EOF
tail -n 7 "$REPORT"

for args in "${QUANTIZER_RUNS[@]}"; do
  echo "== python bench/quantizers.py $args" >>"$OUT/quantizers.txt"
  # shellcheck disable=SC2086
  part "quantizers $args" "$LIMIT_QUANTIZERS" "$OUT/quantizers.txt" "$PY" bench/quantizers.py $args
done
grep -E 'ratio' "$OUT/quantizers.txt" | tee -a "$REPORT"

echo "== python bench/train_step.py $TRAIN_STEP_ARGS" >>"$OUT/train_step.txt"
# shellcheck disable=SC2086
part "train_step $TRAIN_STEP_ARGS" "$LIMIT_TRAIN_STEP" "$OUT/train_step.txt" \
  "$PY" bench/train_step.py $TRAIN_STEP_ARGS
grep -E 'median|ratio' "$OUT/train_step.txt" | tee -a "$REPORT"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if [ -z "${DATA_DIR:-}" ]; then
  TARBALL="${CIFAR_TARBALL:-${N2UQ_CIFAR10_TARBALL:-}}"
  for candidate in ../shared/datasets/cifar10/train.tar.gz shared/datasets/cifar10/train.tar.gz; do
    [ -z "$TARBALL" ] && [ -f "$candidate" ] && TARBALL="$candidate"
  done
  if [ -z "$TARBALL" ] || [ ! -f "$TARBALL" ]; then
    say "[cifar10] SKIPPED: no DATA_DIR and no tarball (set DATA_DIR or CIFAR_TARBALL)"
    exit 0
  fi
  start=$SECONDS
  mkdir -p "$TMP/data" && tar -xzf "$TARBALL" -C "$TMP/data" || { say "[cifar10] extracting $TARBALL FAILED"; exit 0; }
  DATA_DIR="$(dirname "$(find "$TMP/data" -maxdepth 3 -type d -name train | head -n 1)")"
  say "[cifar10] extracted $TARBALL in $((SECONDS - start)) s"
fi

for variant in fp w2a2; do
  log="$OUT/cifar10_$variant.txt"
  part "cifar10 $variant: $CIFAR_STEPS steps, batch $CIFAR_BATCH" "$LIMIT_CIFAR" "$log" \
    "$PY" train.py "--config=configs/cifar10_resnet20.py:$variant" --config.loss=ce \
    --config.data.source=folder "--config.data.data_dir=$DATA_DIR" \
    --config.data.validation_fraction=0.1 "--config.data.worker_count=$CIFAR_WORKERS" \
    "--config.global_batch_size=$CIFAR_BATCH" "--config.num_train_steps=$CIFAR_STEPS" \
    --config.eval_every_steps=-1 "--config.log_every_steps=$CIFAR_LOG" \
    --config.checkpoint_every_steps=1000000 --config.progress_bar=False \
    --config.tensorboard=False --config.compilation_cache_dir= "--workdir=$TMP/run_$variant"
  metrics="$TMP/run_$variant/$variant/metrics.jsonl"
  if [ -f "$metrics" ]; then
    sed "s/^{/{\"device_check_run\": \"$variant\", /" "$metrics" >>"$OUT/cifar10_metrics.jsonl"
    "$PY" - "$metrics" "$variant" <<'EOF' | tee -a "$REPORT"
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rates = [r['images_per_second'] for r in records if 'images_per_second' in r]
compile_s = [r['compile_seconds'] for r in records if 'compile_seconds' in r]
steady = rates[1:] or rates  # the first window still warms up
print(f'cifar10 {sys.argv[2]}: {statistics.median(steady):.0f} images/s (median of '
      f'{len(steady)} logged windows after the first; first {rates[0]:.0f}), compile '
      f'{compile_s[0] if compile_s else float("nan"):.1f} s' if rates else
      f'cifar10 {sys.argv[2]}: no throughput logged')
EOF
  fi
done
say "done $(date -u +%Y-%m-%dT%H:%M:%SZ)"
