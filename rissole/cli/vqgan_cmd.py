"""`rissole vqgan train | perceptual | reconstruct | import`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from rissole.paths import SHIPPED_VQGAN
from rissole_runtime import argtypes as at


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vqgan", help="train, inspect and import the VQ-GAN first stage")
    vsub = p.add_subparsers(dest="vqgan_command", metavar="ACTION", required=True)

    t = vsub.add_parser("train", help="train a VQ-GAN from a YAML config (resumable)")
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/vqgan/fmnist_f4.yaml")
    t.add_argument("--out", required=True, help="run directory: checkpoint/, final/, log.csv, val.csv")
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint bit for bit; a config that differs from the run's is "
                                                         "refused (naming the keys) unless --allow-config-change")
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue with the changed config values (the model section must still match)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config entries, e.g. train.steps=200")
    t.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files (default: the Debian package's)")
    t.add_argument("--stop-after", type=at.positive_int, default=None, help="end this invocation after N steps (checkpointed)")
    t.set_defaults(func=_train)

    q = vsub.add_parser("perceptual", help="train the feature network of the perceptual loss (train.perceptual_net) "
                                           "as a classifier of the training images")
    q.add_argument("--source", default="fmnist:train", help="labelled training images: fmnist:train, or folder:PATH "
                                                            "with one sub-folder per class")
    q.add_argument("--val-source", default="fmnist:test", help="labelled held-out images for the accuracy printed "
                                                               "and stored beside the weights ('' for none)")
    q.add_argument("--size", type=at.positive_int, default=32, help="image size the VQ-GAN trains at")
    q.add_argument("--epochs", type=at.positive_int, default=3, help="passes over the training images")
    q.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    q.add_argument("--out", required=True, help="output checkpoint directory")
    q.add_argument("--force", action="store_true", help="replace a rissole checkpoint already at --out")
    q.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    q.set_defaults(func=_perceptual)

    r = vsub.add_parser("reconstruct", help="originals and reconstructions side by side, as a PNG grid")
    r.add_argument("--ckpt", default=str(SHIPPED_VQGAN), help="VQ-GAN checkpoint directory (default: the shipped one)")
    r.add_argument("--source", default="fmnist:test", help="images: fmnist:test, folder:PATH, npy:PATH")
    r.add_argument("-n", type=at.positive_int, default=32, help="number of images")
    r.add_argument("--out", default="reconstructions.png", help="output PNG (pairs: original | reconstruction)")
    r.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.set_defaults(func=_reconstruct)

    i = vsub.add_parser("import", help="convert a taming / latent-diffusion VQ .ckpt into a rissole checkpoint")
    i.add_argument("ckpt", help=".ckpt with a state_dict (loaded with weights_only=True, nothing is executed)")
    i.add_argument("--config", required=True, help="the taming/latent-diffusion YAML config that goes with it")
    i.add_argument("--out", required=True, help="output checkpoint directory")
    i.add_argument("--force", action="store_true", help="replace a rissole checkpoint already at --out (nothing else "
                                                        "is ever replaced)")
    i.set_defaults(func=_import)


def _train(args: argparse.Namespace) -> int:
    from rissole.autoencoder.train import train_vqgan
    from rissole.config import apply_overrides, load_config, naming_file
    from rissole.distributed import launch_rank, run_lock
    from rissole.training import check_resume_config

    cfg = apply_overrides(load_config(args.config), args.set)
    if args.resume:
        check_resume_config(args.out, cfg, args.allow_config_change)
    with naming_file(args.config), run_lock(args.out):  # a second run into the same --out fails at once
        trainer = train_vqgan(cfg, args.out, resume=args.resume, stop_after=args.stop_after, data_dir=args.data_dir)
    where = Path(args.out) / ("final" if trainer.step == trainer.train_cfg["steps"] else "checkpoint")
    if launch_rank() == 0:
        print(f"step {trainer.step}/{trainer.train_cfg['steps']}: wrote {where}")
    return 0


def _perceptual(args: argparse.Namespace) -> int:
    import time

    from rissole.autoencoder.perceptual import accuracy, save_feature_net, train_feature_net
    from rissole.data import load_source
    from rissole_runtime.fileio import CHECKPOINT, check_replace

    check_replace(args.out, CHECKPOINT, args.force)  # before minutes of training, not after
    src = load_source(args.source, data_dir=args.data_dir, size=args.size)
    t0 = time.perf_counter()
    net, losses = train_feature_net(src.images, src.labels, train={"epochs": args.epochs, "seed": args.seed},
                                    source=args.source)
    info = {"data": {"source": args.source, "size": args.size}, "train": {"epochs": args.epochs, "seed": args.seed},
            "train_seconds": round(time.perf_counter() - t0, 1), **losses}
    if args.val_source:
        val = load_source(args.val_source, data_dir=args.data_dir, size=args.size)
        if val.labels is not None:
            info["val_accuracy"] = accuracy(net, val.images, val.labels)
    save_feature_net(net, args.out, info, force=args.force)
    acc = f", held-out accuracy {info['val_accuracy']:.1%}" if "val_accuracy" in info else ""
    print(f"wrote {args.out} ({info['train_seconds']:.0f} s{acc})")
    return 0


@torch.no_grad()
def reconstruct(ckpt: str, source: str, n: int, device: str = "auto", data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions) as uint8 (n, C, H, W)."""
    from rissole.autoencoder import load_vqgan
    from rissole.data import from_model_range, load_source, to_model_range
    from rissole.device import pick_device

    dev = pick_device(device)
    model = load_vqgan(ckpt, dev)
    dd = model.config.ddconfig
    images = load_source(source, data_dir=data_dir, size=dd["resolution"], channels=dd["in_channels"], limit=n).images
    recs = [from_model_range(model(to_model_range(images[s : s + 256]).to(dev))[0]) for s in range(0, len(images), 256)]
    return images, np.concatenate(recs)


def side_by_side(originals: np.ndarray, recs: np.ndarray, pairs_per_row: int = 8) -> np.ndarray:
    """Interleave so each original is followed by its reconstruction."""
    both = np.empty((2 * len(originals), *originals.shape[1:]), dtype=np.uint8)
    both[0::2], both[1::2] = originals, recs
    return both


def _reconstruct(args: argparse.Namespace) -> int:
    from rissole.autoencoder.losses import psnr
    from rissole.data import to_model_range
    from rissole_runtime.images import save_grid

    originals, recs = reconstruct(args.ckpt, args.source, args.n, args.device, args.data_dir)
    save_grid(side_by_side(originals, recs), args.out, nrow=16)
    db = float(psnr(to_model_range(recs), to_model_range(originals)).mean())
    print(f"wrote {args.out}: {len(originals)} pairs (original | reconstruction), mean PSNR {db:.2f} dB")
    return 0


def _import(args: argparse.Namespace) -> int:
    from rissole.autoencoder.convert import config_from_taming_yaml, import_taming_checkpoint

    out = import_taming_checkpoint(args.ckpt, config_from_taming_yaml(args.config), args.out, force=args.force)
    print(f"wrote {out}")
    return 0
