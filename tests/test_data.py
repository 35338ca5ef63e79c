"""Fashion-MNIST idx loading, image folders, source specs, and the errors bad files give."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rissole.data import FASHION_MNIST_DIR, ImageFolder, load_fashion_mnist, load_source, read_idx
from rissole_runtime.errors import DataError


def test_fashion_mnist_real_files() -> None:
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 1, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    # 28x28 padded with 2 zero pixels on each side
    assert images[:, :, :2].max() == 0 and images[:, :, -2:].max() == 0
    raw = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(images[:, 0, 2:30, 2:30], raw)
    train, _ = load_fashion_mnist("train")
    assert train.shape == (60000, 1, 32, 32)


def _copy_fmnist(tmp_path: Path) -> Path:
    for f in FASHION_MNIST_DIR.glob("t10k-*"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_truncated_idx_names_file_and_fix(tmp_path: Path) -> None:
    d = _copy_fmnist(tmp_path)
    f = d / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: 5000])
    with pytest.raises(DataError) as err:
        load_fashion_mnist("test", data_dir=d)
    msg = str(err.value)
    assert str(f) in msg and "truncated or corrupt" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_idx_size_mismatch_and_bad_magic(tmp_path: Path) -> None:
    raw = gzip.decompress((FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(raw[:-10])
    with pytest.raises(DataError, match="expected 10008 bytes, found 9998"):
        read_idx(short)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x89PNG" + raw[4:])
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(bad)


def test_missing_dir_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", data_dir=tmp_path)


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for i, (img, lab) in enumerate(zip(images, labels)):
        d = root / f"class_{lab}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(d / f"{i:04d}.png")


def test_image_folder_roundtrip_labels_and_split(tmp_path: Path, fmnist_test_300: np.ndarray) -> None:
    images = fmnist_test_300[:120]
    labels = load_fashion_mnist("test")[1][:120]
    _write_folder(tmp_path, images, labels)
    folder = ImageFolder(tmp_path, size=32, channels=1, with_labels=True)
    assert len(folder) == 120
    arr = folder.to_array()
    order = [int(p.stem) for p in folder.files]
    np.testing.assert_array_equal(arr, images[order])  # same size: resize/crop is the identity
    assert folder.classes == sorted({f"class_{l}" for l in labels})
    np.testing.assert_array_equal(np.array(folder.classes)[folder.labels], [f"class_{labels[i]}" for i in order])
    rgb = ImageFolder(tmp_path, size=16, channels=3).to_array()
    assert rgb.shape == (120, 3, 16, 16)
    train = ImageFolder(tmp_path, split="train", val_fraction=0.25, seed=1)
    val = ImageFolder(tmp_path, split="val", val_fraction=0.25, seed=1)
    assert len(train) + len(val) == 120 and not set(train.files) & set(val.files)
    assert 10 <= len(val) <= 50
    assert ImageFolder(tmp_path, split="val", val_fraction=0.25, seed=1).files == val.files  # deterministic


def test_image_folder_resize_centre_crop(tmp_path: Path) -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # a white centre square of 40x40 in a wide image
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = ImageFolder(tmp_path, size=20, channels=3).to_array()
    assert out.shape == (1, 3, 20, 20)
    assert out[..., 1:-1].min() == 255 and out.min() >= 200  # only the centre survives (bicubic edges)


def test_empty_folder_and_unreadable_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images found"):
        ImageFolder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot read image"):
        ImageFolder(tmp_path).to_array()


def test_source_specs(tmp_path: Path, fmnist_test_300: np.ndarray) -> None:
    s = load_source("fmnist:test", limit=10)
    assert s.images.shape == (10, 1, 32, 32) and s.labels is not None
    np.save(tmp_path / "x.npy", fmnist_test_300[:7, 0])
    assert load_source(f"npy:{tmp_path / 'x.npy'}").images.shape == (7, 1, 32, 32)
    assert s.content_hash() == load_source("fmnist:test", limit=10).content_hash()
    assert s.content_hash() != load_source("fmnist:test", limit=11).content_hash()
    for bad in ("mnist:train", "fmnist:val"):
        with pytest.raises(DataError):
            load_source(bad)
