"""Traps a user's own data ran into: the EMA warm-up, mismatched autoencoder channels, inference-weight choice."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rissole.autoencoder import VQGANConfig
from rissole.autoencoder.train import train_vqgan
from rissole.checkpoint import load_checkpoint
from rissole.ema import EMA, warmup_decay
from rissole.errors import ConfigError


def test_ema_warmup_follows_the_live_weights_early() -> None:
    """450 updates at decay 0.999 without a warm-up keep 0.999**450 = 64% of the initialisation."""
    torch.manual_seed(0)
    model = nn.Linear(8, 8)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the live weights move away from the initialisation and stay there
    for _ in range(450):
        ema.update(model)
    for k, v in model.state_dict().items():
        # share of the initialisation left in the average: prod of the warm-up decays, about 1e-3 here
        left = ((ema.state_dict()[k] - v) / (init[k] - v)).abs().max()
        assert left < 0.01, (k, float(left))
    assert ema.num_updates == 450
    assert warmup_decay(0.999, 0) == pytest.approx(0.1) and warmup_decay(0.999, 10**6) == 0.999


def test_autoencoder_channel_mismatch_is_refused() -> None:
    with pytest.raises(ConfigError, match="in_channels is 3 but out_ch is 1"):
        VQGANConfig.from_dict({"ddconfig": {**VQGANConfig().ddconfig, "in_channels": 3, "out_ch": 1}})


def test_short_run_reports_live_and_ema_and_ships_the_better(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    cfg = tiny_vqgan_config
    cfg["train"].update(steps=30, disc_start=None, ema_decay=0.999, val_every=15, val_images=64)
    trainer = train_vqgan(cfg, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "val.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [15, 30]
    last = {k: float(v) for k, v in rows[-1].items()}
    assert {"val_psnr_live", "val_psnr_ema"} <= set(last)
    assert last["val_psnr"] == max(last["val_psnr_live"], last["val_psnr_ema"])
    final = load_checkpoint(tmp_path / "run" / "final")
    assert final.inference_weights_name() == ("ema" if trainer.inference_choice == "ema" else "model")


def test_fid_subset_is_seeded_random_not_the_first_classes(tmp_path: Path, fmnist_test_300) -> None:
    """A folder sorted by class: the first N are one class; the seeded subset draws from all, reproducibly."""
    import numpy as np
    from PIL import Image

    from rissole.cli.eval_cmd import load_samples
    from rissole.metrics.reference import load_reference_images

    for cls, start in (("a", 0), ("b", 100)):
        (tmp_path / cls).mkdir()
        for i in range(20):
            Image.fromarray(fmnist_test_300[start + i, 0]).save(tmp_path / cls / f"{i:02d}.png")
    first = load_samples(str(tmp_path), 10)
    np.testing.assert_array_equal(first[:, 0], fmnist_test_300[:10, 0])  # seed None: the old first-N protocol
    rand = load_samples(str(tmp_path), 10, seed=0)
    from_b = sum(any((img[0] == fmnist_test_300[100 + j, 0]).all() for j in range(20)) for img in rand)
    assert 0 < from_b < 10  # both classes drawn
    np.testing.assert_array_equal(rand, load_samples(str(tmp_path), 10, seed=0))
    ref = load_reference_images(f"folder:{tmp_path}", 10, size=32, seed=0)
    np.testing.assert_array_equal(ref.images, rand)  # the same draw on both sides of an evaluation
    with pytest.raises(Exception, match="SAMPLES .*: 41 images asked"):
        load_samples(str(tmp_path), 41, seed=0)


def test_recall_counts_ties_at_the_kth_score(tmp_path: Path) -> None:
    """Every image twice in the database: the twin of a listed row is as near; recall must not punish it."""
    import numpy as np

    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN
    from rissole.retrieval import build_database
    from rissole.retrieval.evaluate import recall_at_k, spot_check, true_scores
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.searchers.exact import ExactSearcher

    data = load_source("fmnist:train", limit=60)
    images = np.concatenate([data.images, data.images])  # row i and row i + 60 are the same image
    encode_images(load_vqgan(SHIPPED_VQGAN), images, tmp_path / "lat.npy", str(SHIPPED_VQGAN),
                  load_checkpoint(SHIPPED_VQGAN).weights_hash(), "fmnist:train", None, progress=False)
    keys = KeySet(build_database(tmp_path / "lat.npy", tmp_path / "db", grid=2, progress=False), "block0")
    q = keys.gather(np.arange(20))
    exact = ExactSearcher().build(keys)
    ids, scores = exact.search(q, 3)
    twins = np.where(ids < 60, ids + 60, ids - 60)  # the same rows' duplicates: the same scores
    assert recall_at_k(twins, ids, 3) < 0.8  # id matching alone calls these misses
    assert recall_at_k(twins, ids, 3, true_scores(keys, q, twins), scores) == 1.0
    worse = np.full_like(ids, 59)  # one far row repeated: not a tie
    assert recall_at_k(worse, ids, 3, true_scores(keys, q, worse), scores) < 0.5
    assert spot_check(exact, n=50, k=3) == 1.0  # brute force scores 1, whatever order it breaks ties in


def _colour_folder(root: Path, n: int = 24) -> Path:
    """Real colour images: Fashion-MNIST garments tinted with a per-image colour, in two class folders."""
    import numpy as np
    from PIL import Image

    from rissole.data import load_source

    grey = load_source("fmnist:train", limit=n).images[:, 0].astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    for i, g in enumerate(grey):
        tint = rng.uniform(0.2, 1.0, size=3)
        rgb = (255 * (1 - g[..., None] * (1 - tint))).astype(np.uint8)  # coloured garment on white
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(root / f"c{i % 2}" / f"{i:03d}.png")
    return root


def test_grey_config_on_a_colour_folder_is_refused_and_auto_takes_the_data(tmp_path: Path,
                                                                           tiny_vqgan_config: dict[str, Any]) -> None:
    from rissole.data import source_channels

    folder = _colour_folder(tmp_path / "imgs")
    assert source_channels(f"folder:{folder}") == 3 and source_channels("fmnist:train") == 1
    cfg = tiny_vqgan_config
    cfg["data"].update(source=f"folder:{folder}", val_source=None, limit=None)
    cfg["train"].update(steps=2, disc_start=None)
    with pytest.raises(ConfigError, match=r"holds colour images \(3 channels\) but model.ddconfig.in_channels is 1"):
        train_vqgan(cfg, tmp_path / "grey", progress=False)
    assert not (tmp_path / "grey").exists()  # refused before anything was written
    cfg["model"]["ddconfig"].update(in_channels="auto", out_ch="auto")
    trainer = train_vqgan(cfg, tmp_path / "rgb", progress=False)
    assert trainer.model_config.ddconfig["in_channels"] == 3 == trainer.model_config.ddconfig["out_ch"]
    assert load_checkpoint(tmp_path / "rgb" / "final").config["model"]["ddconfig"]["in_channels"] == 3


def test_fit_runs_every_stage_then_skips_them_and_refuses_changed_settings(tmp_path: Path) -> None:
    """`rissole fit` on a colour folder it never saw: configs from the preset and the data, every stage's
    command in commands.sh, a second run skips what matches, other settings are refused with nothing changed."""
    import json

    from rissole.cli.main import main

    folder = _colour_folder(tmp_path / "imgs", n=60)
    run = tmp_path / "run"
    argv = ["fit", str(folder), "--out", str(run), "--vqgan-steps", "6", "--head-steps", "4", "--samples", "4",
            "--fid-n", "0", "--set", "vqgan.train.batch_size=8", "vqgan.train.val_every=3", "head.train.batch_size=4"]
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["channels"] == 3 and summary["preset"] == "rgb32"
    assert load_checkpoint(run / "vqgan" / "final").config["model"]["ddconfig"]["in_channels"] == 3
    assert load_checkpoint(run / "rissole" / "final").config["model"]["latent_channels"] == 12
    assert (run / "samples.png").is_file() and (run / "retrieval.png").is_file()
    r = summary["reconstruction"]
    assert r["val_images"] == summary["val_images"] > 0 and "colour_from_grey_reconstructions" in r
    commands = (run / "commands.sh").read_text()
    for cmd in ("rissole vqgan train", "rissole encode", "rissole db build", "rissole db neighbours", "rissole train"):
        assert cmd in commands, cmd

    assert main(argv) == 0
    stages = json.loads((run / "summary.json").read_text())["stages"]
    assert all(stages[s] == {"skipped": True} for s in ("vqgan", "encode", "db build", "db neighbours", "train rissole"))

    # samples carry their model's data: eval fid defaults to the VQ-GAN's held-out split, not Fashion-MNIST's
    from rissole.cli.eval_cmd import reference_for

    npy = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(run / "rissole" / "final"), "-n", "2", "--steps", "2",
                 "--out", str(tmp_path / "s.png"), "--npy", str(npy)]) == 0
    assert reference_for(str(npy), None, None) == (f"folder:{folder.resolve()}:val", 32)
    assert reference_for(str(npy), "fmnist:test", None) == ("fmnist:test", 32)
    with pytest.raises(Exception, match="pass --ref"):
        reference_for(str(tmp_path / "elsewhere.npy"), None, None)

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main([*argv[:4], "--vqgan-steps", "7"]) == 2  # another run's settings: refused, nothing touched
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_training_refuses_a_vqgan_other_than_the_databases_before_the_first_step(
        tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    """data.vqgan naming another VQ-GAN than the one that encoded data.db used to train for the whole run and be
    refused only at sampling or export."""
    import numpy as np

    from rissole.autoencoder import load_vqgan
    from rissole.data import load_source
    from rissole.errors import DataError
    from rissole.heads.registry import trainer
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN
    from rissole.retrieval import build_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    data = load_source("fmnist:train", limit=40)
    encode_images(load_vqgan(SHIPPED_VQGAN), data.images, tmp_path / "lat.npy", str(SHIPPED_VQGAN),
                  load_checkpoint(SHIPPED_VQGAN).weights_hash(), "fmnist:train", None, progress=False)
    db = build_database(tmp_path / "lat.npy", tmp_path / "db", grid=2, progress=False)
    make_tables(db, KeySet(db, "block0"), "exact", {}, k=5, progress=False)
    tiny_vqgan_config["train"].update(steps=1, disc_start=None, val_every=1000)
    train_vqgan(tiny_vqgan_config, tmp_path / "other", progress=False)  # another VQ-GAN
    cfg = {"model": {"latent_channels": 10, "latent_size": 8, "grid": 2, "k": 4, "model_channels": 32,
                     "channel_mult": [1, 2], "num_res_blocks": 1, "num_heads": 2},
           "data": {"db": str(db.path), "table": "train", "vqgan": str(tmp_path / "other" / "final")},
           "train": {"steps": 3, "batch_size": 4}}
    with pytest.raises(DataError, match=r"data.vqgan is VQ-GAN .* but the database .* holds latents of VQ-GAN"):
        trainer("rissole")(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "log.csv").exists()
    cfg["data"]["vqgan"] = str(SHIPPED_VQGAN)  # the right one trains
    assert trainer("rissole")(cfg, tmp_path / "ok", progress=False).step == 3
    assert np.isfinite(np.loadtxt(tmp_path / "ok" / "log.csv", delimiter=",", skiprows=1, usecols=1)).all()


@pytest.mark.parametrize("preset, side, f", [("fmnist32", 32, 4), ("rgb32", 32, 4), ("rgb64-f8", 64, 8)])
def test_presets_resolve_against_the_data(tmp_path: Path, preset: str, side: int, f: int) -> None:
    """Every preset gives a VQ-GAN of the data's channels whose latent the RISSOLE config matches; rgb64-f8 is the
    RISSOLE paper's 64 x 64, f = 8 setting with the same 8 x 8 latent as rgb32."""
    from rissole.autoencoder import VQGANConfig, VQModel
    from rissole.cli.fit_cmd import load_preset, resolve_configs
    from rissole.models.block_unet import BlockDenoiserConfig

    _, p = load_preset(preset, 3)
    cfgs = resolve_configs(p, tmp_path, 3, tmp_path / "run", "rissole", None, None, [])
    vq = VQGANConfig.from_dict(cfgs["vqgan"]["model"])
    assert vq.downsample == f and vq.ddconfig["resolution"] == side and vq.ddconfig["in_channels"] == 3
    c, h, w = vq.latent_shape
    m = BlockDenoiserConfig.from_dict(cfgs["head"]["model"])
    assert (m.latent_channels, m.latent_size) == (c, h) and h == w == 8
    x = torch.rand(2, 3, side, side) * 2 - 1
    xrec, _, idx = VQModel(vq)(x)
    assert xrec.shape == x.shape and idx.numel() == 2 * h * w
