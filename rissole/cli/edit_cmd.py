"""`rissole edit`: kNN-Diffusion's mask-free, text-driven local manipulation of a user's image."""

from __future__ import annotations

import argparse

from rissole_runtime import argtypes as at
from rissole_runtime.diffusion.solvers import SAMPLERS


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("edit", help="edit an image towards a text prompt with no mask (kNN-Diffusion, Sec. 3.1): the model "
                                    "finds the part that disagrees with the text and changes it")
    e.add_argument("image", help="image to edit (PNG/JPEG; resized to the model's resolution, transparency onto white)")
    e.add_argument("--prompt", required=True, help="target text, e.g. 'a red apple'")
    e.add_argument("--out", required=True, help="PNG of the edited image (a grid when -n > 1)")
    e.add_argument("--ckpt", default=None, help="edit model (model.edit; default: the shipped checkpoints/knn-stickers-edit)")
    e.add_argument("-n", type=at.positive_int, default=1, help="edits to draw from different noise (default 1)")
    e.add_argument("--compare", default=None, metavar="PNG", help="also write the input beside its edits, enlarged")
    e.add_argument("--sampler", choices=SAMPLERS, default="dpmpp2m", help="sampler (default dpmpp2m)")
    e.add_argument("--steps", type=at.steps, default=25, help="network calls of the sampler (default 25)")
    e.add_argument("--guidance", type=at.GUIDANCE, default=1.0, help="classifier-free guidance on the text (default 1: at 2 the "
                   "edit spreads further outside the changed part, benchmarks/results/knn_diffusion.json)")
    e.add_argument("--seed", type=at.seed, default=0, help="seed of the noise")
    e.add_argument("--db", "--database", dest="db", default=None, help="embedding database (default: the checkpoint's)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.set_defaults(func=_edit)


def _edit(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from rissole.data import ImageFolder
    from rissole.heads.pipeline import SamplingOptions
    from rissole.heads.registry import load_pipeline
    from rissole.paths import SHIPPED_EDIT, ensure_database_for
    from rissole_runtime.errors import ConfigError
    from rissole_runtime.fileio import PNG, check_replace
    from rissole_runtime.images import save_grid

    for path in (args.out, args.compare):
        if path:
            check_replace(path, PNG)
    if not args.prompt.strip():
        raise ConfigError("--prompt: empty text; give the target text.")
    ckpt = args.ckpt or str(SHIPPED_EDIT)
    if args.db is None:
        ensure_database_for(ckpt)
    pipe = load_pipeline(ckpt, database=args.db, device=args.device)
    if pipe.kind != "rdm":
        raise ConfigError(f"{ckpt}: a {pipe.kind} checkpoint; `rissole edit` needs an RDM edit model (model.edit).")
    dd = pipe.vqgan.config.ddconfig
    image = ImageFolder.from_files([args.image], size=dd["resolution"], channels=dd["in_channels"]).images
    options = SamplingOptions(sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed)
    with tqdm(total=pipe.num_steps(options), desc="edit", unit="step") as bar:
        edited = pipe.edit(np.repeat(image, args.n, axis=0), args.prompt, options, progress=lambda i: bar.update(1))
    save_grid(edited, args.out, scale=1 if args.n == 1 else 2)
    if args.compare:
        save_grid(np.concatenate([image, edited]), args.compare, nrow=1 + args.n, scale=4)
    print(f"wrote {args.out}: {args.n} edit(s) of {args.image} towards {args.prompt!r} ({args.sampler} {args.steps} steps, "
          f"guidance {args.guidance})" + (f"; {args.compare}: input | edits" if args.compare else ""))
    return 0
