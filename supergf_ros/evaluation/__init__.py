"""Evaluation: pose recall and median errors, place-recognition Recall@N, benchmark runners."""

from .metrics import POSE_THRESHOLDS, pose_errors, pose_metrics, recall_at_n, threshold_key

__all__ = ["POSE_THRESHOLDS", "pose_errors", "pose_metrics", "recall_at_n", "threshold_key"]
