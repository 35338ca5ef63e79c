"""`rissole train` and `rissole sample` for every registered head (rissole.heads.registry: rissole, rdm, rarm)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rissole.heads.text_conditioning import STRATEGIES
from rissole_runtime.diffusion.solvers import SAMPLERS
from rissole_runtime import argtypes as at


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a RISSOLE block denoiser (or an ablation / the LDM baseline), an RDM or a RARM "
                                    "from a YAML config (its `kind`: rissole (default), rdm, rarm)")
    add_train_options(t, "configs/rissole/fmnist_g2.yaml, configs/rdm/fmnist_vq.yaml", "model.retrieval=false train.steps=200")
    t.set_defaults(func=_train)
    register_sample(sub)


def add_train_options(t: argparse.ArgumentParser, examples: str, overrides: str) -> None:
    """The options of every training command: config, run directory, resume, overrides, early stop."""
    t.add_argument("--config", required=True, help=f"YAML config, e.g. {examples}")
    t.add_argument("--out", required=True, help="run directory: checkpoint/, final/, log.csv")
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint bit for bit; a config that differs from the run's is "
                                                         "refused (naming the keys) unless --allow-config-change")
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue with the changed config values (the model section must still match)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help=f"override config entries, e.g. {overrides}")
    t.add_argument("--stop-after", type=at.positive_int, default=None, help="end this invocation after N steps (checkpointed)")


def _train(args: argparse.Namespace, only_kind: str | None = None) -> int:
    from rissole.config import apply_overrides, load_config, naming_file
    from rissole.errors import ConfigError
    from rissole.distributed import launch_rank, run_lock
    from rissole.heads.registry import trainer as trainer_of
    from rissole.training import check_resume_config

    cfg = apply_overrides(load_config(args.config), args.set)
    kind = cfg.pop("kind", "rissole")
    if only_kind is not None and kind != only_kind:
        raise ConfigError(f"{args.config}: kind {kind!r}; this command trains kind {only_kind!r}.")
    train = trainer_of(kind, args.config)
    if args.resume:
        check_resume_config(args.out, cfg, args.allow_config_change)
    with naming_file(args.config), run_lock(args.out):  # a second run into the same --out fails at once
        trainer = train(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    where = Path(args.out) / ("final" if trainer.step == trainer.tc["steps"] else "checkpoint")
    if launch_rank() == 0:
        print(f"step {trainer.step}/{trainer.tc['steps']}: wrote {where}")
    return 0


# SamplingOptions fields only some heads take: their flags default to None, so a flag the chosen head does
# not take is refused only when the user gave it
HEAD_FLAGS = ("sampler", "steps", "eta", "order", "k", "top_k", "temperature", "prompt", "strategy", "class_name", "pool")


def register_sample(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="generate images with a trained RISSOLE, RDM or RARM model, as a PNG grid")
    s.add_argument("--ckpt", default=None, help="RISSOLE, RDM or RARM checkpoint directory (default: the shipped RISSOLE)")
    s.add_argument("-n", type=at.positive_int, default=64, help="number of images (sampled in batches of 256)")
    s.add_argument("--guidance", type=at.GUIDANCE, default=1.0, help="classifier-free guidance scale against zero neighbours")
    s.add_argument("--top-m", type=at.fraction, default=1.0, help="keep the top fraction m of p_D for pseudo-queries (RDM Eq. 7)")
    s.add_argument("--seed", type=at.seed, default=0, help="seed of the pseudo-queries and of the noise")
    s.add_argument("--query", nargs="*", default=None, metavar="IMAGE",
                   help="condition on your own images (PNG/JPEG; transparency composited onto white) instead of "
                        "pseudo-queries: n samples per query cycle over them")
    s.add_argument("--steps", type=at.steps, default=None, help="RISSOLE, RDM: network calls of the sampler (default 50; "
                                                               "--sampler ddpm takes all T)")
    s.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="RISSOLE, RDM: ddim (respaced, default), ddpm (ancestral), dpmpp2m (DPM-Solver++ 2M) or unipc "
                        "(UniPC bh2)")
    s.add_argument("--eta", type=at.ETA, default=None, help="RISSOLE, RDM: DDIM eta (default 0: deterministic; 1 with all "
                                                           "steps = DDPM)")
    s.add_argument("--order", choices=("parallel", "block_by_block"), default=None,
                   help="RISSOLE: all blocks in one call per step (default) or one block position at a time")
    s.add_argument("-k", type=at.positive_int, default=None, help="RDM, RARM: neighbours per sample (default: the model's "
                                                                  "k_train; RISSOLE's k is fixed by its architecture)")
    s.add_argument("--top-k", type=at.non_negative_int, default=None, help="RARM: sample among the k most likely codes "
                                                                           "(default 0: all)")
    s.add_argument("--temperature", type=at.TEMPERATURE, default=None, help="RARM: softmax temperature (default 1)")
    s.add_argument("--prompt", nargs="+", default=None, metavar="TEXT",
                   help="RDM, RARM in a text-image space (joint, clip:PATH): condition on this text instead of "
                        "pseudo-queries (several prompts cycle over the samples); see --strategy")
    s.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="how --prompt conditions (RDM paper, Fig. 2): neighbours (the k nearest image embeddings of "
                        "the text; RDM's default), text+neighbours (the text embedding and its k-1 nearest; for "
                        "kNN-Diffusion the text and its k nearest, its default), text (the text embedding alone)")
    s.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="RDM, RARM in a text-image space: post-hoc class conditioning (RDM paper, Sec. 3.3): "
                        "'An image of a NAME' retrieves a pool of neighbours, each sample conditions on k of them")
    s.add_argument("--pool", type=at.positive_int, default=None,
                   help="--class: neighbours in the pool each sample draws its k from (default 4k)")
    s.add_argument("--db", "--database", dest="db", default=None,
                   help="database (default: the one recorded in the checkpoint); another database of the same kind "
                        "swaps the database (RDM paper, Sec. 4.3)")
    s.add_argument("--vqgan", default=None, help="VQ-GAN checkpoint (default: the one recorded in the checkpoint)")
    s.add_argument("--out", default="samples.png", help="output PNG grid")
    s.add_argument("--npy", default=None, help="also save the samples as a uint8 .npy (N, C, H, W), e.g. for `rissole eval fid`")
    s.add_argument("--show-retrieval", default=None, metavar="PNG",
                   help="also write the paper's Figure 2 layout: pseudo-query (or the prompt's text) | its k neighbours "
                        "| the sample, one row each")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    import numpy as np
    from tqdm import tqdm

    from rissole.checkpoint import load_checkpoint
    from rissole.cli.sample_files import BATCH, check_outputs, sample_to_files, write_sample_files
    from rissole.heads.pipeline import Conditioning, SamplingOptions
    from rissole.heads.registry import head, load_pipeline
    from rissole_runtime.errors import ConfigError
    from rissole.paths import SHIPPED_RISSOLE, ensure_database_for

    check_outputs(args)
    if args.ckpt is None:
        args.ckpt = str(SHIPPED_RISSOLE)
    given = {f for f in HEAD_FLAGS if getattr(args, f) is not None}
    if args.query and (args.prompt or args.class_name):
        raise ConfigError("--query conditions on your images, --prompt / --class on a text; give one of them.")
    values = {f: tuple(args.prompt) if f == "prompt" else getattr(args, f) for f in given}
    options = SamplingOptions(guidance=args.guidance, top_m=args.top_m, seed=args.seed, **values)
    kind = load_checkpoint(args.ckpt).kind
    head(kind, args.ckpt).load("pipeline").check(options, given, args.ckpt)  # before any database is built
    if args.db is None:
        ensure_database_for(args.ckpt)
    pipe = load_pipeline(args.ckpt, database=args.db, vqgan=args.vqgan, device=args.device)
    images = None
    if args.query:
        from rissole.data import ImageFolder

        dd = pipe.vqgan.config.ddconfig
        images = ImageFolder.from_files(args.query, size=dd["resolution"], channels=dd["in_channels"]).images
        cond = Conditioning(pipe.query_neighbours(images, options.k)[np.arange(args.n) % len(images)])
    else:
        cond = pipe.conditioning(args.n, options)  # pseudo-queries, or the prompt's / class's neighbours
    bar = tqdm(total=pipe.num_steps(options) * -(-args.n // BATCH), desc=f"sample {kind}", unit="step")
    t0 = time.perf_counter()

    def generate(sl: slice, seed: int) -> np.ndarray:
        part = cond.part(sl)
        return pipe.generate(part.ids, dataclasses.replace(options, seed=seed), n=sl.stop - sl.start,
                             progress=lambda i: bar.update(1), context=part.context)[0]

    out = sample_to_files(args.n, options.seed, args.npy, generate)
    bar.close()
    dt = time.perf_counter() - t0
    write_sample_files(args, pipe, out, cond, images)
    ids = cond.ids
    k = "" if ids is None else f", k = {ids.shape[1]}"
    if cond.texts is not None:
        k += f", conditioned on {cond.texts[0]!r}" + (f" ({pipe.strategy(options)})" if options.prompt else "")
    print(f"wrote {args.out}: {args.n} {kind} samples ({pipe.describe(options)}{k}, guidance {options.guidance}, "
          f"top-m {options.top_m}, database {pipe.db.path}), {dt:.1f} s ({dt / args.n * 1e3:.0f} ms/image)")
    return 0
