"""Entry point of `rissole-run`: images from an edge bundle (RISSOLE, RDM or RARM) with numpy + onnxruntime (no torch)."""

from __future__ import annotations

import argparse
import sys
import time

from rissole_runtime import argtypes as at
from rissole_runtime.diffusion.solvers import SAMPLERS
from rissole_runtime.errors import ConfigError, run_command
from rissole_runtime.prompts import STRATEGIES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rissole-run",
                                description="Sample images from a bundle written by rissole-export, without PyTorch.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("-n", type=at.positive_int, default=16, help="number of images (>= 1; sampled in batches of 256)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="diffusion bundles: ddim, ddpm (all T steps), dpmpp2m (DPM-Solver++ 2M) or unipc (UniPC bh2) "
                        "(default: the manifest's)")
    p.add_argument("--steps", type=at.steps, default=None, help="network calls of the sampler, 1..1000 (default: the "
                                                              "manifest's; diffusion bundles; ignored by ddpm)")
    p.add_argument("--eta", type=at.float_range(0.0, 1.0), default=0.0, help="DDIM eta in [0, 1] (0: deterministic; "
                                                                             "diffusion bundles)")
    p.add_argument("--top-k", type=at.non_negative_int, default=None, help="RARM: keep the top-k codes at each position (0 = all; "
                                                           "default: the manifest's)")
    p.add_argument("--temperature", type=at.TEMPERATURE, default=None, help="RARM: sampling temperature in [0.001, 100] "
                                                                            "(default: the manifest's)")
    p.add_argument("--prompt", nargs="+", default=None, metavar="TEXT",
                   help="RDM / kNN-Diffusion bundles with a text encoder: condition on this text instead of "
                        "pseudo-queries (several prompts cycle over the images), searching the bundle's database")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="how --prompt conditions, as in `rissole sample`: neighbours (the text's nearest image "
                        "embeddings; RDM's default), text+neighbours (the text and its nearest images; "
                        "kNN-Diffusion's default), text (the text embedding alone)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write")
    p.add_argument("--npy", default=None, help="also save the uint8 images (n, C, H, W) as .npy")
    p.add_argument("--seed", type=at.seed, default=0, help="seed of the pseudo-queries and the noise (RARM: the draws)")
    p.add_argument("--top-m", type=at.fraction, default=None, help="top-m fraction of p_D, in (0, 1] (default: the "
                                                                       "manifest's)")
    p.add_argument("--guidance", type=at.GUIDANCE, default=None, help="guidance scale in [0, 100] (default: "
                                                                            "the manifest's)")
    p.add_argument("--provider", default="auto", choices=("auto", "tensorrt", "cuda", "cpu"),
                   help="execution provider (auto: TensorRT, CUDA, CPU, first available)")
    p.add_argument("--threads", type=at.positive_int, default=None, help="onnxruntime intra-op threads (default: OMP_NUM_THREADS "
                                                              "or onnxruntime's choice)")
    p.add_argument("--verify", action="store_true", help="recompute every file's sha256 before sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from rissole_runtime.batches import BATCH, generate_in_batches, npy_store
    from rissole_runtime.fileio import NPY, PNG, check_replace
    from rissole_runtime.images import save_grid
    from rissole_runtime.progress import progress_bar
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import open_sampler
    from rissole_runtime.session import default_threads

    t0 = time.perf_counter()
    for path, kind in ((args.out, PNG), (args.npy, NPY)):
        if path:
            check_replace(path, kind)  # before anything runs: never replace what is not a PNG / a .npy
    bundle = open_bundle(args.bundle, verify=args.verify, progress=not args.quiet)
    threads = args.threads if args.threads is not None else default_threads()
    edge = open_sampler(bundle, args.provider, threads)
    print(f"bundle {bundle.path}: {bundle.kind}, grid {bundle.grid}, k {bundle.k}, {bundle.db.rows} rows "
          f"({'verified' if args.verify else 'sizes checked'}); provider {edge.provider}")
    recorded = bundle.manifest["sampler"]
    if args.strategy is not None and not args.prompt:
        raise ConfigError(f"--strategy {args.strategy}: a strategy says how a --prompt conditions; give --prompt.")
    if args.prompt is not None and not all(t.strip() for t in args.prompt):
        raise ConfigError("--prompt: empty text; give at least one non-empty prompt.")
    if args.prompt and (not bundle.kind_info.diffusion or bundle.text_encoder is None):
        edge.text_encoder()  # the clear error: no text encoder in this bundle
    guidance = bundle.manifest["guidance"] if args.guidance is None else args.guidance
    top_m = bundle.manifest["top_m"] if args.top_m is None else args.top_m
    chunks = sum(-(-min(BATCH, args.n - s) // bundle.max_samples) for s in range(0, args.n, BATCH))
    if not bundle.kind_info.diffusion:
        if args.steps is not None or args.eta or args.sampler is not None:
            raise ConfigError(f"{bundle.path}: an RARM bundle draws its {recorded['num_steps']} code positions one by "
                             "one; --sampler, --steps and --eta are for diffusion bundles. Use --top-k / --temperature.")
        top_k = recorded["top_k"] if args.top_k is None else args.top_k
        temperature = recorded["temperature"] if args.temperature is None else args.temperature
        steps = int(recorded["num_steps"])
        what = f"RARM, {steps} codes, top-k {top_k}, temperature {temperature}"
        def generate(sl: slice, seed: int) -> np.ndarray:
            return edge.generate(sl.stop - sl.start, seed, top_m, guidance, top_k, temperature,
                                 progress=lambda i: bar.update(1))[0]
        bar = progress_bar(steps * chunks, "codes", "pos", args.quiet)
    else:
        if args.top_k is not None or args.temperature is not None:
            raise ConfigError(f"{bundle.path}: a {bundle.kind} bundle is a diffusion model; --top-k and --temperature "
                             "are for RARM bundles. Use --sampler / --steps / --eta.")
        kind = args.sampler or recorded.get("kind", "ddim")
        steps = int(recorded["num_steps"]) if args.steps is None else args.steps
        try:
            calls = len(edge.sampler(steps, args.eta, kind))
        except ValueError as e:
            raise ConfigError(f"--sampler {kind} --steps {steps} --eta {args.eta}: {e}") from None
        what = f"{kind}-{calls}"

        def generate(sl: slice, seed: int) -> np.ndarray:
            prompts = None if not args.prompt else [args.prompt[(sl.start + i) % len(args.prompt)]
                                                    for i in range(len(args.prompt))]  # cycled over all n images
            return edge.generate(sl.stop - sl.start, steps, seed, top_m, guidance, args.eta,
                                 progress=lambda i: bar.update(1), sampler=kind, prompts=prompts,
                                 strategy=args.strategy)[0]
        bar = progress_bar(calls * chunks, "denoise", "step", args.quiet)
    with bar, npy_store(args.npy, args.n) as store:
        images = generate_in_batches(args.n, args.seed, generate, store)
    save_grid(images, args.out)
    if len(images) < args.n:
        print(f"{args.out} shows the first {len(images)} of {args.n} images" +
              (f"; {args.npy} holds all" if args.npy else "; pass --npy to keep all"))
    tm = edge.timings
    cond = f"prompt {args.prompt[0]!r}{' ...' if len(args.prompt) > 1 else ''}" if args.prompt else f"top-m {top_m}"
    print(f"wrote {args.out}: {args.n} images, {what}, guidance {guidance}, {cond}; sampling networks "
          f"{tm.network_s:.3f} s ({tm.network_calls} calls), decode {tm.decode_s:.3f} s, total "
          f"{time.perf_counter() - t0:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("rissole-run", lambda: run(args), "the output grid is written atomically, never half.")


if __name__ == "__main__":
    sys.exit(main())
