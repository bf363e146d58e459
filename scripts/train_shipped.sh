#!/usr/bin/env bash
# Reproduce the shipped CPU-sized SuperGF weights (see supergf_ros/weights/MODEL_CARD.md).
# Usage: scripts/train_shipped.sh dense|sparse|sift [WORK_DIR]   (run from the repository root)
#   Both: residual slots started from a k-means codebook of the training descriptors (sparse:
#   keypoint descriptors; dense: cells of the dense descriptor map), 300 steps lr 1e-5 on the 12
#   synthetic rooms, the 24 low-res rooms, their 36 domain-randomized copies and fountain-P11.
#   sparse: scripts/train_cpu_config_residual.yaml; dense: scripts/train_cpu_config_dense_residual.yaml;
#   sift: SuperGF-sparse over RootSIFT keypoints, scripts/train_cpu_config_sift_residual.yaml
set -euo pipefail
VARIANT=${1:?dense or sparse}
WORK=${2:-.cache/h5train}
SHARED=${SUPERGF_SHARED_DIR:-../shared}
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
FEATURES=superpoint
MODEL=$VARIANT
case "$VARIANT" in
  sparse) CONFIG=scripts/train_cpu_config_residual.yaml; RUN="$WORK/run_sparse_residual" ;;
  dense) CONFIG=scripts/train_cpu_config_dense_residual.yaml; RUN="$WORK/run_dense_residual" ;;
  sift) CONFIG=scripts/train_cpu_config_sift_residual.yaml; RUN="$WORK/run_sift_residual"
    FEATURES=sift; MODEL=sparse ;;
  *) echo "usage: $0 dense|sparse|sift [WORK_DIR]" >&2; exit 2 ;;
esac
[ -d "$WORK/scenes/val_00" ] || $BIN/python scripts/train_make_scenes.py "$WORK/scenes" \
  --textures "$SHARED/data/photos/sacre_coeur"
[ -d "$WORK/scenes/lowres_23" ] || $BIN/python scripts/train_make_scenes_lowres.py \
  "$WORK/scenes" --textures "$SHARED/data/photos/sacre_coeur"
[ -d "$WORK/scenes_aug/lowres_23_aug" ] || $BIN/python scripts/train_make_scenes_augmented.py \
  "$WORK/scenes_aug" "$WORK"/scenes/train_* "$WORK"/scenes/lowres_*
$BIN/supergf-ros train "$RUN" --model "$MODEL" --features "$FEATURES" \
  --data "$WORK"/scenes/train_* "$SHARED/data/strecha/fountain-P11" "$WORK"/scenes/lowres_* \
  "$WORK"/scenes_aug/* --val "$WORK/scenes/val_00" \
  --superpoint-weights "$SHARED/weights/superpoint_v1.pth" --cache-dir "$WORK/features" \
  --config "$CONFIG"
cp "$RUN/model_last.pt" "supergf_ros/weights/supergf_${MODEL}_${FEATURES}.pt"
