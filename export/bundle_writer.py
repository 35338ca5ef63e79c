"""Write an edge bundle (layout: rissole_runtime.bundle) from a RISSOLE, RDM or RARM checkpoint and its database.

One writer for every kind: the kind-specific parts (the eps graph, real parity inputs, which
database ships, the manifest's model section) come from rissole_export.sources; RARM's networks
(context, step, codebook) from rissole_export.rarm_parts. Every ONNX model is checked
(onnx.checker, onnxruntime vs PyTorch on real database rows) before the bundle directory is
swapped in atomically, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from tqdm import tqdm

import rissole
from rissole_runtime.diffusion.solvers import DEVICE_SAMPLER, DEVICE_STEPS, make_sampler
from rissole_runtime.errors import ConfigError, DataError
from rissole_runtime.fileio import BUNDLE, atomic_dir, check_replace, atomic_path, sha256_file, write_json_atomic
from rissole.retrieval.database import BLOCKS_FILE, MANIFEST_FILE, BlockDatabase, open_database
from rissole.retrieval.neighbours import open_table, save_table
from rissole_export.fp16 import convert_to_fp16, count_by_precision
from rissole_export.graphs import DECODER_INPUT, DECODER_OUTPUT, DENOISER_OUTPUT, DecoderGraph
from rissole_export.onnx_io import MIN_OPSET, export_onnx, fp32_nodes, save_onnx
from rissole_export.parity import TOLERANCE, check_parity
from rissole_export.sources import ExportSource, load_source, real_denoiser_inputs, real_latents
from rissole_runtime.bundle import DB_DIR, DECODER, DENOISER, FORMAT, FORMAT_VERSION, MANIFEST, PROPOSAL, TABLE

NETWORK_ROLES = {"denoiser": "denoiser model", "context": "RARM context model", "step": "RARM step model",
                 "codebook": "VQ codebook"}

# scopes whose plain ops stay fp32 under --fp16, besides the normalisation layers (see onnx_io.fp32_nodes)
DENOISER_FP32_ROOTS = ("", "/model")  # the v -> eps conversion and the timestep embedding
DECODER_FP32_SCOPES = ("/vqgan/quantize", "/quantize")  # the codebook search (argmin)


@dataclass
class ExportOptions:
    fp16: bool = False
    opset: int = MIN_OPSET
    max_samples: int = 16  # samples per network call; the batch axis goes up to max_samples * b * 2 (guidance)
    sampler: str = DEVICE_SAMPLER  # diffusion kinds: the default sampler and its network calls
    steps: int = DEVICE_STEPS
    guidance: float = 1.0
    top_m: float = 1.0
    top_k: int = 0  # rarm: default top-k (0 = all codes)
    temperature: float = 1.0  # rarm: default temperature
    int8: bool = False  # diffusion kinds: int8 denoiser, static quantization calibrated on database rows
    int8_calibration_rows: int = 256
    text_encoder: bool = True  # rdm in a text-image space: ship the text tower (rissole_export.text_encoder)
    text_int8: bool = False  # ... with int8 MatMul weights (about 4x smaller)
    link: bool = True  # hard-link blocks.npy when on the same file system (copy otherwise)
    parity_samples: int = 4
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    report: list[str] = field(default_factory=list)
    int8_fp32_path: Path | None = None  # set during an int8 export: the fp32 denoiser the parity compares with


def _versions() -> dict[str, str]:
    return {"rissole": rissole.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _place_blocks(src: Path, dest: Path, link: bool, progress: bool) -> str:
    """Hard-link blocks.npy (no copy, no extra disk) or copy it in chunks; returns which was done."""
    if link:
        try:
            os.link(src, dest)
            return "hard-linked"
        except OSError:
            pass  # another file system or no link support: copy
    size = src.stat().st_size
    with open(src, "rb") as fi, open(dest, "wb") as fo, tqdm(total=size, unit="B", unit_scale=True, desc="copy db",
                                                             disable=not progress) as bar:
        while chunk := fi.read(1 << 22):
            fo.write(chunk)
            bar.update(len(chunk))
    return "copied"


def _write_database(src: BlockDatabase, dest: Path, k: int, retrieval: bool, link: bool, progress: bool) -> tuple[BlockDatabase, str]:
    """The bundle's own block database: blocks.npy, its manifest, and the `database` table cut to k columns."""
    dest.mkdir()
    how = _place_blocks(src.path / BLOCKS_FILE, dest / BLOCKS_FILE, link, progress)
    manifest = {**src.manifest, "labels": None, "exported_from": str(src.path.resolve())}
    write_json_atomic(dest / MANIFEST_FILE, manifest)
    db = open_database(dest)
    if retrieval:
        table = open_table(src, TABLE)
        meta = {key: v for key, v in table.meta.items() if key not in ("name", "shape", "db_sha256")}
        save_table(db, TABLE, np.asarray(table.ids[:, :k]), np.asarray(table.scores[:, :k]), meta)
    return db, how


def _proposal(src: ExportSource) -> tuple[np.ndarray, str]:
    """p_D as the PyTorch pipeline samples pseudo-queries from it (Pipeline.proposal); uniform without a train table."""
    p = src.pipe.proposal()
    if p is None:
        return np.full(src.db.rows, 1.0 / src.db.rows), "uniform (the database has no train table)"
    return p, "p_D from the train neighbour table (RDM Eq. 5)"


def _io_spec(names: list[str], feeds: dict[str, np.ndarray],
             dynamic: dict[str, dict[int, str]] | None = None) -> dict[str, dict[str, Any]]:
    spec = {k: {"shape": ["batch", *feeds[k].shape[1:]], "dtype": str(feeds[k].dtype)} for k in names}
    for name, axes in (dynamic or {}).items():
        for axis, label in axes.items():
            spec[name]["shape"][axis] = label
    return spec


def _maybe_fp16(path: Path, model: onnx.ModelProto, opts: ExportOptions, roots: tuple[str, ...], extra: tuple[str, ...]) -> dict[str, Any]:
    keep = fp32_nodes(model, roots, extra)
    if opts.fp16:
        model = convert_to_fp16(model, keep)
        save_onnx(model, path)
    return {"precision": "fp16" if opts.fp16 else "fp32", "fp32_nodes": sorted(keep) if opts.fp16 else [],
            "weights_by_dtype": count_by_precision(model)}


def export_denoiser(src: ExportSource, path: Path, opts: ExportOptions) -> dict[str, Any]:
    """The eps graph as ONNX, checked against PyTorch on real inputs; returns the manifest's denoiser entry."""
    graph, names = src.graph, src.input_names
    feeds = real_denoiser_inputs(src, opts.parity_samples, opts.seed)
    args = tuple(torch.from_numpy(feeds[k]) for k in names)
    if opts.int8:  # calibrate first: a database too small is refused before any export work
        from rissole_export.int8 import RowCalibration, quantize_denoiser

        calibration = RowCalibration(src, opts.int8_calibration_rows, make_sampler(opts.sampler, src.schedule,
                                                                                   opts.steps).timesteps, seed=opts.seed)
        fp32 = opts.int8_fp32_path  # a temporary directory of write_bundle's, not shipped
        export_onnx(graph, args, fp32, names, DENOISER_OUTPUT, opts.opset, src.dynamic)
        info = {**quantize_denoiser(fp32, path, calibration), "fp32_nodes": []}
        info["weights_by_dtype"] = count_by_precision(onnx.load(str(path)))
    else:
        model = export_onnx(graph, args, path, names, DENOISER_OUTPUT, opts.opset, src.dynamic)
        info = _maybe_fp16(path, model, opts, DENOISER_FP32_ROOTS, ())

    def reference() -> np.ndarray:
        with torch.no_grad():
            return graph(*args).numpy()

    tol = TOLERANCE[info["precision"]]
    what = f"{src.kind} denoiser"
    diff = check_parity(path, feeds, reference, tol, what)
    unit = "real latents" if src.model["num_blocks"] == 1 else "real blocks"
    opts.report.append(f"{what}: onnx.checker ok; onnxruntime vs PyTorch max abs diff {diff:.3g} on "
                       f"{len(feeds['x'])} {unit} (tolerance {tol:g}, {info['precision']})")
    prediction = src.model["prediction"]
    return {"file": DENOISER, "inputs": _io_spec(names, feeds, src.dynamic),
            "output": {DENOISER_OUTPUT: {"shape": ["batch", *feeds["x"].shape[1:]], "dtype": "float32"}},
            "prediction": prediction, "output_is": "eps",
            "eps_conversion": ("none: the model predicts eps" if prediction == "eps" else
                               "in the graph: eps = sqrt(1 - abar[t]) * x + sqrt(abar[t]) * v, abar from `schedule`"),
            "guidance": f"classifier-free: the batch doubled, second half with {src.zero_conditioning}",
            "parity_max_abs": diff, "parity_tolerance": tol, **info}


def export_decoder(src: ExportSource, path: Path, opts: ExportOptions) -> dict[str, Any]:
    """The VQ decoder as ONNX, checked against PyTorch on real latents; returns the manifest's decoder entry."""
    graph = DecoderGraph(src.vqgan).eval()
    latents = real_latents(src, max(2, opts.parity_samples), opts.seed + 1)
    x = torch.from_numpy(latents)
    model = export_onnx(graph, (x,), path, [DECODER_INPUT], DECODER_OUTPUT, opts.opset)
    info = _maybe_fp16(path, model, opts, ("",), DECODER_FP32_SCOPES)

    def reference() -> np.ndarray:
        with torch.no_grad():
            return graph(x).numpy()

    tol = TOLERANCE[info["precision"]]
    diff = check_parity(path, {DECODER_INPUT: latents}, reference, tol, "VQ decoder")
    opts.report.append(f"decoder: onnx.checker ok; onnxruntime vs PyTorch max abs diff {diff:.3g} on "
                       f"{len(latents)} real latents (tolerance {tol:g}, {info['precision']})")
    out_shape = list(reference().shape[1:])
    return {"file": DECODER, "inputs": {DECODER_INPUT: {"shape": ["batch", *latents.shape[1:]], "dtype": "float32"}},
            "output": {DECODER_OUTPUT: {"shape": ["batch", *out_shape], "dtype": "float32"}},
            "input_is": "unscaled latents (divide the sampler's output by scale_factor)",
            "output_range": [-1.0, 1.0], "to_uint8": "round((clip(x, -1, 1) + 1) * 127.5)",
            "parity_max_abs": diff, "parity_tolerance": tol, **info}


def _export_networks(src: ExportSource, out: Path, opts: ExportOptions) -> dict[str, dict[str, Any]]:
    """The kind's networks, written into `out` and checked: {manifest section: entry with its "file"}."""
    if src.diffusion:
        return {"denoiser": export_denoiser(src, out / DENOISER, opts)}
    from rissole_export.rarm_parts import export_rarm

    def fp16(path: Path, model: onnx.ModelProto, roots: tuple[str, ...]) -> dict[str, Any]:
        return _maybe_fp16(path, model, opts, roots, ())

    return export_rarm(src, out, fp16, opts.opset, opts.parity_samples, opts.seed, opts.report)


def _text_encoder(src: ExportSource, out: Path, opts: ExportOptions) -> dict[str, Any] | None:
    """RDM (and kNN-Diffusion) in a text-image space: the text tower for `rissole-run --prompt`, else None."""
    from rissole_export.text_encoder import export_text_encoder, has_text_tower

    if src.kind != "rdm" or not has_text_tower(src.model["embedding"]["embedder"]) or not opts.text_encoder:
        return None
    return export_text_encoder(src.pipe, out, opts.opset, opts.report, opts.text_int8)


def _file_entry(path: Path, role: str, sha: str | None = None) -> dict[str, Any]:
    return {"role": role, "bytes": path.stat().st_size, "sha256": sha or sha256_file(path)}


def write_bundle(ckpt: str | os.PathLike, out: str | os.PathLike, db: str | os.PathLike | None = None,
                 vqgan: str | os.PathLike | None = None, opts: ExportOptions | None = None) -> dict[str, Any]:
    """Export `ckpt` (RISSOLE, RDM or RARM, with its database and VQ-GAN) into the bundle directory `out`;
    returns the manifest. `db` is the block database (RISSOLE) or the embedding database (RDM, RARM)."""
    opts = opts or ExportOptions()
    out = Path(out)
    check_replace(out, BUNDLE, opts.overwrite)  # before the (slow) load; atomic_dir checks again under its lock
    src = load_source(ckpt, db=db, vqgan=vqgan)
    if opts.int8 and (opts.fp16 or not src.diffusion):
        raise ConfigError("--int8 quantizes a diffusion denoiser (RISSOLE, RDM) from fp32; "
                          + ("drop --fp16." if opts.fp16 else f"a {src.kind} bundle has none."))
    if not opts.int8:
        return _write_bundle(ckpt, out, src, opts)
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="rissole-int8-"))
    opts.int8_fp32_path = tmp / "denoiser.fp32.onnx"
    try:
        return _write_bundle(ckpt, out, src, opts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_bundle(ckpt: str | os.PathLike, out: Path, src: ExportSource, opts: ExportOptions) -> dict[str, Any]:
    src_db = src.db
    b = int(src.model["num_blocks"])
    with atomic_dir(out, BUNDLE, force=opts.overwrite) as tmp:
        networks = _export_networks(src, tmp, opts)
        decoder = export_decoder(src, tmp / DECODER, opts)
        bundle_db, how = _write_database(src_db, tmp / DB_DIR, src.table_k, src.retrieval, opts.link, opts.progress)
        opts.report.append(f"database: {src_db.rows} rows {how} from {src_db.path}")
        proposal, proposal_source = _proposal(src)
        with atomic_path(tmp / PROPOSAL, suffix=".npy") as p, open(p, "wb") as f:
            np.save(f, proposal.astype(np.float64))
        text = _text_encoder(src, tmp, opts)
        files = {sec["file"]: _file_entry(tmp / sec["file"], NETWORK_ROLES[name]) for name, sec in networks.items()}
        if text is not None:
            files.update({text["file"]: _file_entry(tmp / text["file"], "text encoder model"),
                          text["tokenizer"]: _file_entry(tmp / text["tokenizer"], "text tokenizer")})
        files.update({DECODER: _file_entry(tmp / DECODER, "VQ decoder model"),
                      PROPOSAL: _file_entry(tmp / PROPOSAL, "proposal p_D"),
                      f"{DB_DIR}/{BLOCKS_FILE}": _file_entry(tmp / DB_DIR / BLOCKS_FILE, src.database_role,
                                                             bundle_db.manifest["sha256"]),
                      f"{DB_DIR}/{MANIFEST_FILE}": _file_entry(tmp / DB_DIR / MANIFEST_FILE,
                                                               f"{src.database_role} manifest")})
        for f in sorted((tmp / DB_DIR / "neighbours").glob("*")):
            files[f"{DB_DIR}/neighbours/{f.name}"] = _file_entry(f, "neighbour table")
        if src.diffusion:
            smp = make_sampler(opts.sampler, src.schedule, opts.steps)
            sampler = {"kind": opts.sampler, "num_steps": len(smp), **getattr(smp, "to_dict", dict)(),
                       "timesteps": smp.timesteps.tolist()}
        else:
            sampler = {"kind": "tokens", "num_steps": int(src.model["seq_len"]), "top_k": opts.top_k,
                       "temperature": opts.temperature}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {"checkpoint": str(Path(ckpt).resolve()), "step": int(src.config.get("step", 0)),
                       "vqgan_hash": src.config["vqgan_hash"]},
            "model": src.model,
            **networks, "decoder": decoder, **({"text_encoder": text} if text is not None else {}),
            "scale_factor": src.scale_factor,
            "schedule": src.schedule.to_dict() if src.schedule is not None else None,
            "sampler": sampler,
            "guidance": opts.guidance, "top_m": opts.top_m,
            "batch": {"max_samples": opts.max_samples, "min": b, "opt": opts.max_samples * b,
                      "max": opts.max_samples * b * 2},
            "database": {"dir": DB_DIR, "rows": src_db.rows, "dtype": src_db.dtype_name(),
                         "sha256": src_db.manifest["sha256"], "table": TABLE if src.retrieval else None,
                         "proposal": PROPOSAL, "proposal_source": proposal_source},
            "opset": opts.opset, "versions": _versions(), "files": files,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        if opts.int8 and src.diffusion:  # the sample-level figure: fp32 vs int8 images from the same noise
            from rissole_export.int8 import sample_parity

            manifest["denoiser"]["sample_parity_vs_fp32"] = sample_parity(tmp, opts.int8_fp32_path)
            write_json_atomic(tmp / MANIFEST, manifest)
            p = manifest["denoiser"]["sample_parity_vs_fp32"]
            opts.report.append(f"int8 vs fp32 denoiser, {p['images']} images ({p['sampler']}, same rows and noise): "
                               f"max pixel difference {p['max_abs_pixel_diff']}, mean {p['mean_abs_pixel_diff']:.2f} "
                               f"grey levels")
    return manifest


def bundle_size(path: str | os.PathLike, with_database: bool = False) -> int:
    """Bytes of the bundle's files (without db/ unless asked): what must ship besides the database."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()
               and (with_database or DB_DIR not in f.relative_to(path).parts))
