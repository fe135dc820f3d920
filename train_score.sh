#!/usr/bin/env bash
# Train, or continue training, one of the shipped demo priors. Edit the variables below or set them
# in the environment (e.g. `PRIOR=mri_dr_128 MAX_MINUTES=9 bash train_score.sh`); extra arguments
# go to train_score.py (see `python train_score.py --help`).
#
# Continuing: if RUN_DIR holds a checkpoint the run resumes from it (model, EMA, optimiser, step,
# generators, data-pool position); otherwise, if INIT_WEIGHTS names an exported file, a new run
# starts from those weights; otherwise a new run starts from scratch.
set -euo pipefail
cd "$(dirname "$0")"

PRIOR=${PRIOR:-ct_dr_128}               # ct_dr_128 | mri_dr_128 (shipped) | ct_phantom_128 | mri_zsr_128 (their bases)
RUN_DIR=${RUN_DIR:-runs/$PRIOR}         # checkpoints, loss log, sample grids
MAX_MINUTES=${MAX_MINUTES:-9}           # wall-clock budget of this call (saves and exits before it)
BATCH_SIZE=${BATCH_SIZE:-128}
DEVICE=${DEVICE:-cuda}
COMPILE=${COMPILE:---compile}           # --compile | --no-compile
EXPORT=${EXPORT:-checkpoints/$PRIOR.pt} # compact fp16 EMA weights written at the end of the call
INIT_WEIGHTS=${INIT_WEIGHTS:-}          # exported weights to start a new run from
TEMPLATE=${TEMPLATE:-}                  # MRI: template copy (python -m datasets.mri --save-template --out X.pt)
PYTHON=${PYTHON:-python}               # the interpreter that has torch

# The *_dr_128 priors train the same networks on domain-randomised data (body regions, fields of view, slice
# thickness, scanner HU scales, noise; MRI contrasts, bias, resolution, noise), e.g. fine-tuned from the
# shipped priors with INIT_WEIGHTS and a lower learning rate passed as extra arguments.
declare -A CONFIGS=([ct_phantom_128]=configs/ve/CT_phantom_128.yaml [mri_zsr_128]=configs/ve/MRI_ZSR_128.yaml
                    [ct_dr_128]=configs/ve/CT_phantom_128.yaml [mri_dr_128]=configs/ve/MRI_ZSR_128.yaml)
# Phantoms take tens of milliseconds each on a GPU, an augmented brain a few: refresh the pools accordingly;
# the randomised CT distribution is wider, so its pool is larger and refreshed more often.
declare -A SOURCES=([ct_phantom_128]="--data phantom --refresh-every 8"
                    [mri_zsr_128]="--data mri --plane coronal --refresh-every 2"
                    [ct_dr_128]="--data phantom-dr --pool-size 64 --refresh-every 4"
                    [mri_dr_128]="--data mri-dr --plane coronal --refresh-every 2")
if [[ -z "${CONFIGS[$PRIOR]:-}" ]]; then
  echo "error: PRIOR=$PRIOR; accepted: ${!CONFIGS[*]}" >&2
  exit 2
fi

START=()
if compgen -G "$RUN_DIR/checkpoints/trainer_*.pt" >/dev/null; then
  START=(--resume)
elif [[ -n "$INIT_WEIGHTS" ]]; then
  START=(--init-weights "$INIT_WEIGHTS")
fi
read -r -a DATA <<<"${SOURCES[$PRIOR]}"
if [[ -n "$TEMPLATE" ]]; then
  DATA+=(--template "$TEMPLATE")
fi

"$PYTHON" train_score.py --config "${CONFIGS[$PRIOR]}" "${DATA[@]}" --run-dir "$RUN_DIR" "${START[@]}" \
  --max-minutes "$MAX_MINUTES" --batch-size "$BATCH_SIZE" --device "$DEVICE" "$COMPILE" --export "$EXPORT" "$@"
