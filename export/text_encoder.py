"""The text tower of a joint text-image embedding, for `rissole-run --prompt`: text_encoder.onnx
(input_ids, attention_mask -> unit embedding) and the tokenizer file that makes its ids.

Exported for RDM and kNN-Diffusion bundles whose embedding has a text tower (joint, clip:PATH). Two
checks before the bundle is written: the runtime's tokenizer (the `tokenizers` library on
tokenizer.json, no torch: rissole_runtime.text) gives the same ids as the embedder's own tokenizer,
and the ONNX graph on those ids gives the same vectors as the embedder's embed_texts (PyTorch).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rissole_export.onnx_io import export_onnx
from rissole_export.parity import TOLERANCE, ParityError, check_parity
from rissole_runtime.bundle import TEXT_ENCODER, TOKENIZER

# prompts of the parity check: short and long, punctuation, casing, a word outside any sticker caption
PARITY_PROMPTS = ("a red apple", "Grinning face with big eyes!", "a penguin on skis, drawn as a sticker", "zebra")
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "embedding"


def has_text_tower(spec_embedder: str) -> bool:
    """Embeddings whose embedder embeds text as well as images (rissole.embeddings)."""
    return spec_embedder.partition(":")[0] in ("joint", "clip")


MIN_INT8_COSINE = 0.98  # --text-int8: the worst cosine of an int8 text vector to PyTorch's that is accepted


def export_text_encoder(pipe: Any, out: Path, opset: int, report: list[str], int8: bool = False) -> dict[str, Any]:
    """Write text_encoder.onnx and tokenizer.json into `out`, both checked; returns the manifest section.
    int8: the encoder's MatMul and embedding-table weights quantized per channel (onnxruntime dynamic
    quantization, about 4x smaller), accepted when every parity prompt's vector keeps a cosine of at
    least MIN_INT8_COSINE to PyTorch's."""
    from rissole_runtime.text import Tokenizer

    embedder = pipe.embedder()
    tower = embedder.text_tower()
    shutil.copyfile(tower.tokenizer_file, out / TOKENIZER)
    tok = Tokenizer(out / TOKENIZER, tower.max_tokens)
    own = embedder.text_embedder() if hasattr(embedder, "text_embedder") else embedder  # joint: its MiniLM
    for p in PARITY_PROMPTS:
        want = [int(i) for i in own.tokenizer(p, truncation=True, max_length=tower.max_tokens)["input_ids"]]
        got = tok.encode(p).tolist()
        if want != got:
            raise ParityError(f"{tower.tokenizer_file}: the tokenizers library gives ids {got} for {p!r}, the embedder's "
                              f"tokenizer {want}; the runtime would embed other prompts than `rissole sample`.")
    ids = tok.encode(PARITY_PROMPTS[2])[None]
    mask = np.ones_like(ids)
    module = tower.module.float().eval()
    export_onnx(module, (torch.from_numpy(ids), torch.from_numpy(mask)), out / TEXT_ENCODER, TEXT_INPUTS, TEXT_OUTPUT,
                opset, dynamic={name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS})
    reference = embedder.embed_texts(list(PARITY_PROMPTS))  # the PyTorch path, its own tokenizer and padding
    diff = 0.0
    for i, p in enumerate(PARITY_PROMPTS):
        one = tok.encode(p)[None]
        diff = max(diff, check_parity(out / TEXT_ENCODER, {"input_ids": one, "attention_mask": np.ones_like(one)},
                                      lambda i=i: reference[i : i + 1], TOLERANCE["fp32"], "text encoder"))
    report.append(f"text encoder: onnx.checker ok; tokenizer ids equal on {len(PARITY_PROMPTS)} prompts; onnxruntime "
                  f"vs PyTorch embed_texts max abs diff {diff:.3g} (tolerance {TOLERANCE['fp32']:g})")
    precision = {"precision": "fp32"}
    if int8:
        precision = quantize_text_encoder(out / TEXT_ENCODER, tok, reference)
        report.append(f"text encoder int8: worst cosine to PyTorch {precision['min_cosine_vs_pytorch']:.4f} "
                      f"(accepted >= {MIN_INT8_COSINE}), {precision['bytes_fp32'] / 2**20:.1f} -> "
                      f"{precision['bytes_int8'] / 2**20:.1f} MiB")
    d = int(reference.shape[1])
    return {**precision, "file": TEXT_ENCODER, "tokenizer": TOKENIZER, "max_tokens": tower.max_tokens,
            "inputs": {n: {"shape": ["batch", "tokens"], "dtype": "int64"} for n in TEXT_INPUTS},
            "output": {TEXT_OUTPUT: {"shape": ["batch", d], "dtype": "float32"}},
            "output_is": "unit-length text embedding in the database's space (one prompt per call, no padding)",
            "embedding": pipe.edb.spec.to_dict(), "parity_prompts": list(PARITY_PROMPTS),
            "parity_max_abs": diff, "parity_tolerance": TOLERANCE["fp32"]}


def quantize_text_encoder(path: Path, tok: Any, reference: np.ndarray) -> dict[str, Any]:
    """Replace the fp32 text encoder at `path` by its int8 (weights) version, checked against `reference`."""
    import logging
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rissole_export.parity import cpu_session
    from rissole_runtime.fileio import atomic_path

    fp32_bytes = path.stat().st_size
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="rissole-text-int8-") as tmp:
        q = Path(tmp) / "text_int8.onnx"
        quantize_dynamic(str(path), str(q), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"], per_channel=True)
        sess = cpu_session(q)
        got = np.concatenate([sess.run(None, {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None]})[0]
                              for ids in (tok.encode(p) for p in PARITY_PROMPTS)])
        cosine = float((got * reference).sum(1).min())
        if not cosine >= MIN_INT8_COSINE:
            raise ParityError(f"{path}: the int8 text encoder's vectors fall to cosine {cosine:.4f} of PyTorch's "
                              f"(accepted >= {MIN_INT8_COSINE}); export without --text-int8.")
        with atomic_path(path, suffix=".onnx") as dest:
            dest.write_bytes(q.read_bytes())
    return {"precision": "int8 (dynamic; MatMul and Gather weights, per channel)", "min_cosine_vs_pytorch": cosine,
            "bytes_fp32": fp32_bytes, "bytes_int8": path.stat().st_size}
