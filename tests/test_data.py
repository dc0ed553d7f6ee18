import pickle
import re

import h5py
import numpy as np
import pytest
from conftest import ROOT

from jacobian_spectrum.data.base import DataError
from jacobian_spectrum.data.corruption import corrupt_labels, write_labels
from jacobian_spectrum.data.sources import dataset_info
from jacobian_spectrum.data.subset import build_subset, draw_subset, read_split, write_subset


# ---------------------------------------------------------------- label corruption
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.75, 1.0, 0.333])
def test_corruption_count_is_exact_and_never_the_same_class(fraction):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=999)
    y_new, corrupted = corrupt_labels(y, 3, fraction, seed=7)
    assert corrupted.sum() == round(fraction * len(y))
    assert np.all(y_new[corrupted] != y[corrupted])
    assert np.array_equal(y_new[~corrupted], y[~corrupted])


def test_corrupted_labels_are_uniform_over_the_other_classes():
    # chi-square over many draws: each of the K-1 other classes equally likely
    k = 5
    y = np.repeat(np.arange(k), 2000)
    y_new, corrupted = corrupt_labels(y, k, 1.0, seed=3)
    offsets = (y_new - y) % k  # 1..K-1
    counts = np.bincount(offsets, minlength=k)[1:]
    expected = len(y) / (k - 1)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 16.27  # chi-square 3 dof, p = 0.001
    # and per true class, every other class appears
    for c in range(k):
        assert set(y_new[y == c]) == set(range(k)) - {c}


def test_corruption_seeds():
    y = np.arange(300) % 3
    a, _ = corrupt_labels(y, 3, 0.5, seed=0)
    b, _ = corrupt_labels(y, 3, 0.5, seed=0)
    c, _ = corrupt_labels(y, 3, 0.5, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_corruption_levels_are_nested():
    y = np.arange(300) % 3
    _, low = corrupt_labels(y, 3, 0.25, seed=0)
    _, high = corrupt_labels(y, 3, 0.5, seed=0)
    assert np.all(high[low])


def test_corruption_rejects_bad_fraction():
    with pytest.raises(ValueError, match="outside"):
        corrupt_labels(np.zeros(3, int), 3, 1.5, 0)


# ---------------------------------------------------------------- subsampling
DIGITS = {"name": "digits", "classes": [3, 1, 7], "train_per_class": 40, "test_per_class": 30, "seed": 5}


def test_digits_subset_is_balanced_traceable_and_disjoint(tmp_path):
    from sklearn.datasets import load_digits

    subset, source = build_subset(DIGITS)
    for split, per in (("train", 40), ("test", 30)):
        assert np.array_equal(np.bincount(subset.y[split]), [per] * 3)
    digits = load_digits()
    for split in ("train", "test"):
        idx = subset.source_index[split]
        # every row traces back to the original image and its class
        assert np.array_equal(subset.x[split][:, 0], digits.images[idx].astype(np.uint8))
        assert np.array_equal(np.array([3, 1, 7])[subset.y[split]], digits.target[idx])
    assert not set(subset.source_index["train"]) & set(subset.source_index["test"])
    path = tmp_path / "subset.h5"
    write_subset(path, subset, source, DIGITS)
    with h5py.File(path) as f:
        assert list(f.attrs["classes"]) == ["3", "1", "7"]
        assert f.attrs["dataset"] == "digits" and f.attrs["seed"] == 5
        assert f["train/x"].dtype == np.uint8 and f["train/source_index"].shape == (120,)
    data = read_split(path, "train")
    # normalised per channel over the training subset
    assert abs(data.x.mean()) < 1e-5 and abs(data.x.std() - 1) < 1e-4


def test_subset_splits_are_the_subset_files_splits_without_a_file_left(tmp_path):
    from jacobian_spectrum.data.subset import subset_splits

    subset, train, test = subset_splits(DIGITS, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary subset file is gone
    expected, source = build_subset(DIGITS)
    write_subset(tmp_path / "subset.h5", expected, source, DIGITS)
    for split, data in (("train", train), ("test", test)):
        assert np.array_equal(subset.source_index[split], expected.source_index[split])
        np.testing.assert_array_equal(data.x, read_split(tmp_path / "subset.h5", split).x)
        assert np.array_equal(data.y, expected.y[split]) and data.num_classes == 3


def test_subset_seed_changes_the_draw():
    a = draw_subset({"train": np.arange(100) % 2, "test": np.arange(50) % 2}, [0, 1], 10, 5, seed=0)
    b = draw_subset({"train": np.arange(100) % 2, "test": np.arange(50) % 2}, [0, 1], 10, 5, seed=0)
    c = draw_subset({"train": np.arange(100) % 2, "test": np.arange(50) % 2}, [0, 1], 10, 5, seed=1)
    assert np.array_equal(a["train"], b["train"]) and not np.array_equal(a["train"], c["train"])


def test_labels_file(tmp_path):
    subset, source = build_subset(DIGITS)
    write_subset(tmp_path / "subset.h5", subset, source, DIGITS)
    write_labels(tmp_path / "labels.h5", tmp_path / "subset.h5", 0.5, seed=2)
    with h5py.File(tmp_path / "labels.h5") as f:
        assert f["corrupted"][...].sum() == 60
        assert np.array_equal(f["y_clean"][...], subset.y["train"])
        assert f.attrs["fraction"] == 0.5


# ---------------------------------------------------------------- CIFAR-10 in the real pickle format
def write_cifar_fixture(root, per_class_train=4, per_class_test=2):
    """The official cifar-10-batches-py layout: pickled dicts with 'data' (N x 3072 uint8), 'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 10 * per_class_train, "num_vis": 3072}, f)
    rng = np.random.default_rng(0)
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b in batches:
        per = per_class_test if b == "test_batch" else per_class_train
        labels = np.repeat(np.arange(10), per)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        data[:, 0] = labels  # first red pixel encodes the class: lets the test trace rows
        with open(folder / b, "wb") as f:
            pickle.dump(
                {
                    "batch_label": b,
                    "labels": labels.tolist(),
                    "data": data,
                    "filenames": [f"{b}_{i}.png" for i in range(len(labels))],
                },
                f,
                protocol=2,
            )
    return folder


def test_cifar10_reader_on_the_real_pickle_format(tmp_path):
    write_cifar_fixture(tmp_path)
    ds = {
        "name": "cifar10",
        "root": str(tmp_path),
        "classes": ["airplane", "automobile", "bird"],
        "train_per_class": 6,
        "test_per_class": 2,
        "seed": 0,
    }
    subset, source = build_subset(ds)
    assert source.image_shape == (3, 32, 32) and len(source.labels["train"]) == 200
    assert subset.class_names == ["airplane", "automobile", "bird"]
    for split in ("train", "test"):
        # pixel [0,0,0] carries the original class: rows trace to the right images
        assert np.array_equal(subset.x[split][:, 0, 0, 0], subset.y[split])
        assert np.array_equal(source.labels[split][subset.source_index[split]], subset.y[split])
    info = dataset_info(ds)
    assert info.class_names[:3] == ["airplane", "automobile", "bird"]


def test_cifar10_missing_folder_says_where_to_put_it(tmp_path):
    ds = {
        "name": "cifar10",
        "root": str(tmp_path / "nowhere"),
        "download": False,
        "classes": ["bird", "cat"],
        "train_per_class": 1,
        "test_per_class": 1,
        "seed": 0,
    }
    with pytest.raises(DataError, match="cifar-10-batches-py.*download"):
        build_subset(ds)


def test_imagefolder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per in (("train", 5), ("test", 3)):
        for c in ("ant", "bee", "cow"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(per):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i:04d}.png"
                )
    ds = {
        "name": "imagefolder",
        "root": str(tmp_path),
        "classes": ["cow", "ant"],
        "train_per_class": 4,
        "test_per_class": 3,
        "seed": 0,
    }
    subset, source = build_subset(ds)
    assert source.image_shape == (3, 12, 12)
    assert subset.x["train"].shape == (8, 3, 12, 12)
    assert np.array_equal(np.bincount(subset.y["test"]), [3, 3])
    with pytest.raises(DataError, match="test_per_class"):
        build_subset({**ds, "test_per_class": 4})


def test_mnist_through_torchvision_on_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([n], ">i4").tobytes() + labels.tobytes()
        )
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([n, 28, 28], ">i4").tobytes() + images.tobytes()
        )
    ds = {
        "name": "mnist",
        "root": str(tmp_path),
        "classes": [0, 1],
        "train_per_class": 5,
        "test_per_class": 2,
        "seed": 0,
    }
    subset, source = build_subset(ds)
    assert source.image_shape == (1, 28, 28) and subset.x["train"].shape == (10, 1, 28, 28)
    assert dataset_info(ds).per_class["train"].tolist() == [5] * 10


# ---------------------------------------------------------------- image archives
def write_image_archive(path, top="images", per=(4, 2), classes=("ant", "bee", "cow"), size=8):
    """A .tar.gz in the layout of the CIFAR-10 JPEG archive: {top}/train/<class>/NNNN.jpg."""
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(0)
    prefix = f"{top}/" if top else ""
    with tarfile.open(path, "w:gz") as tf:
        for split, n in zip(("train", "test"), per):
            for c in classes:
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{prefix}{split}/{c}/{i:04d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tf.addfile(info, buf)
    return path


@pytest.mark.parametrize("top", ["images", ""])
def test_archive_is_listed_then_unpacked_into_root(tmp_path, top):
    from jacobian_spectrum.data.archive import ARCHIVE_MANIFEST, archive_info, extract_archive, file_sha256

    archive = write_image_archive(tmp_path / "images.tar.gz", top=top)
    listed = archive_info(archive)  # what the config check sees before anything is unpacked
    assert listed.class_names == ["ant", "bee", "cow"]
    assert listed.per_class["train"].tolist() == [4, 4, 4] and listed.per_class["test"].tolist() == [2, 2, 2]
    root = tmp_path / "data" / "images"
    info = extract_archive(archive, root, sha256=file_sha256(archive))
    assert sorted(p.name for p in root.iterdir()) == sorted([ARCHIVE_MANIFEST, "train", "test"])
    assert info.per_class["train"].tolist() == listed.per_class["train"].tolist()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    ds = {
        "name": "imagefolder",
        "root": str(root),
        "archive": str(archive),
        "classes": ["cow", "ant"],
        "train_per_class": 4,
        "test_per_class": 2,
        "seed": 0,
    }
    subset, source = build_subset(ds)
    assert source.image_shape == (3, 8, 8) and subset.x["train"].shape == (8, 3, 8, 8)
    assert dataset_info(ds).per_class["test"].tolist() == [2, 2, 2]  # read from the unpacked folder now


def test_damaged_archive_is_refused_naming_it_and_leaves_the_old_folder(tmp_path):
    from jacobian_spectrum.data.archive import archive_info, extract_archive

    good = write_image_archive(tmp_path / "good.tar.gz")
    root = tmp_path / "root"
    extract_archive(good, root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for damaged in (cut, tmp_path / "missing.tar.gz"):
        with pytest.raises(DataError, match=str(damaged)):
            archive_info(damaged)
        with pytest.raises(DataError, match=str(damaged)):
            extract_archive(damaged, root)
    with pytest.raises(DataError, match="sha256"):
        extract_archive(good, root, sha256="0" * 64)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # the earlier result is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_archive_without_the_image_folder_layout_or_escaping_its_folder_is_refused(tmp_path):
    import io
    import tarfile

    from jacobian_spectrum.data.archive import archive_info, extract_archive

    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tf:
        info = tarfile.TarInfo("pictures/0001.png")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="train/<class>"):
        archive_info(flat)
    evil = write_image_archive(tmp_path / "evil.tar.gz", top="")
    with tarfile.open(tmp_path / "evil.tar", "w") as tf:  # the good archive plus a link out of its folder
        with tarfile.open(evil) as src:
            for m in src.getmembers():
                tf.addfile(m, src.extractfile(m))
        link = tarfile.TarInfo("train/ant/escape.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../outside.png"
        tf.addfile(link)
    with pytest.raises(DataError, match="evil.tar.*outside"):
        extract_archive(tmp_path / "evil.tar", tmp_path / "root")
    assert not (tmp_path / "root").exists()


# ---------------------------------------------------------------- damaged and hostile data files
def write_jpeg_folder(root, per=3, classes=("ant", "bee", "cow")):
    """train/ and test/ of 32x32 JPEGs, as in the CIFAR-10 JPEG archive."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i:04d}.jpg", quality=90
                )
    return root


def write_mnist_fixture(root, n_train=50, n_test=20):
    """torchvision's MNIST/raw layout: big-endian idx files."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([n], ">i4").tobytes() + labels.tobytes()
        )
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([n, 28, 28], ">i4").tobytes() + images.tobytes()
        )
    return root


def _npy_bytes():
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 4)))
    return buf.getvalue()


DAMAGE = {
    "truncated": lambda good: good[: len(good) // 2],
    "zero bytes": lambda good: b"",
    "another format": lambda good: _npy_bytes(),  # a numpy .npy file under the right name
    "garbage": lambda good: np.random.default_rng(1).integers(0, 256, len(good), dtype=np.uint8).tobytes(),
}
READERS = {
    # reader: (write the fixture, the file to damage, the dataset config)
    "imagefolder": (
        write_jpeg_folder,
        "train/bee/0001.jpg",
        lambda root: {"name": "imagefolder", "root": str(root), "classes": ["ant", "bee", "cow"]},
    ),
    "cifar10": (
        lambda root: write_cifar_fixture(root) and root,
        "cifar-10-batches-py/data_batch_2",
        lambda root: {"name": "cifar10", "root": str(root), "classes": ["airplane", "bird"]},
    ),
    "mnist": (
        write_mnist_fixture,
        "MNIST/raw/train-images-idx3-ubyte",
        lambda root: {"name": "mnist", "root": str(root), "classes": [0, 1]},
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_damaged_data_file_is_named_before_any_subset_is_written(tmp_path, reader, damage):
    write, name, config = READERS[reader]
    root = write(tmp_path / "data")
    ds = {**config(root), "train_per_class": 2, "test_per_class": 2, "seed": 0}
    build_subset(ds)  # the intact fixture reads
    target = root / name
    target.write_bytes(DAMAGE[damage](target.read_bytes()))
    # every image of the split is read, so the damaged one is among them
    all_rows = {"imagefolder": 3, "cifar10": 4, "mnist": 5}[reader]
    with pytest.raises(DataError, match=re.escape(str(target))) as exc:
        build_subset({**ds, "train_per_class": all_rows})
    words = {"truncated": "truncated", "zero bytes": "empty", "another format": "", "garbage": ""}[damage]
    assert words in str(exc.value)
    assert "replace" in str(exc.value)  # and says what to do


def test_a_cifar10_batch_of_the_wrong_size_is_named(tmp_path):
    write_cifar_fixture(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "wb") as f:
        pickle.dump({"labels": [0, 1], "data": np.zeros((2, 1024), np.uint8)}, f, protocol=2)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*wrong size"):
        build_subset(
            {
                "name": "cifar10",
                "root": str(tmp_path),
                "classes": [0, 1],
                "train_per_class": 1,
                "test_per_class": 1,
                "seed": 0,
            }
        )


class _CreatesAFile:
    """A pickle that, when loaded by plain pickle.load, opens (creates) a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_hostile_cifar10_pickle_is_refused_and_runs_nothing(tmp_path):
    write_cifar_fixture(tmp_path)
    victim = tmp_path / "created-by-the-pickle"
    hostile = pickle.dumps({"data": _CreatesAFile(victim), "labels": [0]}, protocol=2)
    probe = tmp_path / "proof"
    pickle.loads(pickle.dumps(_CreatesAFile(probe), protocol=2)).close()
    assert probe.exists()  # a plain unpickler would run it
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(hostile)
    ds = {
        "name": "cifar10",
        "root": str(tmp_path),
        "classes": [0, 1],
        "train_per_class": 1,
        "test_per_class": 1,
        "seed": 0,
    }
    with pytest.raises(DataError, match=re.escape(str(path)) + ": refused global .*open"):
        build_subset(ds)
    assert not victim.exists()
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(hostile)  # the parse-time read too
    with pytest.raises(DataError, match="batches.meta"):
        dataset_info(ds)
    assert not victim.exists()


def test_schema_enum_lists_exactly_the_registered_data_sets():
    """Adding a data set means one registry entry; the schema's enum must follow it."""
    import yaml

    from jacobian_spectrum.data.sources import DATASETS, open_source

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["dataset"]["properties"]["name"]["anyOf"][0]["enum"] == list(DATASETS)
    for reader in (open_source, dataset_info):
        with pytest.raises(DataError, match=r"dataset.name: unknown data set 'svhn'; allowed: digits, cifar10"):
            reader({"name": "svhn"})
