#!/usr/bin/env bash
# MRI z-axis super-resolution with a 2D diffusion prior on planes that contain z, and ISCS noise.
#
# Every variable below is optional. Set it here or in the environment to pass its option; left
# empty, recon_MRI_ZSR.py's own default applies (the same as `python recon_MRI_ZSR.py`; see its
# --help). Options given on the command line come last and override the variables:
#   bash recon_ZSR.sh                                       # the demo brain, x4, NFE 50, all planes
#   NFE=10 SLICE_BEGIN=48 SLICE_END=80 bash recon_ZSR.sh    # CPU-sized: 32 coronal planes, 10 steps
#   bash recon_ZSR.sh --data my_t1.nii.gz --degree 5
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

DATA="${DATA:-}"                       # input volume (NIfTI or .pt/.npy); default: the demo brain
CHECKPOINT_PATH="${CHECKPOINT_PATH:-}" # score model; default: the shipped MRI prior
CONFIG_PATH="${CONFIG_PATH:-}"         # model config; default: the one inside the checkpoint
DEGREE="${DEGREE:-}"                   # the factor: input slices averaged into one thick slice
METHOD="${METHOD:-}"                   # DDS, DDNM, ADMM-TV, A_dagger
NFE="${NFE:-}"                         # denoiser evaluations
NUM_CG="${NUM_CG:-}"                   # CG iterations per data-consistency step
NOISE_CONTROL="${NOISE_CONTROL:-}"     # SLERP (ISCS), None (iid), BCS (shared), iscs, iid, shared, ar1
SLICE_BEGIN="${SLICE_BEGIN:-}"         # coronal slice range [begin, end) in the file's own order
SLICE_END="${SLICE_END:-}"
SEED="${SEED:-}"
RESULTS_DIR="${RESULTS_DIR:-}"

args=()
for pair in DATA:--data CHECKPOINT_PATH:--checkpoint-path CONFIG_PATH:--config-path DEGREE:--degree \
    METHOD:--method NFE:--NFE NUM_CG:--num-cg NOISE_CONTROL:--noise-control SLICE_BEGIN:--slice-begin \
    SLICE_END:--slice-end SEED:--seed RESULTS_DIR:--results-dir; do
    name="${pair%%:*}"
    if [[ -n "${!name}" ]]; then args+=("${pair#*:}" "${!name}"); fi
done
exec "$PYTHON" "$REPO/recon_MRI_ZSR.py" "${args[@]}" "$@"
