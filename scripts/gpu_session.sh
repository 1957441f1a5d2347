#!/usr/bin/env bash
# A short GPU loan's work in one prepared command (scripts/gpu_session.py says what and how long):
#
#   here:   make gpu-pack                          # .gpu: CamVid as JPEG, the hed-vgg16 trunk in fp16, torchfcn
#   device: bash scripts/gpu_session.sh            # carry [".gpu"], timeout_s 600: CUDA tests, GPU bench,
#                                                  # `fcnseg reproduce camvid --protocol gpu`; all in $OUT
#   here:   python -m scripts.gpu_session --collect <files_at>    # into docs/, the docs regenerated
#
# Options go to scripts/gpu_session.py (--phases tests,bench,train, --budget SECONDS, --toy, ...).
# The interpreter is python3 (the GPU machine's, which holds PyTorch) unless $PYTHON names another.
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m scripts.gpu_session "$@"
