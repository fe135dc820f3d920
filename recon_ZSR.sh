#!/usr/bin/env bash
# MRI z-axis super-resolution with a 2D diffusion prior on planes that contain z and ISCS noise.
# Edit the variables below (or set them in the environment), then run:
#   bash recon_ZSR.sh [more recon_MRI_ZSR.py options, e.g. --device cpu --slice-end 16]
# Options given on the command line come last and override the variables.
# The defaults reconstruct 32 coronal planes of the shipped demo MRI volume with the shipped MRI prior,
# sized to finish in about a minute on a 2-core CPU; on a GPU run the whole volume with more steps:
#   SLICE_BEGIN=0 SLICE_END=0 NFE=50 bash recon_ZSR.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

DATA="${DATA:-$REPO/data/demo/mri_demo.nii.gz}"
CHECKPOINT_PATH="${CHECKPOINT_PATH:-$REPO/checkpoints/mri_zsr_128.pt}"
CONFIG_PATH="${CONFIG_PATH:-$REPO/configs/ve/MRI_ZSR_128.yaml}"     # empty: use the config inside the checkpoint
TASK="${TASK:-ZSR}"
DEGREE="${DEGREE:-4}"                   # the factor: thin slices averaged into one thick slice
METHOD="${METHOD:-DDS}"                 # DDS, DDNM, ADMM-TV
NFE="${NFE:-10}"                        # denoiser evaluations
NUM_CG="${NUM_CG:-5}"                   # CG iterations per data-consistency step
W_TIK="${W_TIK:-0}"                     # DDS proximal weight
W_DZ="${W_DZ:-0}"                       # DDS+TV weight along z (0: off)
NOISE_CONTROL="${NOISE_CONTROL:-SLERP}" # SLERP (ISCS), None (iid), BCS (shared), iscs, iid, shared, ar1
RENOISE_METHOD="${RENOISE_METHOD:-DDS}" # DDPM, DDS, DiffPIR, DDIM
SLICE_BEGIN="${SLICE_BEGIN:-48}"        # range of coronal slices [begin, end); both 0: whole volume
SLICE_END="${SLICE_END:-80}"
SEED="${SEED:-42}"
RESULTS_DIR="${RESULTS_DIR:-results}"
PYTHON="${PYTHON:-python}"

"$PYTHON" "$REPO/recon_MRI_ZSR.py" \
    --data "$DATA" \
    --checkpoint-path "$CHECKPOINT_PATH" \
    ${CONFIG_PATH:+--config-path "$CONFIG_PATH"} \
    --task "$TASK" --degree "$DEGREE" --method "$METHOD" \
    --NFE "$NFE" --num-cg "$NUM_CG" --w-tik "$W_TIK" --w-dz "$W_DZ" \
    --noise-control "$NOISE_CONTROL" --renoise-method "$RENOISE_METHOD" \
    --slice-begin "$SLICE_BEGIN" --slice-end "$SLICE_END" \
    --seed "$SEED" --results-dir "$RESULTS_DIR" \
    "$@"
echo "Whole volume on a GPU: SLICE_BEGIN=0 SLICE_END=0 NFE=50 bash recon_ZSR.sh --device cuda"
