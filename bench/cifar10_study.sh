#!/usr/bin/env bash
# The CIFAR-10 study of docs/REPRODUCTION.md: a full-precision cifar_resnet20 trained
# with cross-entropy, then each W2A2 method initialised from it and distilled from it,
# every number on the same 5,000 held-out training images (validation_fraction=0.1,
# split_seed 0). Each run resumes where it stopped when the script is started again.
#
#   DATA_DIR=/data/cifar10 RUN_ROOT=/runs/cifar10 bash bench/cifar10_study.sh
#
# DATA_DIR holds train/<class>/<image>.jpg (the layout of the CIFAR-10 JPEG tarball).
# FP_EPOCHS, Q_EPOCHS, SEED and METHODS (space-separated config tokens) are optional.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA_DIR:?set DATA_DIR to the folder holding train/<class>/}"
: "${RUN_ROOT:?set RUN_ROOT to a folder for the run directories}"
FP_EPOCHS="${FP_EPOCHS:-8}"
Q_EPOCHS="${Q_EPOCHS:-4}"
SEED="${SEED:-0}"
METHODS="${METHODS:-n2uq dorefa n2uq_dorefa_weights lsq pact dorefa_n2uq_weights}"

data_flags=(--config.data.source=folder "--config.data.data_dir=${DATA_DIR}"
            --config.data.validation_fraction=0.1 --config.progress_bar=False
            --config.checkpoint_every_steps=100 "--config.seed=${SEED}")

python train.py --config=configs/cifar10_resnet20.py:fp "${data_flags[@]}" \
  "--config.num_epochs=${FP_EPOCHS}" "--workdir=${RUN_ROOT}/seed${SEED}/fp"
fp_run="${RUN_ROOT}/seed${SEED}/fp/fp"
for method in ${METHODS}; do
  python train.py "--config=configs/cifar10_resnet20.py:w2a2,${method}" "${data_flags[@]}" \
    "--config.num_epochs=${Q_EPOCHS}" "--config.init_checkpoint=${fp_run}" \
    "--config.teacher_checkpoint=${fp_run}" "--workdir=${RUN_ROOT}/seed${SEED}/w2a2_${method}"
done
