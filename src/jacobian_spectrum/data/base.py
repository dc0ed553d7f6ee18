"""What every data reader shares: the splits, the error, and the parse-time summary of a data set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data source is missing or does not hold what the config asks for."""


# ---------------------------------------------------------------- parse-time information
@dataclass
class DatasetInfo:
    class_names: list[str]
    per_class: dict[str, np.ndarray]  # split -> available images per class
    has_test_split: bool
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) where known without decoding every image
