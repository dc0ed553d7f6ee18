"""The seeded class-balanced subset of a data set: ``results/data/subset.h5``, and reading it back normalised."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.h5io import atomic_h5, open_checked, write_provenance
from .base import SPLITS, DataError
from .sources import Source, open_source, resolve_classes


# ---------------------------------------------------------------- subsampling
@dataclass
class Subset:
    x: dict[str, np.ndarray]  # split -> uint8 (n, C, H, W)
    y: dict[str, np.ndarray]  # split -> int labels 0..K-1 (position in the configured class list)
    source_index: dict[str, np.ndarray]  # split -> row in the original data set's split
    class_names: list[str]
    class_source_index: list[int]


def draw_subset(
    labels: Mapping[str, np.ndarray],
    classes: list[int],
    train_per_class: int,
    test_per_class: int,
    seed: int,
    has_test_split: bool = True,
) -> dict[str, np.ndarray]:
    """Seeded class-balanced choice of rows: split -> source indices, shuffled across classes.

    Without a test split (digits) the test rows are drawn from the rows of each class that
    the training draw did not take, so train and test never share an image.
    """
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in classes:
        pool_train = np.flatnonzero(labels["train"] == c)
        need = train_per_class + (0 if has_test_split else test_per_class)
        if len(pool_train) < need:
            raise DataError(
                f"dataset.train_per_class/test_per_class: class {c} has {len(pool_train)} images, {need} requested"
            )
        perm = rng.permutation(pool_train)
        chosen["train"].append(perm[:train_per_class])
        if has_test_split:
            pool_test = np.flatnonzero(labels["test"] == c)
            if len(pool_test) < test_per_class:
                raise DataError(
                    f"dataset.test_per_class: class {c} has {len(pool_test)} test images, {test_per_class} requested"
                )
            chosen["test"].append(rng.permutation(pool_test)[:test_per_class])
        else:
            chosen["test"].append(perm[train_per_class:need])
    return {s: rng.permutation(np.concatenate(chosen[s])) for s in SPLITS}


def build_subset(dataset: Mapping) -> tuple[Subset, Source]:
    """Open the configured data set and draw the subset (images loaded for chosen rows only)."""
    source = open_source(dataset)
    classes = resolve_classes(list(dataset["classes"]), source.class_names)
    rows = draw_subset(
        source.labels,
        classes,
        dataset["train_per_class"],
        dataset["test_per_class"],
        dataset["seed"],
        source.has_test_split,
    )
    remap = {c: k for k, c in enumerate(classes)}
    subset = Subset(
        x={s: source.images(s, rows[s]) for s in SPLITS},
        y={s: np.array([remap[int(c)] for c in source.labels[s][rows[s]]], dtype=np.int64) for s in SPLITS},
        source_index=rows,
        class_names=[source.class_names[c] for c in classes],
        class_source_index=classes,
    )
    return subset, source


def write_subset(path: str | os.PathLike, subset: Subset, source: Source, dataset: Mapping) -> None:
    """Write ``subset.h5`` (artifact contract): train/ and test/ groups with x, y, source_index."""
    x_train = subset.x["train"].astype(np.float64) / source.pixel_max
    mean = x_train.mean(axis=(0, 2, 3))
    std = x_train.std(axis=(0, 2, 3))
    std[std == 0] = 1.0
    with atomic_h5(path) as f:
        write_provenance(
            f,
            "subset",
            dict(dataset),
            dataset=source.name,
            classes=subset.class_names,
            class_source_index=subset.class_source_index,
            seed=int(dataset["seed"]),
            num_classes=len(subset.class_names),
            image_shape=list(source.image_shape),
            pixel_max=source.pixel_max,
            channel_mean=mean,
            channel_std=std,
            normalisation="x are raw uint8 pixels; the network sees (x / pixel_max - channel_mean) / channel_std "
            "(mean and std per channel over the training subset)",
            test_source="official test split" if source.has_test_split else "rows of each class not drawn for training",
        )
        for s in SPLITS:
            g = f.create_group(s)
            g.create_dataset("x", data=subset.x[s], compression="gzip")
            g.create_dataset("y", data=subset.y[s])
            g.create_dataset("source_index", data=subset.source_index[s])
            g.attrs["n"] = len(subset.y[s])


@dataclass
class SplitData:
    x: np.ndarray  # float32 (n, C, H, W), normalised as the network sees it
    y: np.ndarray  # int labels 0..K-1 (clean)
    num_classes: int
    image_shape: tuple[int, int, int]


def read_split(path: str | os.PathLike, split: str) -> SplitData:
    """Read one split of ``subset.h5`` normalised as documented in its attrs."""
    with open_checked(path, [f"{split}/x", f"{split}/y"], artifact="subset") as f:
        x = f[f"{split}/x"][...].astype(np.float32)
        y = f[f"{split}/y"][...]
        mean = np.asarray(f.attrs["channel_mean"], dtype=np.float32)[None, :, None, None]
        std = np.asarray(f.attrs["channel_std"], dtype=np.float32)[None, :, None, None]
        x = (x / np.float32(f.attrs["pixel_max"]) - mean) / std
        return SplitData(x, y, int(f.attrs["num_classes"]), tuple(int(v) for v in f.attrs["image_shape"]))


def subset_splits(dataset: Mapping, scratch: str | os.PathLike) -> tuple[Subset, SplitData, SplitData]:
    """The configured subset and its two splits normalised as the workflow's subset file gives them
    (:func:`read_split`), through a temporary file in ``scratch``: where no workflow runs
    (bench/paper_gpu.py), the same images, labels and normalisation."""
    subset, source = build_subset(dataset)
    path = Path(scratch) / f"subset-{os.getpid()}.h5"
    try:
        write_subset(path, subset, source, dataset)
        return subset, read_split(path, "train"), read_split(path, "test")
    finally:
        path.unlink(missing_ok=True)
