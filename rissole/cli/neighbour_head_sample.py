"""`rissole sample --ckpt <rdm or rarm checkpoint>`: the RDM paper's heads (RDM, RARM) (called from rissole_cmd._sample)."""

from __future__ import annotations

import argparse
import time

import numpy as np


def sample_neighbour_head(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rissole.cli.sample_files import write_sample_files
    from rissole.heads.rdm_pipeline import NeighbourHeadPipeline

    pipe = NeighbourHeadPipeline.load(args.ckpt, database=args.db, vqgan=args.vqgan, device=args.device)
    k = args.k or pipe.k
    rows, images = None, None
    if args.query:
        from rissole.data import ImageFolder

        dd = pipe.vqgan.config.ddconfig
        images = ImageFolder.from_files(args.query, size=dd["resolution"], channels=dd["in_channels"]).images
        ids = pipe.query_neighbours(images, k)[np.arange(args.n) % len(images)]
    else:
        rows = pipe.pseudo_queries(args.n, args.top_m, args.seed)
        ids = pipe.table_neighbours(rows, k)
    bar = tqdm(total=pipe.num_steps(args.sampler, args.steps, args.eta), desc=f"sample {pipe.kind}", unit="step")
    t0 = time.perf_counter()
    out, _ = pipe.generate(ids, seed=args.seed, guidance=args.guidance, sampler=args.sampler, steps=args.steps,
                           eta=args.eta, top_k=args.top_k, temperature=args.temperature, progress=lambda i: bar.update(1))
    bar.close()
    dt = time.perf_counter() - t0
    write_sample_files(args, pipe, out, ids, rows, images)
    how = f"{args.sampler} {pipe.num_steps(args.sampler, args.steps, args.eta)} steps" if pipe.kind == "rdm" else \
        f"top-k {args.top_k or 'all'}, temperature {args.temperature}"
    print(f"wrote {args.out}: {args.n} {pipe.kind} samples ({how}, k = {k}, guidance {args.guidance}, top-m {args.top_m}, "
          f"database {pipe.edb.path}), {dt:.1f} s ({dt / args.n * 1e3:.0f} ms/image)")
    return 0
