#!/usr/bin/env bash
# The CIFAR-10 study grid of docs/REPRODUCTION.md on one GPU, meant to finish within 10
# minutes: the FP run, then the six W2A2 configurations at three seeds, all in one Python
# process (bench/device_study.py) that decodes the JPEGs once into memory (data source
# 'memory') and reuses its compilations (JAX's persistent compilation cache). It writes the
# run layout of bench/cifar10_study.sh; read the tables with
#
#   DATA_DIR=/data/cifar10 RUN_ROOT=/runs/c10_gpu bash bench/device_study.sh
#   python bench/study_table.py /runs/c10_gpu
#
# SMALL=1 is the CPU dry run: 10 images per class (symbolic links under RUN_ROOT/data),
# batch 10, one epoch each (9 steps), seeds 0 and 1, every configuration.
#
# DATA_DIR holds train/<class>/<image>.jpg. Optional: SEEDS (default "0 1 2"), CONFIGS
# (METHOD or METHOD@MULTIPLIER entries, as bench/cifar10_study.sh), FP_EPOCHS (8),
# Q_EPOCHS (4), BATCH (0: the config's 128), READ_THREADS (4), PYTHON (python3),
# CACHE_DIR (decoded images; default RUN_ROOT/decoded), JAX_CACHE (compilation cache;
# default RUN_ROOT/jax_cache).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA_DIR:?set DATA_DIR to the folder holding train/<class>/}"
: "${RUN_ROOT:?set RUN_ROOT to a folder for the run directories}"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "${RUN_ROOT}"
if [[ -n "${SMALL:-}" ]]; then
  small="${RUN_ROOT}/data"
  for class_dir in "${DATA_DIR}"/train/*/; do
    class="$(basename "${class_dir}")"
    mkdir -p "${small}/train/${class}"
    for image in $(ls "${class_dir}" | sort | head -n 10); do
      ln -sf "$(cd "${class_dir}" && pwd)/${image}" "${small}/train/${class}/${image}"
    done
  done
  DATA_DIR="${small}" SEEDS="${SEEDS:-0 1}" FP_EPOCHS=1 Q_EPOCHS=1 BATCH=10
fi
"${PYTHON:-python3}" bench/device_study.py --data-dir="${DATA_DIR}" --run-root="${RUN_ROOT}" \
  --seeds="${SEEDS:-0 1 2}" --configs="${CONFIGS:-n2uq@0.1 uniform n2uq@1 n2uq@10 dorefa lsq@0.1}" \
  --fp-epochs="${FP_EPOCHS:-8}" --q-epochs="${Q_EPOCHS:-4}" --batch-size="${BATCH:-0}" \
  --read-threads="${READ_THREADS:-4}" --cache-dir="${CACHE_DIR:-${RUN_ROOT}/decoded}" \
  --compilation-cache="${JAX_CACHE:-${RUN_ROOT}/jax_cache}"
