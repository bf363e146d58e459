"""ROS-free hierarchical localization: `Localizer.from_map(path).localize(image, camera)`."""

from .localizer import LocalizationResult, Localizer
from .retrieval import GlobalIndex

__all__ = ["GlobalIndex", "LocalizationResult", "Localizer"]
