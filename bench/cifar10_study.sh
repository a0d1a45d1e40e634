#!/usr/bin/env bash
# The CIFAR-10 study of docs/REPRODUCTION.md: a full-precision cifar_resnet20 trained once
# with cross-entropy (seed 0), then every W2A2 configuration at every seed, each one
# initialised from that FP checkpoint and distilled from it, every number on the same
# 5,000 held-out training images (validation_fraction=0.1, split_seed 0). Each run resumes
# where it stopped, and a finished run is skipped, when the script is started again.
#
#   DATA_DIR=/data/cifar10 RUN_ROOT=/runs/cifar10 bash bench/cifar10_study.sh
#
# DATA_DIR holds train/<class>/<image>.jpg (the layout of the CIFAR-10 JPEG tarball).
# Optional:
#   SEEDS    the W2A2 seeds (data order and augmentation), default "0 1 2";
#   CONFIGS  space-separated METHOD or METHOD@MULTIPLIER entries: a config token of
#            configs/cifar10_resnet20.py, and the quantizer learning-rate multiplier
#            (config quantizer_lr_multiplier; without @, the config's 0.1);
#   FP_EPOCHS (8), Q_EPOCHS (4).
# Run directories: RUN_ROOT/fp/fp, and RUN_ROOT/seed<S>/w2a2_<METHOD>[_qlr<MULTIPLIER>]/<variant>.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA_DIR:?set DATA_DIR to the folder holding train/<class>/}"
: "${RUN_ROOT:?set RUN_ROOT to a folder for the run directories}"
FP_EPOCHS="${FP_EPOCHS:-8}"
Q_EPOCHS="${Q_EPOCHS:-4}"
SEEDS="${SEEDS:-0 1 2}"
CONFIGS="${CONFIGS:-n2uq@0.1 uniform n2uq@1 n2uq@10 dorefa lsq@0.1}"

data_flags=(--config.data.source=folder "--config.data.data_dir=${DATA_DIR}"
            --config.data.validation_fraction=0.1 --config.progress_bar=False
            --config.checkpoint_every_steps=100)

python train.py --config=configs/cifar10_resnet20.py:fp "${data_flags[@]}" --config.seed=0 \
  "--config.num_epochs=${FP_EPOCHS}" "--workdir=${RUN_ROOT}/fp"
fp_run="${RUN_ROOT}/fp/fp"
for seed in ${SEEDS}; do
  for entry in ${CONFIGS}; do
    method="${entry%@*}"
    name="w2a2_${method}"
    multiplier_flags=()
    if [[ "${entry}" == *@* ]]; then
      multiplier="${entry#*@}"
      name="${name}_qlr${multiplier}"
      multiplier_flags=("--config.quantizer_lr_multiplier=${multiplier}")
    fi
    echo "=== seed ${seed} ${name} ($(date -u +%FT%TZ))"
    python train.py "--config=configs/cifar10_resnet20.py:w2a2,${method}" "${data_flags[@]}" \
      "--config.seed=${seed}" "${multiplier_flags[@]}" "--config.num_epochs=${Q_EPOCHS}" \
      "--config.init_checkpoint=${fp_run}" "--config.teacher_checkpoint=${fp_run}" \
      "--workdir=${RUN_ROOT}/seed${seed}/${name}"
  done
done
