#!/usr/bin/env bash
# Cone-beam CT reconstruction with a 2D diffusion prior and inter-slice consistent noise (ISCS).
#
# Every variable below is optional. Set it here or in the environment to pass its option; left
# empty, recon_CBCT.py's own default applies (the same as `python recon_CBCT.py`; see its --help).
# Options given on the command line come last and override the variables:
#   bash recon_CBCT.sh                                      # the demo phantom, SVCT-30, NFE 50, all slices
#   NFE=10 SLICE_BEGIN=16 SLICE_END=48 bash recon_CBCT.sh   # CPU-sized: 32 slices, 10 steps (a few minutes)
#   bash recon_CBCT.sh --data my_ct.nii.gz --task LACT --degree 90
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

DATA="${DATA:-}"                       # input volume in HU (NIfTI or .pt/.npy); default: the demo phantom
CHECKPOINT_PATH="${CHECKPOINT_PATH:-}" # score model; default: the shipped CT prior
CONFIG_PATH="${CONFIG_PATH:-}"         # model config; default: the one inside the checkpoint
TASK="${TASK:-}"                       # SVCT (sparse views) or LACT (limited arc)
DEGREE="${DEGREE:-}"                   # SVCT: number of views; LACT: covered arc in degrees
METHOD="${METHOD:-}"                   # DDS, DDNM, ADMM-TV, FDK, SIRT
NFE="${NFE:-}"                         # denoiser evaluations
NUM_CG="${NUM_CG:-}"                   # CG iterations per data-consistency step
NOISE_CONTROL="${NOISE_CONTROL:-}"     # SLERP (ISCS), None (iid), BCS (shared), iscs, iid, shared, ar1
SINO_NOISE="${SINO_NOISE:-}"           # <= 0 none, (0, 100) Gaussian, >= 100 Poisson I0
SLICE_BEGIN="${SLICE_BEGIN:-}"         # slice range [begin, end) in the file's own order
SLICE_END="${SLICE_END:-}"
SEED="${SEED:-}"
RESULTS_DIR="${RESULTS_DIR:-}"

args=()
for pair in DATA:--data CHECKPOINT_PATH:--checkpoint-path CONFIG_PATH:--config-path TASK:--task \
    DEGREE:--degree METHOD:--method NFE:--NFE NUM_CG:--num-cg NOISE_CONTROL:--noise-control \
    SINO_NOISE:--sino-noise SLICE_BEGIN:--slice-begin SLICE_END:--slice-end SEED:--seed \
    RESULTS_DIR:--results-dir; do
    name="${pair%%:*}"
    if [[ -n "${!name}" ]]; then args+=("${pair#*:}" "${!name}"); fi
done
exec "$PYTHON" "$REPO/recon_CBCT.py" "${args[@]}" "$@"
