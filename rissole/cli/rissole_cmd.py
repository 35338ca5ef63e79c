"""`rissole train` and `rissole sample`: the RISSOLE block-diffusion head, and RDM / RARM (dispatched on `kind`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a RISSOLE block denoiser (or an ablation / the LDM baseline), an RDM or a RARM "
                                    "from a YAML config (its `kind`: rissole (default), rdm, rarm)")
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/rissole/fmnist_g2.yaml, configs/rdm/fmnist_vq.yaml")
    t.add_argument("--out", required=True, help="run directory: checkpoint/, final/, log.csv")
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint bit for bit (same config)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config entries, e.g. model.retrieval=false train.steps=200")
    t.add_argument("--stop-after", type=int, default=None, help="end this invocation after N steps (checkpointed)")
    t.set_defaults(func=_train)
    register_sample(sub)


TRAINERS = {  # config kind -> module and function that train it
    "rissole": ("rissole.heads.block_train", "train_block_diffusion"),
    "rdm": ("rissole.heads.rdm_train", "train_rdm"),
    "rarm": ("rissole.heads.rarm_train", "train_rarm"),
}


def _train(args: argparse.Namespace) -> int:
    import importlib

    from rissole.config import apply_overrides, load_config
    from rissole_runtime.errors import ConfigError

    cfg = apply_overrides(load_config(args.config), args.set)
    kind = cfg.pop("kind", "rissole")
    if kind not in TRAINERS:
        raise ConfigError(f"{args.config}: kind {kind!r} is not trainable here; expected one of {sorted(TRAINERS)}.")
    module, name = TRAINERS[kind]
    train = getattr(importlib.import_module(module), name)
    trainer = train(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    where = Path(args.out) / ("final" if trainer.step == trainer.tc["steps"] else "checkpoint")
    print(f"step {trainer.step}/{trainer.tc['steps']}: wrote {where}")
    return 0


def register_sample(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="generate images with a trained RISSOLE, RDM or RARM model, as a PNG grid")
    s.add_argument("--ckpt", default=None, help="RISSOLE, RDM or RARM checkpoint directory (default: the shipped RISSOLE)")
    s.add_argument("-n", type=int, default=64, help="number of images")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps (ignored with --sampler ddpm, which takes all T)")
    s.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="DDIM (respaced) or DDPM ancestral")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 with all steps = DDPM")
    s.add_argument("--top-m", type=float, default=1.0, help="keep the top fraction m of p_D for pseudo-queries (RDM Eq. 7)")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale against zero neighbours")
    s.add_argument("--seed", type=int, default=0, help="seed of the pseudo-queries and of the noise")
    s.add_argument("--query", nargs="*", default=None, metavar="IMAGE",
                   help="condition on your own images (PNG/JPEG) instead of pseudo-queries: n samples per query cycle over them")
    s.add_argument("--order", choices=("parallel", "block_by_block"), default="parallel",
                   help="all blocks in one call per step (default) or one block position at a time")
    s.add_argument("--db", "--database", dest="db", default=None,
                   help="database (default: the one recorded in the checkpoint); for RDM / RARM another embedding "
                        "database of the same embedding swaps the database (RDM paper, Sec. 4.3)")
    s.add_argument("-k", type=int, default=None, help="RDM / RARM: neighbours per sample (default: the model's k_train)")
    s.add_argument("--top-k", type=int, default=0, help="RARM: sample among the k most likely codes (0: all)")
    s.add_argument("--temperature", type=float, default=1.0, help="RARM: softmax temperature")
    s.add_argument("--vqgan", default=None, help="VQ-GAN checkpoint (default: the one recorded in the checkpoint)")
    s.add_argument("--out", default="samples.png", help="output PNG grid")
    s.add_argument("--npy", default=None, help="also save the samples as a uint8 .npy (N, C, H, W), e.g. for `rissole eval fid`")
    s.add_argument("--show-retrieval", default=None, metavar="PNG",
                   help="also write the paper's Figure 2 layout: pseudo-query | its k neighbours | the sample, one row each")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    from tqdm import tqdm

    from rissole.cli.sample_files import write_sample_files
    from rissole_runtime.diffusion.schedule import DDIMSampler, DDPMSampler
    from rissole.heads.block_pipeline import RissolePipeline
    from rissole.paths import SHIPPED_RISSOLE, ensure_database_for

    if args.ckpt is None:
        args.ckpt = str(SHIPPED_RISSOLE)
    if args.db is None:
        ensure_database_for(args.ckpt)
    kind = checkpoint_kind(args.ckpt)
    if kind in ("rdm", "rarm"):
        from rissole.cli.neighbour_head_sample import sample_neighbour_head

        return sample_neighbour_head(args)
    pipe = RissolePipeline.load(args.ckpt, db=args.db, vqgan=args.vqgan, device=args.device)
    sched = pipe.schedule
    sampler = DDPMSampler(sched) if args.sampler == "ddpm" else DDIMSampler(sched, args.steps, args.eta)
    rows, images = None, None
    if args.query:
        from rissole.data import ImageFolder

        images = ImageFolder.from_files(args.query, size=pipe.vqgan.config.ddconfig["resolution"],
                                        channels=pipe.vqgan.config.ddconfig["in_channels"]).images
        ids = pipe.query_neighbours(images)[np.arange(args.n) % len(images)]
    else:
        rows = pipe.pseudo_queries(args.n, args.top_m, args.seed)
        ids = pipe.table_neighbours(rows) if pipe.model.config.retrieval else None
    bar = tqdm(total=len(sampler), desc=f"sample {args.sampler}", unit="step")
    t0 = time.perf_counter()
    out, _ = pipe.generate(ids, sampler, n=args.n, seed=args.seed, guidance=args.guidance, order=args.order,
                           progress=lambda i: bar.update(1))
    bar.close()
    dt = time.perf_counter() - t0
    write_sample_files(args, pipe, out, ids, rows, images)
    print(f"wrote {args.out}: {args.n} samples, {args.sampler} {len(sampler)} steps, {dt:.1f} s ({dt / args.n * 1e3:.0f} ms/image)")
    return 0


def checkpoint_kind(path: str) -> str | None:
    """The `kind` in a checkpoint's config.yaml (None when unreadable: the loader then says why)."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(path) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return cfg.get("kind") if isinstance(cfg, dict) else None
