"""The data sets the workflow reads: one registry, one reader per source, read cheaply at parse time.

Sources (one contract, ``results/data/subset.h5``):
  digits        scikit-learn's embedded 8x8 digits (offline default)
  cifar10       the official ``cifar-10-batches-py`` pickle release (torchvision downloads it)
  imagefolder   ``train/<class>/*`` and ``test/<class>/*`` image files, optionally unpacked
                from a tar archive by the workflow (:func:`.archive.extract_archive`)
  mnist, fashion_mnist   through torchvision
  package.module:loader  a researcher's own: a function returning the train and test images
                (uint8, n x C x H x W), their labels and the class names (:func:`own_data`)

Importing this module is light (no torch): the workflow calls :func:`dataset_info` at
parse time to check the config.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.plugins import import_object, is_reference
from .archive import ARCHIVE_MANIFEST, archive_info
from .base import IMAGE_SUFFIXES, SPLITS, DataError, DatasetInfo

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
# (channels, height, width) of the built-in sets, declared so that a plan made before their
# download knows them (DatasetReader.image_shape)
DIGITS_SHAPE = (1, 8, 8)
CIFAR10_SHAPE = (3, 32, 32)
MNIST_SHAPE = (1, 28, 28)  # MNIST and Fashion-MNIST


def _digits() -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[:, None]  # values 0..16
    target = d.target.astype(np.int64)
    return Source(
        name="digits",
        class_names=[str(c) for c in range(10)],
        image_shape=DIGITS_SHAPE,
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
    return Source("cifar10", list(meta["label_names"]), CIFAR10_SHAPE, 255.0, labels, True, images)


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
    return Source(name, classes, MNIST_SHAPE, 255.0, labels, True, images)


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
    return DatasetInfo(names, {s: np.full(len(names), CIFAR10_PER_CLASS[s]) for s in SPLITS}, True, CIFAR10_SHAPE)


def _mnist_like_info(dataset: Mapping) -> DatasetInfo:
    name, root = dataset["name"], dataset.get("root")
    raw = None if root is None else Path(root) / _tv_class(name) / "raw"
    names = [str(c) for c in range(10)] if name == "mnist" else list(FASHION_CLASSES)
    files = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
    if raw is None or not all((raw / f).is_file() for f in files.values()):
        if dataset.get("download") and root is not None:
            return DatasetInfo(
                names, {s: np.full(10, 5000 if s == "train" else 800) for s in SPLITS}, True, MNIST_SHAPE
            )
        raise DataError(
            f"dataset.root: no {name} idx files in {raw} ({', '.join(files.values())} and the image files); "
            "put them there or set dataset.download: true where a network is reachable"
        )
    counts = {s: np.bincount(_idx_labels(raw / f), minlength=10) for s, f in files.items()}
    return DatasetInfo(names, counts, True, MNIST_SHAPE)


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
    image_shape: tuple[int, int, int] | None = None  # declared: known before the data is there


# The schema's dataset.name enum lists exactly these names (tests/test_data.py checks it).
DATASETS: dict[str, DatasetReader] = {
    "digits": DatasetReader(lambda d: _digits(), _digits_info, DIGITS_SHAPE),
    "cifar10": DatasetReader(lambda d: _cifar10(d.get("root"), d.get("download", False)), _cifar10_info, CIFAR10_SHAPE),
    "imagefolder": DatasetReader(lambda d: _imagefolder(d.get("root")), _imagefolder_info),
    "mnist": DatasetReader(
        lambda d: _mnist_like("mnist", d.get("root"), d.get("download", False)), _mnist_like_info, MNIST_SHAPE
    ),
    "fashion_mnist": DatasetReader(
        lambda d: _mnist_like("fashion_mnist", d.get("root"), d.get("download", False)), _mnist_like_info, MNIST_SHAPE
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


def declared_image_shape(name: str) -> tuple[int, int, int] | None:
    """(C, H, W) a built-in data set declares; None for an image folder or a loader, whose images
    alone say it."""
    reader = DATASETS.get(name)
    return None if reader is None else reader.image_shape


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
