#!/usr/bin/env bash
# Cone-beam CT reconstruction with a 2D diffusion prior and inter-slice consistent noise (ISCS).
# Edit the variables below (or set them in the environment), then run:
#   bash recon_CBCT.sh [more recon_CBCT.py options, e.g. --device cpu --slice-end 16]
# Options given on the command line come last and override the variables.
# The defaults reconstruct 32 slices of the shipped demo phantom with the shipped CT prior, sized to
# finish in about two minutes on a 2-core CPU; on a GPU run the whole volume with more steps:
#   SLICE_BEGIN=0 SLICE_END=0 NFE=50 bash recon_CBCT.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

DATA="${DATA:-$REPO/data/demo/ct_phantom_demo.nii.gz}"
CHECKPOINT_PATH="${CHECKPOINT_PATH:-$REPO/checkpoints/ct_phantom_128.pt}"
CONFIG_PATH="${CONFIG_PATH:-$REPO/configs/ve/CT_phantom_128.yaml}"   # empty: use the config inside the checkpoint
TASK="${TASK:-SVCT}"                    # LACT (limited arc) or SVCT (sparse views)
DEGREE="${DEGREE:-30}"                  # LACT: covered arc in degrees; SVCT: number of views
METHOD="${METHOD:-DDS}"                 # DDS, DDNM, ADMM-TV, FDK, SIRT
NFE="${NFE:-10}"                        # denoiser evaluations
NUM_CG="${NUM_CG:-5}"                   # CG iterations per data-consistency step
W_TIK="${W_TIK:-0}"                     # DDS proximal weight
W_DZ="${W_DZ:-0}"                       # DDS+TV weight along z (0: off)
NOISE_CONTROL="${NOISE_CONTROL:-SLERP}" # SLERP (ISCS), None (iid), BCS (shared), iscs, iid, shared, ar1
RENOISE_METHOD="${RENOISE_METHOD:-DDS}" # DDPM, DDS, DiffPIR, DDIM
SINO_NOISE="${SINO_NOISE:-0}"           # <= 0 none, (0, 100) Gaussian, >= 100 Poisson I0
SLICE_BEGIN="${SLICE_BEGIN:-16}"        # slice range [begin, end); both 0: whole volume
SLICE_END="${SLICE_END:-48}"
SEED="${SEED:-42}"
RESULTS_DIR="${RESULTS_DIR:-results}"
PYTHON="${PYTHON:-python}"

"$PYTHON" "$REPO/recon_CBCT.py" \
    --data "$DATA" \
    --checkpoint-path "$CHECKPOINT_PATH" \
    ${CONFIG_PATH:+--config-path "$CONFIG_PATH"} \
    --task "$TASK" --degree "$DEGREE" --method "$METHOD" \
    --NFE "$NFE" --num-cg "$NUM_CG" --w-tik "$W_TIK" --w-dz "$W_DZ" \
    --noise-control "$NOISE_CONTROL" --renoise-method "$RENOISE_METHOD" \
    --sino-noise "$SINO_NOISE" \
    --slice-begin "$SLICE_BEGIN" --slice-end "$SLICE_END" \
    --seed "$SEED" --results-dir "$RESULTS_DIR" \
    "$@"
echo "Whole volume on a GPU: SLICE_BEGIN=0 SLICE_END=0 NFE=50 bash recon_CBCT.sh --device cuda"
