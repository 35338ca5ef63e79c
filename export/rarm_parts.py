"""RARM's networks in a bundle: context.onnx, step.onnx and the VQ codebook, each checked against PyTorch.

RARM samples code by code, so where a diffusion bundle has one denoiser the RARM bundle has two
graphs (rissole_export.graphs): the neighbours' cross-attention keys/values, run once per sample,
and one decoding position (the key-value cache in, its new slot out), run seq_len times. The codebook
(vocab, c) turns the drawn codes into latents for the same decoder.onnx as the diffusion kinds
(the decoder's quantiser maps a codebook vector to itself).

Parity is checked the way the runtime uses the graphs: real neighbour embeddings (and their zero
copy, the guidance half) through context.onnx, then real code sequences teacher-forced through
step.onnx position by position, every position's logits against the PyTorch forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from rissole_runtime.diffusion.guidance import with_zeros
from rissole.heads.rarm.codes import code_indices
from rissole_export.graphs import (CONTEXT_INPUTS, STEP_OUTPUTS, RARMContextGraph, RARMStepGraph,
                                   rarm_context_outputs, rarm_step_inputs)
from rissole_export.onnx_io import export_onnx
from rissole_export.parity import TOLERANCE, ParityError, check_parity, cpu_session, scaled_tolerance
from rissole_export.sources import ExportSource, real_neighbour_embeddings
from rissole_runtime.bundle import CODEBOOK, CONTEXT, STEP
from rissole_runtime.token_sampler import KVCache, context_feeds

RARM_FP32_ROOTS = ("",)  # the position mask, the attention arithmetic, the embeddings: ops at the graph root


def codebook(src: ExportSource) -> np.ndarray:
    """(vocab, c) float32: the VQ-GAN's codebook, in the order of RARM's code indices."""
    return src.vqgan.quantize.embedding.weight.detach().float().cpu().numpy().copy()


def _step_parity(path: Path, cross: dict[str, np.ndarray], inputs: np.ndarray, reference: np.ndarray,
                 model: dict[str, Any], tolerance: float) -> float:
    """Teacher-forced step.onnx over every position, the runtime's cache handling, vs PyTorch's logits (B, L, V)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ParityError(f"{path}: onnx.checker rejects the exported RARM step: {exc}") from exc
    sess = cpu_session(path)
    cache = KVCache(model, len(inputs))
    diff = 0.0
    for pos in range(inputs.shape[1]):
        feed = {"token": inputs[:, pos], "pos": np.full(len(inputs), pos, dtype=np.int64), **cache.arrays, **cross}
        logits, kv_new = sess.run(None, feed)
        cache.write(kv_new, pos)
        diff = max(diff, float(np.abs(logits.astype(np.float64) - reference[:, pos]).max()))
    if not diff <= tolerance:
        raise ParityError(f"{path}: onnxruntime and PyTorch logits differ by {diff:.3g} (max abs over all "
                          f"{inputs.shape[1]} positions, real codes) for the RARM step, above the tolerance "
                          f"{tolerance:g}. Report the model configuration; try another --opset.")
    return diff


def export_rarm(src: ExportSource, out: Path, fp16: Callable[[Path, onnx.ModelProto, tuple[str, ...]], dict[str, Any]],
                opset: int, samples: int, seed: int, report: list[str]) -> dict[str, dict[str, Any]]:
    """Write context.onnx, step.onnx and codebook.npy into `out`; returns their manifest sections.
    `fp16(path, model, roots)` converts a written model when the export asks for it (bundle_writer)."""
    net = src.pipe.model.float().eval()
    model = src.model
    depth = int(model["depth"])
    ctx_names, step_names = rarm_context_outputs(depth), rarm_step_inputs(depth)
    ctx_graph, step_graph = RARMContextGraph(net).eval(), RARMStepGraph(net).eval()
    nb = real_neighbour_embeddings(src, samples, seed)
    nb2 = with_zeros(nb)  # the conditional rows and their guidance half
    with torch.no_grad():
        cross_t = ctx_graph(torch.from_numpy(nb2))
    ctx_info = fp16(out / CONTEXT, export_onnx(ctx_graph, (torch.from_numpy(nb2),), out / CONTEXT, CONTEXT_INPUTS,
                                               ctx_names, opset), RARM_FP32_ROOTS)
    tol = TOLERANCE[ctx_info["precision"]]
    ctx_diff = check_parity(out / CONTEXT, {"neighbours": nb2}, lambda: [c.numpy() for c in cross_t], tol,
                            "RARM context")
    cross = context_feeds(cpu_session(out / CONTEXT), nb2)  # what the runtime feeds the step

    book = codebook(src)
    rows = np.random.default_rng(seed).choice(src.db.rows, size=samples, replace=False)
    codes = np.tile(code_indices(src.pipe.edb.latents(rows), torch.from_numpy(book)), (2, 1))
    inputs = net.shift_right(torch.from_numpy(codes))
    empty = KVCache(model, len(inputs)).arrays
    caches = [torch.from_numpy(empty[n]) if n.startswith("self_") else cross_t[ctx_names.index(n)]
              for n in step_names[2:]]
    trace = (inputs[:, 0], torch.zeros(len(inputs), dtype=torch.long), *caches)
    step_info = fp16(out / STEP, export_onnx(step_graph, trace, out / STEP, step_names, STEP_OUTPUTS, opset),
                     RARM_FP32_ROOTS)
    with torch.no_grad():
        reference = net(inputs, torch.from_numpy(nb2)).double().numpy()
    step_tol = scaled_tolerance(step_info["precision"], reference)
    step_diff = _step_parity(out / STEP, cross, inputs.numpy(), reference, model, step_tol)
    with open(out / CODEBOOK, "wb") as f:
        np.save(f, book)
    report.append(f"rarm context: onnx.checker ok; onnxruntime vs PyTorch max abs diff {ctx_diff:.3g} on "
                  f"{len(nb2)} real neighbour sets (tolerance {tol:g}, {ctx_info['precision']})")
    report.append(f"rarm step: onnx.checker ok; logits max abs diff {step_diff:.3g} over {inputs.shape[1]} positions "
                  f"of {len(inputs)} real code sequences, teacher-forced (tolerance {step_tol:g}, "
                  f"{step_info['precision']})")

    def spec(a: np.ndarray | torch.Tensor) -> dict[str, Any]:
        return {"shape": ["batch", *a.shape[1:]], "dtype": str(a.dtype).replace("torch.", "")}

    step_in = {"token": spec(inputs[:, 0]), "pos": spec(inputs[:, 0]),
               **{n: spec(empty[n]) for n in step_names if n.startswith("self_")},
               **{n: spec(cross[n]) for n in step_names if n.startswith("cross_")}}
    return {
        "context": {"file": CONTEXT, "inputs": {"neighbours": spec(nb)},
                    "outputs": {n: spec(cross[n]) for n in ctx_names},
                    "guidance": "classifier-free on the log-probabilities: the batch doubled, second half with "
                                f"{src.zero_conditioning}",
                    "parity_max_abs": ctx_diff, "parity_tolerance": tol, **ctx_info},
        "step": {"file": STEP, "inputs": {n: step_in[n] for n in step_names},
                 "outputs": {"logits": {"shape": ["batch", int(model["vocab_size"])], "dtype": "float32"},
                             "kv_new": {"shape": ["batch", depth, 2, int(model["num_heads"]), 1,
                                                  int(model["head_dim"])], "dtype": "float32"}},
                 "cache": "self_k{i} (keys transposed) / self_v{i} start as zeros; after each position write kv_new "
                          "[:, i, 0] / [:, i, 1] into slot pos; slots >= pos are ignored",
                 "parity_max_abs": step_diff, "parity_tolerance": step_tol,
                 "parity_over": "every position of real code sequences, teacher-forced, conditional and zero halves",
                 **step_info},
        "codebook": {"file": CODEBOOK, "shape": list(book.shape), "dtype": "float32",
                     "to_latents": "codebook[codes] (n, h*w, c), raster order -> (n, c, h, w), unscaled, into "
                                   "decoder.onnx"},
    }
