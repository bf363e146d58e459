#!/usr/bin/env bash
# Reproduce the shipped CPU-sized SuperGF weights (see supergf_ros/weights/MODEL_CARD.md).
# Usage: scripts/train_shipped.sh dense|sparse [WORK_DIR]   (run from the repository root)
# Stages (stage 2+ start from the previous stage's model; all use scripts/train_cpu_config.yaml):
#   dense:  1) 400 steps lr 3e-4 on 12 synthetic rooms + fountain-P11
#           2) 150 steps lr 2e-4 on those + 24 low-res rooms
#   sparse: 1) 400 steps lr 1e-3 (12 rooms + fountain), 2) 300 steps lr 5e-4 (+ low-res rooms),
#           3) 1200 steps lr 5e-4 (same data)
set -euo pipefail
VARIANT=${1:?dense or sparse}
WORK=${2:-.cache/h5train}
SHARED=${SUPERGF_SHARED_DIR:-../shared}
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -d "$WORK/scenes/val_00" ] || $BIN/python scripts/train_make_scenes.py "$WORK/scenes" \
  --textures "$SHARED/data/photos/sacre_coeur"
[ -d "$WORK/scenes/lowres_23" ] || $BIN/python scripts/train_make_scenes_lowres.py \
  "$WORK/scenes" --textures "$SHARED/data/photos/sacre_coeur"
if [ "$VARIANT" = dense ]; then
  EXTRA=(--num-heads 4); STAGES=("400 3e-4 base" "150 2e-4 all")
else
  EXTRA=(--num-slots 16); STAGES=("400 1e-3 base" "300 5e-4 all" "1200 5e-4 all")
fi
BASE=("$WORK"/scenes/train_* "$SHARED/data/strecha/fountain-P11")
INIT=()
for i in "${!STAGES[@]}"; do
  read -r STEPS LR DATA <<< "${STAGES[$i]}"
  DATASETS=("${BASE[@]}")
  [ "$DATA" = all ] && DATASETS+=("$WORK"/scenes/lowres_*)
  RUN="$WORK/run_${VARIANT}_stage$((i + 1))"
  $BIN/supergf-ros train "$RUN" --model "$VARIANT" --data "${DATASETS[@]}" \
    --val "$WORK/scenes/val_00" --superpoint-weights "$SHARED/weights/superpoint_v1.pth" \
    --cache-dir "$WORK/features" --config scripts/train_cpu_config.yaml "${EXTRA[@]}" \
    --steps "$STEPS" --lr "$LR" "${INIT[@]}"
  # stage 1 hands on its best validation model, later stages their last one
  if [ "$i" = 0 ]; then INIT=(--init-weights "$RUN/model_best.pt"); else INIT=(--init-weights "$RUN/model_last.pt"); fi
done
cp "$RUN/model_last.pt" "supergf_ros/weights/supergf_${VARIANT}_superpoint.pt"
