#!/usr/bin/env bash
# Downloads into DIR the packages that bench/device_check.sh needs beyond JAX, Flax, optax,
# orbax and NumPy, for CPython 3.12 on x86-64 Linux: the input pipeline (grain,
# array_record, tensorflow-datasets and its dependencies) and the configs (ml_collections).
# Carry DIR to a machine that cannot reach a package index and run the check with
# WHEELS=DIR.
#
#   bash bench/device_wheels.sh DIR [PYTHON_VERSION]     # default 3.12
set -euo pipefail
DIR="${1:?usage: bash bench/device_wheels.sh DIR [PYTHON_VERSION]}"
VERSION="${2:-3.12}"
mkdir -p "$DIR"
python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$VERSION" \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d "$DIR" \
  ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 tensorflow-datasets==4.9.10 \
  importlib_resources==7.1.0 portpicker==1.6.0 dm-tree==0.1.10 immutabledict==4.3.1 \
  simple_parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0 \
  googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2
# promise is published as a source archive only (pure Python)
python -m pip download --quiet --no-deps --no-binary=:all: -d "$DIR" promise==2.3
ls "$DIR"
