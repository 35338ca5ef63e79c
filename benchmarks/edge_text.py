"""Text prompts on the edge: `rissole-run --prompt` of a kNN-Diffusion bundle (text encoder ONNX, exact
search over the memory-mapped index, the denoiser) against PyTorch sampling of the same prompt.

    python -m benchmarks.edge_text --threads 1      # writes benchmarks/results/edge_text.json

Figures, one thread for torch and onnxruntime alike: the text encoder's parity (recorded by the export),
the max pixel difference runtime vs PyTorch for the same prompts, conditioning rows and noise (DDIM-50
and DPM-Solver++(2M)-15), whole-sample latency for 1 and 16 images (prompt embedding + search +
sampling + decoding, median of --repeats, with the text encoder's and the search's share), the peak RSS
of a fresh `rissole-run -n 16 --prompt` process, and the bundle size without the index.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red apple", "a smiling face", "a green tree", "a yellow star"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(ROOT / "checkpoints/knn-stickers-joint"), help="kNN-Diffusion checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed whole-sample runs (median)")
    ap.add_argument("--work", default=None, help="scratch directory for the bundle (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/edge_text.json"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks._machine import machine_info
    from benchmarks.edge import interleaved, peak_rss_mb
    from rissole.heads.pipeline import SamplingOptions
    from rissole.heads.registry import load_pipeline
    from rissole.paths import ensure_database_for
    from rissole_export.bundle_writer import ExportOptions, bundle_size, write_bundle
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.fileio import write_json_atomic
    from rissole_runtime.sampler import EdgeSampler

    ensure_database_for(args.ckpt)
    work = Path(args.work or tempfile.mkdtemp(prefix="rissole-edge-text-"))
    bundle = work / "bundle"
    opts = ExportOptions(overwrite=True, progress=False, sampler="dpmpp2m", steps=15, guidance=2.0)
    manifest = write_bundle(args.ckpt, bundle, opts=opts)
    print("\n".join(opts.report), flush=True)
    pipe = load_pipeline(args.ckpt, device="cpu")
    edge = EdgeSampler(open_bundle(bundle), "cpu", args.threads)
    te = manifest["text_encoder"]
    res: dict[str, object] = {
        "benchmark": "edge_text", "machine": machine_info(), "checkpoint": args.ckpt, "threads": args.threads,
        "command": f"python -m benchmarks.edge_text --threads {args.threads}", "prompts": PROMPTS,
        "text_encoder_parity_max_abs": te["parity_max_abs"], "text_encoder_parity_prompts": te["parity_prompts"],
        "bundle_mb_without_index": bundle_size(bundle) / 2**20,
        "text_encoder_mb": (bundle / te["file"]).stat().st_size / 2**20,
        "index_rows": manifest["database"]["rows"], "parity": {}, "latency": {}}
    for sampler, steps in (("ddim", 50), ("dpmpp2m", 15)):
        o = SamplingOptions(prompt=tuple(PROMPTS), sampler=sampler, steps=steps, guidance=2.0, seed=0)
        ref, _ = pipe.sample(16, o)
        got, _ = edge.generate(16, steps, 0, guidance=2.0, sampler=sampler, prompts=PROMPTS)
        diff = np.abs(got.astype(int) - ref.astype(int))
        res["parity"][f"{sampler}-{steps}"] = {"images": 16, "max_abs_pixel_diff": int(diff.max()),
                                               "share_pixels_equal": float((diff == 0).mean())}
        print(f"parity {sampler}-{steps}: max {int(diff.max())}, equal {float((diff == 0).mean()):.4f}", flush=True)
    for n in (1, 16):
        prompts = PROMPTS[:n] if n < len(PROMPTS) else PROMPTS

        def whole() -> np.ndarray:
            return edge.generate(n, 15, 0, guidance=2.0, sampler="dpmpp2m", prompts=prompts)[0]

        def encode_only() -> np.ndarray:
            return edge.text_encoder().embed(prompts)

        def condition_only() -> np.ndarray:
            return edge.prompt_neighbours(prompts, n)[1]

        med = interleaved({"whole": whole, "text_encoder": encode_only, "text_and_search": condition_only}, args.repeats)
        res["latency"][f"n{n}"] = {"whole_sample_s": med["whole"], "ms_per_image": med["whole"] / n * 1e3,
                                   "text_encoder_s": med["text_encoder"], "text_encoder_and_search_s": med["text_and_search"],
                                   "sampler": "dpmpp2m-15, guidance 2"}
        print(f"latency n={n}: {res['latency'][f'n{n}']}", flush=True)
    # --text-int8: the same bundle with an int8 text encoder; does retrieval change on held-out captions?
    from benchmarks.knn_diffusion import sticker_split

    b8 = work / "bundle-text-int8"
    write_bundle(args.ckpt, b8, opts=ExportOptions(overwrite=True, progress=False, sampler="dpmpp2m", steps=15,
                                                   guidance=2.0, text_int8=True))
    e8 = EdgeSampler(open_bundle(b8), "cpu", args.threads)
    captions = sticker_split("val")[1]
    k = edge.bundle.k
    ids32 = edge.prompt_neighbours(captions, len(captions), "neighbours")[0]
    ids8 = e8.prompt_neighbours(captions, len(captions), "neighbours")[0]
    overlap = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(ids32, ids8)]))
    v32, v8 = edge.text_encoder().embed(captions), e8.text_encoder().embed(captions)
    a8 = e8.generate(16, 15, 0, guidance=2.0, sampler="dpmpp2m", prompts=PROMPTS)[0]
    a32 = edge.generate(16, 15, 0, guidance=2.0, sampler="dpmpp2m", prompts=PROMPTS)[0]
    res["text_int8"] = {"text_encoder_mb": (b8 / te["file"]).stat().st_size / 2**20,
                        "bundle_mb_without_index": bundle_size(b8) / 2**20,
                        "captions": len(captions), "neighbours_overlap_at_k": overlap, "k": k + 1,
                        "min_cosine_to_fp32": float((v32 * v8).sum(1).min()),
                        "mean_cosine_to_fp32": float((v32 * v8).sum(1).mean()),
                        "max_abs_pixel_diff_vs_fp32_16_images": int(np.abs(a8.astype(int) - a32.astype(int)).max()),
                        "share_images_identical": float(np.mean([(x == y).all() for x, y in zip(a8, a32)]))}
    print(f"text int8: {res['text_int8']}", flush=True)
    mb, line = peak_rss_mb(bundle, 16, args.threads, extra=("--prompt", *PROMPTS))
    res["peak_rss_mb_16_images_prompt"] = mb
    res["runtime_line"] = line
    print(f"peak RSS rissole-run -n 16 --prompt: {mb:.0f} MB", flush=True)
    write_json_atomic(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
