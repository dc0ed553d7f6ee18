"""Image-folder archives: their layout, read from the member list, and a checked, atomic unpacking."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .base import IMAGE_SUFFIXES, SPLITS, DataError, DatasetInfo

# ---------------------------------------------------------------- image archives
ARCHIVE_MANIFEST = "ARCHIVE.json"  # written last by extract_archive: the folder is complete


def _archive_layout(names: list[str]) -> tuple[str, dict[str, dict[str, int]]]:
    """The folder prefix holding train/ and test/ in an archive, and image counts per split and class.

    The image-folder layout may sit at the archive's top or inside one top-level folder.
    """
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for name in names:
        parts = name.strip("/").split("/")
        if len(parts) < 3 or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if parts[-3] in SPLITS:
            prefix = "/".join(parts[:-3])
            split_counts = counts.setdefault(prefix, {s: {} for s in SPLITS})[parts[-3]]
            split_counts[parts[-2]] = split_counts.get(parts[-2], 0) + 1
    complete = {p: c for p, c in counts.items() if all(c[s] for s in SPLITS)}
    if len(complete) != 1:
        found = "none" if not complete else sorted(complete)
        raise DataError(
            f"expected one image-folder layout train/<class>/<image> and test/<class>/<image> "
            f"(at the top or inside one folder); found {found}"
        )
    return next(iter(complete.items()))


def _open_archive(path: Path) -> tarfile.TarFile:
    if not path.is_file():
        raise DataError(
            f"dataset.archive: {path} does not exist; point dataset.archive at the image archive "
            "(a .tar or .tar.gz of train/<class>/<image> and test/<class>/<image>) or remove the key"
        )
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"dataset.archive: {path} is not a readable tar archive (truncated or damaged?): {exc}"
        ) from exc


def archive_info(path: str | os.PathLike) -> DatasetInfo:
    """Class names and per-class image counts from an archive's member list (no extraction)."""
    path = Path(path)
    with _open_archive(path) as tf:
        try:
            names = tf.getnames()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"dataset.archive: {path} is damaged (truncated or corrupted?): {exc}") from exc
    try:
        _, counts = _archive_layout(names)
    except DataError as exc:
        raise DataError(f"dataset.archive: {path}: {exc}") from exc
    return _layout_info(counts)


def _layout_info(counts: dict[str, dict[str, int]]) -> DatasetInfo:
    """Classes (the training split's folders, sorted as the image-folder reader sorts them) and
    per-class counts of an archive's layout."""
    classes = sorted(counts["train"])
    return DatasetInfo(classes, {s: np.array([counts[s].get(c, 0) for c in classes]) for s in SPLITS}, True)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, sha256: str | None = None) -> DatasetInfo:
    """Unpack an image-folder archive into ``dest`` (``dest/train/<class>/...``), checked and atomic.

    The checksum (when given) and every member are checked before ``dest`` appears: a damaged
    archive raises :class:`DataError` naming it and leaves no folder behind. Members are
    extracted with tarfile's ``data`` filter (no links out of the folder, no device files).
    """
    archive, dest = Path(archive), Path(dest)
    if sha256:
        got = file_sha256(archive) if archive.is_file() else None
        if got is not None and got != sha256.lower():
            raise DataError(
                f"dataset.archive: {archive} has sha256 {got}, expected {sha256} (dataset.archive_sha256): "
                "the file is damaged or another version; fetch it again"
            )
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _open_archive(archive) as tf:
            try:
                prefix, counts = _archive_layout(tf.getnames())
                tf.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"dataset.archive: {archive} is damaged (truncated or corrupted?): {exc}") from exc
            except DataError as exc:
                raise DataError(f"dataset.archive: {archive}: {exc}") from exc
        top = tmp / prefix if prefix else tmp
        info = _layout_info(counts)
        (top / ARCHIVE_MANIFEST).write_text(
            json.dumps(
                {
                    "archive": str(archive),
                    "sha256": sha256 or file_sha256(archive),
                    "classes": info.class_names,
                    "per_class": {s: info.per_class[s].tolist() for s in SPLITS},
                },
                indent=1,
            )
        )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(top, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info
