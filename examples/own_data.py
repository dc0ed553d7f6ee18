"""A small synthetic image set made by a loader: an example of your own data
(``dataset.name: examples.own_data:stripes``).

A loader returns the train and test images (uint8, n x C x H x W), their integer labels and
the class names; the workflow draws its class-balanced subset, corrupts labels and records
provenance exactly as for the built-in sets (docs/own.md).
"""

import numpy as np


def stripes(per_class: int = 40, size: int = 8, noise: float = 40.0, seed: int = 0, channels: int = 1) -> dict:
    """Three classes of images: horizontal stripes, vertical stripes and a centred square, each
    with Gaussian pixel noise; ``per_class`` train and as many test images of each, with
    ``channels`` channels (1: grey; 3: the same pattern in each, with noise of its own, for
    networks that read colour images)."""
    rng = np.random.default_rng(seed)
    grid = np.arange(size)
    patterns = [
        np.repeat((grid % 2)[:, None], size, axis=1),  # horizontal stripes
        np.repeat((grid % 2)[None, :], size, axis=0),  # vertical stripes
        np.outer((grid >= size // 4) & (grid < size - size // 4), (grid >= size // 4) & (grid < size - size // 4)),
    ]
    out = {"class_names": ["horizontal", "vertical", "square"]}
    for split in ("train", "test"):
        labels = np.repeat(np.arange(len(patterns)), per_class)
        clean = np.stack([patterns[c] for c in labels]).astype(np.float64)[:, None] * 200 + 25
        clean = np.repeat(clean, channels, axis=1)
        images = np.clip(clean + noise * rng.standard_normal(clean.shape), 0, 255).astype(np.uint8)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out
