#!/usr/bin/env bash
# Reproduce the shipped CPU-sized SuperGF weights (see supergf_ros/weights/MODEL_CARD.md).
# Usage: scripts/train_shipped.sh dense|sparse [WORK_DIR]   (run from the repository root)
#   dense:  (scripts/train_cpu_config.yaml) 1) 400 steps lr 3e-4 on 12 synthetic rooms +
#           fountain-P11, 2) 150 steps lr 2e-4 on those + 24 low-res rooms (from stage 1's best)
#   sparse: (scripts/train_cpu_config_residual.yaml) residual slots started from a k-means
#           codebook of the training descriptors, 300 steps lr 1e-5 on the 12 rooms, the 24
#           low-res rooms, their 36 domain-randomized copies and fountain-P11
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
COMMON=(--val "$WORK/scenes/val_00" --superpoint-weights "$SHARED/weights/superpoint_v1.pth"
  --cache-dir "$WORK/features")
BASE=("$WORK"/scenes/train_* "$SHARED/data/strecha/fountain-P11")
if [ "$VARIANT" = sparse ]; then
  $BIN/python scripts/train_make_scenes_augmented.py "$WORK/scenes_aug" "$WORK"/scenes/train_* \
    "$WORK"/scenes/lowres_*
  RUN="$WORK/run_sparse_residual"
  $BIN/supergf-ros train "$RUN" --model sparse \
    --data "${BASE[@]}" "$WORK"/scenes/lowres_* "$WORK"/scenes_aug/* \
    "${COMMON[@]}" --config scripts/train_cpu_config_residual.yaml
  cp "$RUN/model_last.pt" supergf_ros/weights/supergf_sparse_superpoint.pt
  exit 0
fi
[ "$VARIANT" = dense ] || { echo "usage: $0 dense|sparse [WORK_DIR]" >&2; exit 2; }
STAGES=("400 3e-4 base" "150 2e-4 all")
INIT=()
for i in "${!STAGES[@]}"; do
  read -r STEPS LR DATA <<< "${STAGES[$i]}"
  DATASETS=("${BASE[@]}")
  [ "$DATA" = all ] && DATASETS+=("$WORK"/scenes/lowres_*)
  RUN="$WORK/run_dense_stage$((i + 1))"
  $BIN/supergf-ros train "$RUN" --model dense --data "${DATASETS[@]}" "${COMMON[@]}" \
    --config scripts/train_cpu_config.yaml --num-heads 4 --steps "$STEPS" --lr "$LR" "${INIT[@]}"
  INIT=(--init-weights "$RUN/model_best.pt")  # stage 1 hands on its best validation model
done
cp "$RUN/model_last.pt" supergf_ros/weights/supergf_dense_superpoint.pt
