#!/usr/bin/env bash
# Build .gpu_bundle/: what benchmarks/gpu_check.py needs on an offline GPU machine beyond what it has.
#
# The GPU machine (see benchmarks/README.md): Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, peft,
# accelerate, safetensors, pandas, pyarrow, pytest, ... but no bitsandbytes, trl or datasets, and no package index.
# This script, run where PyPI is reachable, downloads the pinned wheels for Python 3.12 / manylinux x86_64, installs
# them into .gpu_bundle/site (no dependencies resolved: each one the machine lacks is named below), keeps only
# bitsandbytes' CUDA 13 library, and copies a few hundred HH-RLHF pairs into .gpu_bundle/data. DeepSpeed (gpu_check's
# zero3 section) is on PyPI as a source archive only: its pure-Python wheel is built here and travels in
# .gpu_bundle/wheels with transformers'. gpu_check.py puts
# .gpu_bundle/site first on sys.path (and on its children's PYTHONPATH) when it is there.
# bt-peft needs transformers 5.24 (5.17 lacks `Trainer.is_distributed_loading_by_transformers`, which the checkpoint
# code checks): installed it takes 60 MiB, so its 13 MiB wheel travels in .gpu_bundle/wheels and is installed into
# .gpu_bundle/site on the GPU machine, offline, before the check (the command is in benchmarks/README.md). The bundle
# must stay under the 64 MiB a device call carries; the script says its size and fails above that.
#
# Environment:
#   PYTHON    an interpreter with pip (default: .venv/bin/python when there, else python3)
#   HH_DIR    the HH-RLHF harmless-base split to sample (default: ../shared/data/hh-rlhf-harmless-base)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
HH_DIR="${HH_DIR:-../shared/data/hh-rlhf-harmless-base}"
BUNDLE=.gpu_bundle
LIMIT_MIB=64
# The versions the tests run with (pyproject.toml), the two pure-Python needs of datasets the machine lacks, and
# bt-peft's serving extra (starlette, uvicorn) with their pure-Python needs, for gpu_check's serve section.
SPECS=(bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 peft==0.21.2 dill==0.4.1 multiprocess==0.70.19
       starlette==1.10.0 uvicorn==0.54.0 anyio==4.16.0 idna==3.20 click==8.5.1 h11==0.16.0
       hjson==3.1.0 py-cpuinfo==9.0.0 einops==0.8.2 msgpack==1.2.4 ninja==1.13.2 pydantic==2.14.4
       pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5)
DEEPSPEED=deepspeed==0.19.8
INSTALL_THERE=(transformers==5.24.0)
KEEP_LIBRARY=libbitsandbytes_cuda130.so
PLATFORM=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
          --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform any --only-binary=:all:)

step() { printf '==> %s\n' "$*"; }

[[ -f "$HH_DIR/train.jsonl" && -f "$HH_DIR/dev.jsonl" ]] \
    || { echo "error: no HH-RLHF train.jsonl/dev.jsonl in $HH_DIR (set HH_DIR)" >&2; exit 1; }
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/wheels" "$BUNDLE/site" "$BUNDLE/data/hh-rlhf-harmless-base"

step "Downloading ${SPECS[*]} for Python 3.12, manylinux x86_64"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps "${PLATFORM[@]}" -d "$BUNDLE/wheels" "${SPECS[@]}"

step "Installing them into $BUNDLE/site"
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-compile "${PLATFORM[@]}" \
    --target "$BUNDLE/site" "$BUNDLE"/wheels/*.whl
rm -rf "$BUNDLE/wheels" "$BUNDLE/site/bin"

step "Downloading ${INSTALL_THERE[*]} into $BUNDLE/wheels (installed on the GPU machine)"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps "${PLATFORM[@]}" -d "$BUNDLE/wheels" "${INSTALL_THERE[@]}"

step "Building the wheel of $DEEPSPEED into $BUNDLE/wheels (installed on the GPU machine)"
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$BUNDLE/wheels" "$DEEPSPEED"

step "Keeping only bitsandbytes' $KEEP_LIBRARY (and its 64 KiB CPU library, for --cpu-smoke)"
[[ -f "$BUNDLE/site/bitsandbytes/$KEEP_LIBRARY" ]] \
    || { echo "error: the bitsandbytes wheel has no $KEEP_LIBRARY" >&2; exit 1; }
find "$BUNDLE/site/bitsandbytes" -name "libbitsandbytes_*" ! -name "$KEEP_LIBRARY" ! -name libbitsandbytes_cpu.so -delete
find "$BUNDLE/site" -name __pycache__ -type d -prune -exec rm -rf {} +

step "Sampling HH-RLHF pairs from $HH_DIR"
head -n 256 "$HH_DIR/train.jsonl" > "$BUNDLE/data/hh-rlhf-harmless-base/train.jsonl"
head -n 64 "$HH_DIR/dev.jsonl" > "$BUNDLE/data/hh-rlhf-harmless-base/dev.jsonl"

SIZE_KIB=$(du -sk "$BUNDLE" | cut -f1)
step "$BUNDLE: $((SIZE_KIB / 1024)) MiB ($(ls "$BUNDLE/site" | grep -c dist-info) packages)"
if (( SIZE_KIB > LIMIT_MIB * 1024 )); then
    echo "error: $BUNDLE is over $LIMIT_MIB MiB" >&2
    exit 1
fi
