"""What the SuperPoint extractor (`superpoint`) and its torch network (`superpoint_torch`) share,
without importing torch: the stride and where the weights file is found."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "SUPERGF_SUPERPOINT_WEIGHTS"
STRIDE = 8

WEIGHTS_HELP = (
    "SuperPoint expects the MagicLeap 'superpoint_v1.pth' file (a SuperPointNet state dict with "
    "keys conv1a ... convDb). Provide it with the extractor option weights=PATH, the environment "
    f"variable {WEIGHTS_ENV}=PATH, or the command-line option --superpoint-weights PATH. "
    "Weights are never downloaded automatically."
)


def resolve_weights(weights: str | Path | None) -> Path:
    """The SuperPoint weights file: conf `weights`, else $SUPERGF_SUPERPOINT_WEIGHTS.

    Raises FileNotFoundError naming where it looked and how to provide the file.
    """
    looked: list[str] = []
    if weights is not None and str(weights) != "":
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        looked.append(f"option weights={path} (file not found)")
    else:
        looked.append("option weights (not set)")
        env = os.environ.get(WEIGHTS_ENV, "")
        if env:
            path = Path(env).expanduser()
            if path.is_file():
                return path
            looked.append(f"${WEIGHTS_ENV}={path} (file not found)")
        else:
            looked.append(f"${WEIGHTS_ENV} (not set)")
    raise FileNotFoundError(
        "SuperPoint weights not found; looked at: " + "; ".join(looked) + ". " + WEIGHTS_HELP
    )
