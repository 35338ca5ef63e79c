"""`rissole train` and `rissole sample` for every registered head (rissole.heads.registry: rissole, rdm, rarm)."""

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


def _train(args: argparse.Namespace) -> int:
    from rissole.config import apply_overrides, load_config
    from rissole.heads.registry import head

    cfg = apply_overrides(load_config(args.config), args.set)
    train = head(cfg.pop("kind", "rissole"), args.config).load("train")
    trainer = train(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    where = Path(args.out) / ("final" if trainer.step == trainer.tc["steps"] else "checkpoint")
    print(f"step {trainer.step}/{trainer.tc['steps']}: wrote {where}")
    return 0


# SamplingOptions fields only some heads take: their flags default to None, so a flag the chosen head does
# not take is refused only when the user gave it
HEAD_FLAGS = ("sampler", "steps", "eta", "order", "k", "top_k", "temperature")


def register_sample(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="generate images with a trained RISSOLE, RDM or RARM model, as a PNG grid")
    s.add_argument("--ckpt", default=None, help="RISSOLE, RDM or RARM checkpoint directory (default: the shipped RISSOLE)")
    s.add_argument("-n", type=int, default=64, help="number of images")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale against zero neighbours")
    s.add_argument("--top-m", type=float, default=1.0, help="keep the top fraction m of p_D for pseudo-queries (RDM Eq. 7)")
    s.add_argument("--seed", type=int, default=0, help="seed of the pseudo-queries and of the noise")
    s.add_argument("--query", nargs="*", default=None, metavar="IMAGE",
                   help="condition on your own images (PNG/JPEG) instead of pseudo-queries: n samples per query cycle over them")
    s.add_argument("--steps", type=int, default=None, help="RISSOLE, RDM: DDIM steps (default 50; --sampler ddpm takes all T)")
    s.add_argument("--sampler", choices=("ddim", "ddpm"), default=None, help="RISSOLE, RDM: DDIM (respaced, default) or DDPM ancestral")
    s.add_argument("--eta", type=float, default=None, help="RISSOLE, RDM: DDIM eta (default 0: deterministic; 1 with all steps = DDPM)")
    s.add_argument("--order", choices=("parallel", "block_by_block"), default=None,
                   help="RISSOLE: all blocks in one call per step (default) or one block position at a time")
    s.add_argument("-k", type=int, default=None, help="RDM, RARM: neighbours per sample (default: the model's k_train; "
                                                      "RISSOLE's k is fixed by its architecture)")
    s.add_argument("--top-k", type=int, default=None, help="RARM: sample among the k most likely codes (default 0: all)")
    s.add_argument("--temperature", type=float, default=None, help="RARM: softmax temperature (default 1)")
    s.add_argument("--db", "--database", dest="db", default=None,
                   help="database (default: the one recorded in the checkpoint); another database of the same kind "
                        "swaps the database (RDM paper, Sec. 4.3)")
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

    from rissole.checkpoint import load_checkpoint
    from rissole.cli.sample_files import write_sample_files
    from rissole.heads.pipeline import SamplingOptions
    from rissole.heads.registry import head, load_pipeline
    from rissole.paths import SHIPPED_RISSOLE, ensure_database_for

    if args.ckpt is None:
        args.ckpt = str(SHIPPED_RISSOLE)
    given = {f for f in HEAD_FLAGS if getattr(args, f) is not None}
    options = SamplingOptions(guidance=args.guidance, top_m=args.top_m, seed=args.seed,
                              **{f: getattr(args, f) for f in given})
    kind = load_checkpoint(args.ckpt).kind
    head(kind, args.ckpt).load("pipeline").check(options, given, args.ckpt)  # before any database is built
    if args.db is None:
        ensure_database_for(args.ckpt)
    pipe = load_pipeline(args.ckpt, database=args.db, vqgan=args.vqgan, device=args.device)
    rows, images = None, None
    if args.query:
        from rissole.data import ImageFolder

        dd = pipe.vqgan.config.ddconfig
        images = ImageFolder.from_files(args.query, size=dd["resolution"], channels=dd["in_channels"]).images
        ids = pipe.query_neighbours(images, options.k)[np.arange(args.n) % len(images)]
    else:
        rows = pipe.pseudo_queries(args.n, options.top_m, options.seed)
        ids = pipe.neighbour_ids(rows, options.k)
    bar = tqdm(total=pipe.num_steps(options), desc=f"sample {kind}", unit="step")
    t0 = time.perf_counter()
    out, _ = pipe.generate(ids, options, n=args.n, progress=lambda i: bar.update(1))
    bar.close()
    dt = time.perf_counter() - t0
    write_sample_files(args, pipe, out, ids, rows, images)
    k = "" if ids is None else f", k = {ids.shape[1]}"
    print(f"wrote {args.out}: {args.n} {kind} samples ({pipe.describe(options)}{k}, guidance {options.guidance}, "
          f"top-m {options.top_m}, database {pipe.db.path}), {dt:.1f} s ({dt / args.n * 1e3:.0f} ms/image)")
    return 0
