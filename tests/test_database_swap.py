"""Library pieces of the database-swap benchmark: the small CNN classifier learns real Fashion-MNIST above
chance and its cache returns the same model; sklearn's digits become 32 x 32 uint8 with Fashion-MNIST's
2-pixel zero border."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rissole.data import load_source
from benchmarks.digits import upscale_digits
from rissole_runtime.errors import DataError
from benchmarks.classifier import accuracy, cached_classifier, predict, train_classifier, training_key


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_classifier_learns_real_images_above_chance_and_caches(tmp_path: Path) -> None:
    train = load_source("fmnist:train", limit=600)
    test = load_source("fmnist:test", limit=500)
    clf, info = cached_classifier(train.images, train.labels, 10, tmp_path, name="t", epochs=5, seed=0)
    assert not info["from_cache"]
    acc = accuracy(clf, test.images, test.labels)
    assert acc > 0.5, acc  # chance is 0.1; ~0.65 at 600 images x 5 epochs
    again, info2 = cached_classifier(train.images, train.labels, 10, tmp_path, name="t", epochs=5, seed=0)
    assert info2["from_cache"] and info2["key"] == info["key"]
    np.testing.assert_array_equal(predict(again, test.images), predict(clf, test.images))
    hp = dict(info["hparams"])
    assert training_key(train.images, train.labels, **hp) == info["key"]
    assert training_key(train.images, train.labels, **{**hp, "epochs": 4}) != info["key"]  # settings change the key
    assert training_key(train.images[::-1], train.labels, **hp) != info["key"]  # so do the pixels


def test_classifier_refuses_bad_input() -> None:
    with pytest.raises(DataError, match="uint8"):
        predict(train_classifier(np.zeros((4, 1, 32, 32), np.uint8), np.arange(4) % 2, 2, epochs=1),
                np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(DataError, match="labels"):
        train_classifier(np.zeros((4, 1, 32, 32), np.uint8), np.array([0, 1, 2, 3]), 2, epochs=1)


def test_digits_upscaled_like_fashion_mnist() -> None:
    x = np.zeros((2, 8, 8))
    x[0] = 16.0  # full ink: the whole 28 x 28 content is white
    x[1, 3:5, 3:5] = 8.0
    out = upscale_digits(x)
    assert out.shape == (2, 1, 32, 32) and out.dtype == np.uint8
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (out[:, 0][:, border] == 0).all()  # 2-pixel zero padding, as fmnist pads 28 -> 32
    assert (out[0, 0, 2:30, 2:30] == 255).all()
    assert out[1].max() == 128 and out[1, 0, 15, 15] == 128  # 8/16 -> round(127.5), centred


def test_sklearn_digits_load_as_32x32_uint8() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is the optional extra `bench` (pip install -e .[bench])")
    from benchmarks.digits import load_digits_32

    images, labels = load_digits_32()
    assert images.shape == (1797, 1, 32, 32) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(range(10))
    assert images[:, :, :2].max() == 0 and images[:, :, 30:].max() == 0
    assert images[:, :, :, :2].max() == 0 and images[:, :, :, 30:].max() == 0
    assert images.max() == 255
