"""Data stage: read a data set, draw the class-balanced subset, corrupt labels.

Sources (one contract, ``results/data/subset.h5``):
  digits        scikit-learn's embedded 8x8 digits (offline default)
  cifar10       the official ``cifar-10-batches-py`` pickle release (torchvision downloads it)
  imagefolder   ``train/<class>/*`` and ``test/<class>/*`` image files, optionally unpacked
                from a tar archive by the workflow (:func:`extract_archive`)
  mnist, fashion_mnist   through torchvision
  package.module:loader  a researcher's own: a function returning the train and test images
                (uint8, n x C x H x W), their labels and the class names (:func:`own_data`)

Importing this module is light (no torch): the workflow calls :func:`dataset_info` at
parse time to check the config.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .h5io import atomic_h5, open_checked, write_provenance
from .plugins import import_object, is_reference

SPLITS = ("train", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The official release has exactly these per-class counts; the reader checks the real
# counts again when it loads, this is only the parse-time check.
CIFAR10_PER_CLASS = {"train": 5000, "test": 1000}
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data source is missing or does not hold what the config asks for."""


@dataclass
class Source:
    """A data set's labels per split, and a way to load the images of chosen rows."""

    name: str
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (channels, height, width)
    pixel_max: float  # raw pixel values lie in [0, pixel_max]
    labels: dict[str, np.ndarray]  # split -> int label of every row, in the data set's order
    has_test_split: bool = True
    _images: dict = field(default_factory=dict, repr=False)  # split -> uint8 (N, C, H, W) or loader
    _files: dict = field(default_factory=dict, repr=False)  # split -> list of image paths (imagefolder)

    def images(self, split: str, rows: np.ndarray) -> np.ndarray:
        """uint8 images (len(rows), C, H, W) of the given rows of ``split``."""
        if split in self._images:
            return self._images[split][rows]
        return np.stack([_read_image(self._files[split][i], self.image_shape) for i in rows])


# ---------------------------------------------------------------- readers
def _digits() -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[:, None]  # values 0..16
    target = d.target.astype(np.int64)
    return Source(
        name="digits",
        class_names=[str(c) for c in range(10)],
        image_shape=(1, 8, 8),
        pixel_max=16.0,
        labels={"train": target, "test": target},
        has_test_split=False,
        _images={"train": images, "test": images},
    )


def cifar10_folder(root: str | os.PathLike) -> Path:
    """The ``cifar-10-batches-py`` folder: ``root`` itself or the folder inside it."""
    root = Path(root)
    return root if (root / "batches.meta").is_file() else root / "cifar-10-batches-py"


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR-10 release holds: dicts, lists, bytes, strings,
    numbers and numpy arrays. Any other global (a function or class a crafted file would call
    while loading) is refused, so a batch file from an untrusted mirror cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(
            f"{path}: empty file (0 bytes); replace it with the file of the official cifar-10-batches-py release"
        )
    try:
        with open(path, "rb") as f:
            out = _CifarUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise DataError(
            f"{path}: refused global {exc}: loading this file would call it, and the official CIFAR-10 release "
            "holds only data (a crafted or foreign pickle); nothing in it was run. Replace it with the release's file"
        ) from exc
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(
            f"{path}: not a readable CIFAR-10 batch file (truncated, damaged or another format: {exc}); "
            "replace it with the file of the official cifar-10-batches-py release"
        ) from exc
    if not isinstance(out, dict):
        raise DataError(f"{path}: holds a {type(out).__name__}, not the dict of a CIFAR-10 batch file")
    return out


def _cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) of one batch file, checked against the release's format."""
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path}: no 'data' array and 'labels' list (keys {sorted(batch)}); not a CIFAR-10 batch file")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{path}: 'data' is {data.dtype} {data.shape} with {len(labels)} labels; a CIFAR-10 batch holds uint8 "
            "(N, 3072) and N labels (wrong size or another release)"
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _cifar10(root: str | None, download: bool) -> Source:
    if root is None:
        raise DataError("dataset.root: cifar10 needs the folder that holds cifar-10-batches-py")
    folder = cifar10_folder(root)
    if not (folder / "batches.meta").is_file():
        if not download:
            raise DataError(
                f"dataset.root: no CIFAR-10 at {folder} (expected batches.meta, data_batch_1..5, test_batch "
                "of the official cifar-10-batches-py release). Put the extracted release there, "
                "or set dataset.download: true where a network is reachable."
            )
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        folder = cifar10_folder(root)
    meta = _unpickle(folder / "batches.meta")
    images, labels = {}, {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        xs, ys = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path}: missing CIFAR-10 batch file")
            x, y = _cifar10_batch(path)
            xs.append(x)
            ys.append(y)
        images[split], labels[split] = np.concatenate(xs), np.concatenate(ys)
    return Source("cifar10", list(meta["label_names"]), (3, 32, 32), 255.0, labels, True, images)


def _mnist_like(name: str, root: str | None, download: bool) -> Source:
    if root is None:
        raise DataError(f"dataset.root: {name} needs a folder (torchvision's root, holding {_tv_class(name)}/raw)")
    import torchvision

    cls = getattr(torchvision.datasets, _tv_class(name))
    images, labels = {}, {}
    raw = Path(root) / _tv_class(name) / "raw"
    for split in SPLITS:
        prefix = "train" if split == "train" else "t10k"
        for ndim, kind in ((1, "labels-idx1"), (3, "images-idx3")):
            if (raw / f"{prefix}-{kind}-ubyte").is_file():  # torchvision's own reader names no file
                _check_idx(raw / f"{prefix}-{kind}-ubyte", ndim)
        try:
            ds = cls(str(root), train=split == "train", download=download)
        except RuntimeError as exc:
            raise DataError(
                f"dataset.root: no {name} at {Path(root) / _tv_class(name) / 'raw'} ({exc}); "
                "put the raw idx files there or set dataset.download: true where a network is reachable"
            ) from exc
        images[split] = ds.data.numpy().astype(np.uint8)[:, None]
        labels[split] = ds.targets.numpy().astype(np.int64)
    classes = [str(c) for c in range(10)] if name == "mnist" else list(FASHION_CLASSES)
    return Source(name, classes, (1, 28, 28), 255.0, labels, True, images)


def _tv_class(name: str) -> str:
    return {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _imagefolder(root: str | None) -> Source:
    if root is None:
        raise DataError("dataset.root: imagefolder needs a folder with train/<class>/ and test/<class>/")
    root = Path(root)
    labels, files = {}, {}
    class_names: list[str] | None = None
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(
                f"dataset.root: {split_dir} does not exist (expected {root}/{{train,test}}/<class>/<image>)"
            )
        names = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise DataError(
                f"dataset.root: class folders of {root}/train and {root}/test differ: {class_names} vs {names}"
            )
        split_files, split_labels = [], []
        for c, cname in enumerate(names):  # the order torchvision's ImageFolder uses
            fs = _image_files(split_dir / cname)
            split_files += fs
            split_labels += [c] * len(fs)
        files[split], labels[split] = split_files, np.asarray(split_labels, dtype=np.int64)
    first = _read_image(files["train"][0], None) if files["train"] else np.zeros((3, 1, 1), np.uint8)
    return Source("imagefolder", class_names or [], tuple(first.shape), 255.0, labels, True, {}, files)


def _read_image(path: Path, shape: tuple[int, int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty image file (0 bytes); replace or delete it")
    try:
        with Image.open(path) as im:
            mode = "L" if shape is not None and shape[0] == 1 else "RGB"
            if shape is None and im.mode in ("L", "1", "I;16"):
                mode = "L"
            a = np.asarray(im.convert(mode), dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image (another format or garbage bytes: {exc}); replace or delete it") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for cut-short or corrupted image data
        raise DataError(f"{path}: truncated or corrupted image ({exc}); replace or delete it") from exc
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if shape is not None and a.shape != tuple(shape):
        raise DataError(f"{path}: image of shape {a.shape}, expected {tuple(shape)} like the first image of the folder")
    return a


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
                prefix, _ = _archive_layout(tf.getnames())
                tf.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"dataset.archive: {archive} is damaged (truncated or corrupted?): {exc}") from exc
            except DataError as exc:
                raise DataError(f"dataset.archive: {archive}: {exc}") from exc
        top = tmp / prefix if prefix else tmp
        info = dataset_info({"name": "imagefolder", "root": str(top)})
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


# ---------------------------------------------------------------- parse-time information
@dataclass
class DatasetInfo:
    class_names: list[str]
    per_class: dict[str, np.ndarray]  # split -> available images per class
    has_test_split: bool
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) where known without decoding every image


IDX_MAGIC = {1: 2049, 3: 2051}  # labels (1-d), images (3-d): the MNIST idx headers


def _check_idx(path: Path, ndim: int) -> bytes:
    """The bytes of an MNIST/Fashion-MNIST idx file, after checking its header against its size."""
    raw = path.read_bytes()
    what = "labels" if ndim == 1 else "images"
    if not raw:
        raise DataError(f"{path}: empty file (0 bytes); replace it with the {what} file of the release")
    header = 4 * (ndim + 1)
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != IDX_MAGIC[ndim] or len(raw) < header:
        raise DataError(
            f"{path}: not an idx {what} file (magic {magic}, expected {IDX_MAGIC[ndim]}): another format or "
            "garbage bytes; replace it with the file of the release"
        )
    dims = [int.from_bytes(raw[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(dims)):
        state = "truncated" if len(raw) < header + int(np.prod(dims)) else "longer than its header says"
        raise DataError(
            f"{path}: {state}: {len(raw)} bytes, the header {dims} says {header + int(np.prod(dims))}; "
            "replace it with the file of the release"
        )
    return raw


def _idx_labels(path: Path) -> np.ndarray:
    return np.frombuffer(_check_idx(path, 1), dtype=np.uint8, offset=8).astype(np.int64)


def _digits_info(dataset: Mapping) -> DatasetInfo:
    src = _digits()
    counts = np.bincount(src.labels["train"], minlength=10)
    return DatasetInfo(src.class_names, {"train": counts, "test": counts}, False, src.image_shape)


def _cifar10_info(dataset: Mapping) -> DatasetInfo:
    root = dataset.get("root")
    if root is not None and (cifar10_folder(root) / "batches.meta").is_file():
        names = list(_unpickle(cifar10_folder(root) / "batches.meta")["label_names"])
    elif dataset.get("download") and root is not None:
        names = list(CIFAR10_CLASSES)
    else:
        raise DataError(
            f"dataset.root: no CIFAR-10 at {None if root is None else cifar10_folder(root)} "
            "(the official cifar-10-batches-py release: batches.meta, data_batch_1..5, test_batch); "
            "put it there or set dataset.download: true where a network is reachable"
        )
    return DatasetInfo(names, {s: np.full(len(names), CIFAR10_PER_CLASS[s]) for s in SPLITS}, True, (3, 32, 32))


def _mnist_like_info(dataset: Mapping) -> DatasetInfo:
    name, root = dataset["name"], dataset.get("root")
    raw = None if root is None else Path(root) / _tv_class(name) / "raw"
    names = [str(c) for c in range(10)] if name == "mnist" else list(FASHION_CLASSES)
    files = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
    if raw is None or not all((raw / f).is_file() for f in files.values()):
        if dataset.get("download") and root is not None:
            return DatasetInfo(
                names, {s: np.full(10, 5000 if s == "train" else 800) for s in SPLITS}, True, (1, 28, 28)
            )
        raise DataError(
            f"dataset.root: no {name} idx files in {raw} ({', '.join(files.values())} and the image files); "
            "put them there or set dataset.download: true where a network is reachable"
        )
    counts = {s: np.bincount(_idx_labels(raw / f), minlength=10) for s, f in files.items()}
    return DatasetInfo(names, counts, True, (1, 28, 28))


def _imagefolder_info(dataset: Mapping) -> DatasetInfo:
    root = dataset.get("root")
    if dataset.get("archive") and (root is None or not (Path(root) / ARCHIVE_MANIFEST).is_file()):
        return archive_info(dataset["archive"])  # not unpacked yet: the workflow's first job does it
    if root is None or not (Path(root) / "train").is_dir():
        raise DataError(
            f"dataset.root: no image folder at {root} (expected {root}/train/<class>/ and {root}/test/<class>/); "
            "or set dataset.archive to an archive of that layout for the workflow to unpack"
        )
    names = sorted(d.name for d in (Path(root) / "train").iterdir() if d.is_dir())
    per_class = {}
    for split in SPLITS:
        folder = Path(root) / split
        per_class[split] = np.array([len(_image_files(folder / c)) if (folder / c).is_dir() else 0 for c in names])
    first = next((f for c in names for f in _image_files(Path(root) / "train" / c)[:1]), None)
    return DatasetInfo(names, per_class, True, None if first is None else tuple(_read_image(first, None).shape))


# ---------------------------------------------------------------- a researcher's own data
OWN_DATA_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")


def own_data(dataset: Mapping) -> Source:
    """The data of a loader ``package.module:loader`` (``dataset.name``), called with
    ``dataset.kwargs``. It returns a mapping with the keys OWN_DATA_KEYS: uint8 images
    (n, C, H, W) and integer labels 0..K-1 per split, and the class names. Everything is checked
    here, naming what is wrong; the subset, the corruption and the provenance then treat it as
    any built-in set (the provenance records the loader's name and arguments)."""
    name = dataset["name"]
    loader = import_object(name, "dataset.name")
    try:
        out = loader(**(dataset.get("kwargs") or {}))
    except Exception as exc:
        raise DataError(f"dataset.name: {name}(**dataset.kwargs) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, Mapping) or any(k not in out for k in OWN_DATA_KEYS):
        got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise DataError(f"dataset.name: {name} returned {got}; expected a mapping with the keys {list(OWN_DATA_KEYS)}")
    classes = [str(c) for c in out["class_names"]]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"dataset.name: {name} returned class_names {classes}: at least 2, each once")
    images, labels, shape = {}, {}, None
    for split in SPLITS:
        x, y = np.asarray(out[f"{split}_images"]), np.asarray(out[f"{split}_labels"])
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(
                f"dataset.name: {name} returned {split}_images of dtype {x.dtype} and shape {x.shape}; "
                "expected uint8 of shape (n, channels, height, width)"
            )
        if shape is not None and x.shape[1:] != shape:
            raise DataError(f"dataset.name: {name} returned test images of shape {x.shape[1:]}, train {shape}")
        shape = x.shape[1:]
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"dataset.name: {name} returned {split}_labels of dtype {y.dtype} and shape {y.shape}; "
                f"expected integers of shape ({len(x)},), one per image"
            )
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(
                f"dataset.name: {name} returned {split}_labels from {y.min()} to {y.max()}; allowed: "
                f"0..{len(classes) - 1} (one per class name)"
            )
        images[split], labels[split] = x, y.astype(np.int64)
    return Source(name, classes, tuple(int(v) for v in shape), 255.0, labels, True, images)


def _own_info(dataset: Mapping) -> DatasetInfo:
    src = own_data(dataset)
    counts = {s: np.bincount(src.labels[s], minlength=len(src.class_names)) for s in SPLITS}
    return DatasetInfo(src.class_names, counts, True, src.image_shape)


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class DatasetReader:
    """How the workflow reads one data set: its images and labels, and cheaply its classes and counts."""

    open: Callable[[Mapping], Source]
    info: Callable[[Mapping], DatasetInfo]


# The schema's dataset.name enum lists exactly these names (tests/test_data.py checks it).
DATASETS: dict[str, DatasetReader] = {
    "digits": DatasetReader(lambda d: _digits(), _digits_info),
    "cifar10": DatasetReader(lambda d: _cifar10(d.get("root"), d.get("download", False)), _cifar10_info),
    "imagefolder": DatasetReader(lambda d: _imagefolder(d.get("root")), _imagefolder_info),
    "mnist": DatasetReader(lambda d: _mnist_like("mnist", d.get("root"), d.get("download", False)), _mnist_like_info),
    "fashion_mnist": DatasetReader(
        lambda d: _mnist_like("fashion_mnist", d.get("root"), d.get("download", False)), _mnist_like_info
    ),
}


def _reader(name: str) -> DatasetReader:
    if is_reference(name):
        return DatasetReader(own_data, _own_info)
    if name not in DATASETS:
        raise DataError(
            f"dataset.name: unknown data set {name!r}; allowed: {', '.join(DATASETS)} or a loader package.module:loader"
        )
    return DATASETS[name]


def open_source(dataset: Mapping) -> Source:
    """Open the data set named in the ``dataset`` config section."""
    return _reader(dataset["name"]).open(dataset)


def dataset_info(dataset: Mapping) -> DatasetInfo:
    """Class names and per-class counts, read cheaply (no image decoding) to check a config."""
    return _reader(dataset["name"]).info(dataset)


def resolve_classes(requested: list, class_names: list[str]) -> list[int]:
    """Map config classes (names, or integer indices) to the data set's class indices."""
    out = []
    for c in requested:
        if isinstance(c, str) and c in class_names:
            out.append(class_names.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(class_names):
            out.append(c)
        else:
            raise DataError(
                f"dataset.classes: {c!r} is not a class of this data set; "
                f"allowed: {class_names} or 0..{len(class_names) - 1}"
            )
    if len(set(out)) != len(out):
        raise DataError(f"dataset.classes: {requested} names a class twice")
    return out


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


# ---------------------------------------------------------------- label corruption
def one_hot(labels: np.ndarray, num_classes: int, dtype: type = np.float64) -> np.ndarray:
    """One-hot rows (n, K) of int labels: the least-squares targets y of the paper."""
    return np.eye(num_classes, dtype=dtype)[np.asarray(labels)]


def corrupt_labels(y: np.ndarray, num_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace exactly round(fraction * n) labels by a label drawn uniformly from the K - 1 others.

    The corrupted rows are the first m of one seeded permutation and the offsets come from one
    seeded draw, so for a fixed seed the rows corrupted at a lower level are a subset of those
    at a higher level (the levels are nested, differing only in how much is corrupted).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"corruption fraction {fraction} is outside [0, 1]")
    if num_classes < 2:
        raise ValueError("label corruption needs at least 2 classes")
    n = len(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    offsets = rng.integers(1, num_classes, size=n)  # 1..K-1: never the same class
    m = int(round(fraction * n))
    corrupted = np.zeros(n, dtype=bool)
    corrupted[order[:m]] = True
    y_new = np.where(corrupted, (y + offsets) % num_classes, y)
    return y_new.astype(np.int64), corrupted


def write_labels(path: str | os.PathLike, subset_path: str | os.PathLike, fraction: float, seed: int) -> None:
    """Write ``labels_noise{level}.h5``: y (used for training), y_clean, corrupted."""
    with open_checked(subset_path, ["train/y"], artifact="subset") as f:
        y_clean = f["train/y"][...]
        k = int(f.attrs["num_classes"])
    y, corrupted = corrupt_labels(y_clean, k, fraction, seed)
    with atomic_h5(path) as f:
        write_provenance(
            f,
            "labels",
            None,
            fraction=float(fraction),
            seed=int(seed),
            num_classes=k,
            num_corrupted=int(corrupted.sum()),
            subset=str(subset_path),
            rule="exactly round(fraction * n) training labels replaced by a uniformly drawn different class",
        )
        f.create_dataset("y", data=y)
        f.create_dataset("y_clean", data=y_clean)
        f.create_dataset("corrupted", data=corrupted)


def read_labels(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """Training labels of a label file, checked against the subset size when given."""
    with open_checked(path, ["y", "y_clean", "corrupted"], artifact="labels") as f:
        y = f["y"][...]
    if n is not None and len(y) != n:
        raise ValueError(f"{path}: {len(y)} labels but the subset has {n} training images; rerun corrupt_labels")
    return y
