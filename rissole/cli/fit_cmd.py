"""`rissole fit`: from a folder of a user's images to a trained generator, one resumable command.

The chain is the one the README walks through by hand (VQ-GAN -> encode -> block database ->
neighbour tables -> RISSOLE, or RDM / RARM on the same latents), run as the ordinary `rissole`
subcommands so that RUN/commands.sh can repeat any stage by hand. Configs come from a preset
(configs/presets/) resolved against the data (channels, resolution, latent shape) and are written to
RUN/configs/; a stage whose output exists and was made from the same inputs is skipped, a training
stage with a checkpoint resumes. The summary (RUN/summary.json) holds per-stage wall times, the
reconstruction PSNR and colour error on the held-out split, and the sample FID against the held-out
split beside the FID of real held-out vs real training images at the same N.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from rissole.errors import ConfigError, DataError
from rissole_runtime import argtypes as at

PRESET_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "presets"
PRESETS = ("fmnist32", "rgb32", "rgb64-f8")
HEAD_TEMPLATES = {  # head -> the repository config its non-data settings come from (rissole: the preset's)
    "rdm": "configs/rdm/fmnist_vq.yaml",
    "rarm": "configs/rarm/fmnist_vq.yaml",
}
IGNORED_KEYS = ("kind", "format_version", "step")


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "fit",
        help="from a folder of your images to a trained generator: VQ-GAN -> encode -> block database -> neighbour "
        "tables -> RISSOLE (or --head rdm|rarm), then samples, a retrieval figure and FID; resumable",
        description="Each stage runs the ordinary rissole subcommand (listed in RUN/commands.sh), is skipped when its "
        "output exists and was made from the same inputs, and resumes a training stage from its checkpoint.",
    )
    f.add_argument("source", help="your images: folder:PATH or a directory PATH (PNG/JPEG, searched recursively); "
                                  "a seeded hash of each path splits it into train (95%%) and val (5%%)")
    f.add_argument("--out", required=True, help="run directory (configs/, vqgan/, latents/, db/, HEAD/, summary.json)")
    f.add_argument("--preset", default=None,
                   help=f"one of {', '.join(PRESETS)} or a preset YAML file (default: rgb32 for colour images, fmnist32 "
                        "for grey ones); channels always come from the data")
    f.add_argument("--head", choices=("rissole", "rdm", "rarm"), default="rissole", help="the generator to train")
    f.add_argument("--vqgan-steps", type=at.positive_int, default=None, help="override the preset's VQ-GAN training steps")
    f.add_argument("--head-steps", type=at.positive_int, default=None, help="override the preset's generator training steps")
    f.add_argument("--set", nargs="*", default=[], metavar="STAGE.KEY=VALUE",
                   help="override resolved config entries, e.g. vqgan.train.lr=5e-4 head.model.k=5")
    f.add_argument("--samples", type=at.positive_int, default=64, help="images in RUN/samples.png")
    f.add_argument("--fid-n", type=at.non_negative_int, default=None,
                   help="N of the FID on the held-out split (default: min(2000, held-out images)); 0 skips FID")
    f.set_defaults(func=_fit)


def _folder(source: str) -> Path:
    path = Path(source[len("folder:"):] if source.startswith("folder:") else source)
    for split in (":train", ":val", ":all"):
        if str(path).endswith(split):
            raise DataError(f"{source}: give the folder without a split; rissole fit uses its train and val splits.")
    if not path.is_dir():
        raise DataError(f"{path}: not a directory. Pass a folder of PNG/JPEG images (folder:PATH or PATH).")
    return path.resolve()


def load_preset(name: str | None, channels: int) -> tuple[str, dict[str, Any]]:
    """(name, preset dict): a named preset, a YAML file, or the default for the data's channels."""
    from rissole.config import load_config

    if name is None:
        name = "rgb32" if channels == 3 else "fmnist32"
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset {name!r}: {path} not found; expected one of {', '.join(PRESETS)} or a YAML file.")
    preset = load_config(path)
    for key in ("resolution", "grid", "vqgan", "rissole"):
        if key not in preset:
            raise ConfigError(f"{path}: a preset needs the key {key!r} (see configs/presets/rgb32.yaml).")
    return name, preset


def resolve_configs(preset: dict[str, Any], folder: Path, channels: int, run: Path, head: str,
                    vqgan_steps: int | None, head_steps: int | None, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """The VQ-GAN and generator configs of this run, with every data-derived value filled in."""
    from rissole.autoencoder.vqgan import VQGANConfig
    from rissole.config import apply_overrides, load_config

    vq = copy.deepcopy(preset["vqgan"])
    dd = vq["model"]["ddconfig"]
    dd.update(in_channels=channels, out_ch=channels, resolution=int(preset["resolution"]))
    vq["data"] = {"source": f"folder:{folder}:train", "val_source": f"folder:{folder}:val", "data_dir": None, "limit": None}
    if vqgan_steps is not None:  # the adversarial term starts at the same fraction of the run as the preset's
        tc = vq["train"]
        if tc.get("disc_start") is not None:
            tc["disc_start"] = int(round(tc["disc_start"] * vqgan_steps / tc["steps"]))
        tc["steps"] = vqgan_steps
    latent_c, latent_s, _ = VQGANConfig.from_dict(vq["model"]).latent_shape
    if head == "rissole":
        hc = copy.deepcopy(preset["rissole"])
        hc["model"].update(latent_channels=latent_c, latent_size=latent_s, grid=int(preset["grid"]))
        hc["data"] = {"db": str(run / "db"), "table": "train", "latents": None, "vqgan": str(run / "vqgan" / "final")}
    else:
        hc = load_config(PRESET_DIR.parent.parent / HEAD_TEMPLATES[head])
        hc["model"].update(context_tokens=latent_s * latent_s, context_token_dim=latent_c)
        if head == "rdm":
            hc["model"].update(latent_channels=latent_c, latent_size=latent_s)
        else:
            hc["model"].update(vocab_size=vq["model"]["n_embed"], seq_len=latent_s * latent_s)
        hc["data"] = {"db": str(run / "emb-db"), "table": "train", "vqgan": str(run / "vqgan" / "final")}
    if head_steps is not None:
        hc["train"]["steps"] = head_steps
    configs = {"vqgan": vq, "head": hc}
    for item in overrides:
        stage, _, rest = item.partition(".")
        if stage not in configs or not rest:
            raise ConfigError(f"--set {item}: expected STAGE.KEY=VALUE with STAGE vqgan or head (e.g. head.train.lr=1e-4).")
        configs[stage] = apply_overrides(configs[stage], [rest])
    return configs


def _same_config(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Top-level sections that differ (kind/step bookkeeping aside)."""
    keys = (set(saved) | set(wanted)) - set(IGNORED_KEYS)
    return sorted(k for k in keys if saved.get(k) != wanted.get(k))


def _write_config(path: Path, cfg: dict[str, Any]) -> None:
    """Write a resolved config; an existing one made for other settings is refused (its outputs would not match)."""
    import yaml

    from rissole.fileio import write_text_atomic

    if path.is_file():
        differs = _same_config(yaml.safe_load(path.read_text()) or {}, cfg)
        if differs:
            raise ConfigError(
                f"{path}: this run was started with other settings (sections {', '.join(differs)} differ); its "
                f"outputs do not match them. Use a new --out, or delete {path.parent.parent} to start over."
            )
        return
    write_text_atomic(path, yaml.safe_dump(cfg, sort_keys=False))


def _contains(saved: Any, wanted: Any) -> bool:
    """Whether `saved` holds every entry of `wanted` with the same value (trainers add defaults and derived keys)."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        return all(k in saved and _contains(saved[k], v) for k, v in wanted.items())
    return saved == wanted


def _final_matches(run_dir: Path, cfg: dict[str, Any]) -> bool:
    """A training stage is done when RUN/STAGE/final was trained to the last step from this config."""
    from rissole.config import load_config

    final = run_dir / "final" / "config.yaml"
    if not final.is_file():
        return False
    saved = load_config(final)
    return _contains(saved, cfg) and saved.get("step") == cfg["train"]["steps"]


def _manifest_records(path: Path, **expect: Any) -> bool:
    if not path.is_file():
        return False
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(m, dict) and all(m.get(k) == v for k, v in expect.items())


class Stages:
    """Runs rissole subcommands in-process, logging each to RUN/commands.sh and timing it."""

    def __init__(self, run: Path) -> None:
        self.run, self.times, self.commands = run, {}, []

    def __call__(self, name: str, argv: list[str], done: bool) -> None:
        from rissole.cli.main import main

        self.commands.append(f"# {name}\nrissole {' '.join(shlex.quote(a) for a in argv)}")
        self._write_commands()
        if done:
            print(f"[fit] {name}: output exists and matches, skipped")
            self.times[name] = {"skipped": True}
            return
        print(f"[fit] {name}: rissole {' '.join(argv)}")
        t0 = time.perf_counter()
        rc = main(argv)
        self.times[name] = {"seconds": round(time.perf_counter() - t0, 1)}
        if rc != 0:
            raise DataError(f"rissole fit: stage {name} failed (exit {rc}); fix what it said and rerun the same "
                            f"`rissole fit` command: finished stages are skipped.")

    def _write_commands(self) -> None:
        from rissole.fileio import write_text_atomic

        write_text_atomic(self.run / "commands.sh", "#!/usr/bin/env bash\n# the stages `rissole fit` ran, in order\n"
                          "set -euo pipefail\n" + "\n".join(self.commands) + "\n")


def _train_argv(config_path: Path, out: Path) -> list[str]:
    argv = ["train", "--config", str(config_path), "--out", str(out)]
    return argv + ["--resume"] if (out / "checkpoint" / "config.yaml").is_file() else argv


def reconstruction_report(vqgan_dir: Path, val_spec: str, size: int, channels: int, limit: int = 1000) -> dict[str, float]:
    """PSNR and colour of the first stage on held-out images: the mean distance of a pixel from grey
    (`grey_distance`) in the data and in the reconstructions, and the mean absolute pixel error."""
    import numpy as np
    import torch

    from rissole.autoencoder import load_vqgan
    from rissole.autoencoder.losses import grey_distance, psnr
    from rissole.data import from_model_range, load_source, to_model_range

    vq = load_vqgan(vqgan_dir).eval()
    images = load_source(val_spec, size=size, channels=channels, limit=limit).images
    psnrs, rec_grey, data_grey, mae = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(images), 128):
            x = to_model_range(images[start:start + 128])
            xrec = vq(x)[0].clamp(-1, 1)
            psnrs.append(psnr(xrec, x))
            if channels == 3:
                rec_grey.append(grey_distance(xrec))
                data_grey.append(grey_distance(x))
                mae.append((from_model_range(xrec).astype(np.int16) - images[start:start + 128]).__abs__().mean((1, 2, 3)))
    out = {"val_images": int(len(images)), "psnr_db": float(torch.cat(psnrs).mean())}
    if channels == 3:
        out.update(colour_from_grey_data=float(torch.cat(data_grey).mean()),
                   colour_from_grey_reconstructions=float(torch.cat(rec_grey).mean()),
                   pixel_mae=float(np.concatenate(mae).mean()))
    return out


def _fit(args: argparse.Namespace) -> int:
    from rissole.checkpoint import load_checkpoint
    from rissole.data import ImageFolder, source_channels
    from rissole.fileio import write_json_atomic

    folder = _folder(args.source)
    run = Path(args.out).resolve()
    channels = source_channels(f"folder:{folder}:train")
    name, preset = load_preset(args.preset, channels)
    n_train = len(ImageFolder(folder, split="train"))
    n_val = len(ImageFolder(folder, split="val"))
    print(f"[fit] {folder}: {n_train} training and {n_val} held-out images, "
          f"{'colour' if channels == 3 else 'grey'}; preset {name}; head {args.head}")
    configs = resolve_configs(preset, folder, channels, run, args.head, args.vqgan_steps, args.head_steps, args.set)
    (run / "configs").mkdir(parents=True, exist_ok=True)
    vq_cfg, head_cfg = run / "configs" / "vqgan.yaml", run / "configs" / f"{args.head}.yaml"
    _write_config(vq_cfg, configs["vqgan"])
    _write_config(head_cfg, configs["head"])
    stage = Stages(run)
    size = int(preset["resolution"])
    train_spec, val_spec = f"folder:{folder}:train", f"folder:{folder}:val"

    vq_run = run / "vqgan"
    vq_argv = ["vqgan", "train", "--config", str(vq_cfg), "--out", str(vq_run)]
    if (vq_run / "checkpoint" / "config.yaml").is_file():
        vq_argv.append("--resume")
    stage("vqgan", vq_argv, _final_matches(vq_run, configs["vqgan"]))
    vq_hash = load_checkpoint(vq_run / "final").weights_hash()

    latents = run / "latents" / "train.npy"
    stage("encode", ["encode", "--ckpt", str(vq_run / "final"), "--source", train_spec, "--out", str(latents),
                     "--force"],  # --force: a stale run's own latents are remade (nothing else is replaced)
          _manifest_records(latents.with_suffix(".json"), checkpoint_hash=vq_hash, source=train_spec))

    if args.head == "rissole":
        db = run / "db"
        stage("db build", ["db", "build", str(latents), "--out", str(db), "--grid", str(preset["grid"]),
                          "--force"],
              _manifest_records(db / "manifest.json", checkpoint_hash=vq_hash, grid=int(preset["grid"])))
        stage("db neighbours", ["db", "neighbours", str(db), "-k", "20"],
              _manifest_records(db / "neighbours" / "train.json", k=20))
    else:
        db = run / "emb-db"
        stage("embed", ["embed", str(latents), "--embedder", "vq", "--out", str(run / "emb" / "train-vq.npy"),
                        "--db", str(db), "--force"], (db / "manifest.json").is_file())
        stage("db neighbours", ["db", "neighbours", str(db), "--backend", "exact", "--keys", "latent", "-k", "20"],
              _manifest_records(db / "neighbours" / "train.json", k=20))

    head_run = run / args.head
    stage(f"train {args.head}", _train_argv(head_cfg, head_run), _final_matches(head_run, configs["head"]))
    ckpt = str(head_run / "final")
    stage("sample", ["sample", "--ckpt", ckpt, "-n", str(args.samples), "--out", str(run / "samples.png"),
                     "--show-retrieval", str(run / "retrieval.png")], False)

    summary: dict[str, Any] = {"source": str(folder), "preset": name, "head": args.head, "channels": channels,
                               "resolution": size, "train_images": n_train, "val_images": n_val}
    summary["reconstruction"] = reconstruction_report(vq_run / "final", val_spec, size, channels)
    fid_n = min(2000, n_val) if args.fid_n is None else args.fid_n
    if fid_n >= 2:
        ev = run / "eval"
        stage("sample for FID", ["sample", "--ckpt", ckpt, "-n", str(fid_n), "--seed", "1",
                                 "--out", str(ev / "fid_samples.png"), "--npy", str(ev / "fid_samples.npy")], False)
        common = ["--ref", val_spec, "-n", str(fid_n), "--ref-size", str(size), "--size", str(size)]
        stage("FID samples vs held-out", ["eval", "fid", str(ev / "fid_samples.npy"), *common,
                                          "--json", str(ev / "fid_samples.json")], False)
        stage("FID real train vs held-out", ["eval", "fid", train_spec, *common,
                                             "--json", str(ev / "fid_real.json")], False)
        summary["fid"] = {"n": fid_n, "samples_vs_val": _read_fid(ev / "fid_samples.json"),
                          "real_train_vs_val": _read_fid(ev / "fid_real.json")}
    summary["stages"] = stage.times
    write_json_atomic(run / "summary.json", summary)
    _print_summary(summary, run)
    return 0


def _read_fid(path: Path) -> float:
    return float(json.loads(path.read_text())["fid"])


def _print_summary(s: dict[str, Any], run: Path, echo: Callable[[str], None] = print) -> None:
    r = s["reconstruction"]
    echo(f"[fit] done: {run}")
    echo(f"  reconstruction on {r['val_images']} held-out images: PSNR {r['psnr_db']:.2f} dB")
    if "colour_from_grey_data" in r:
        echo(f"  colour (mean distance of a pixel from grey): data {r['colour_from_grey_data']:.2f}, "
             f"reconstructions {r['colour_from_grey_reconstructions']:.2f} grey levels")
    if "fid" in s:
        f = s["fid"]
        echo(f"  FID at N = {f['n']} vs the held-out split: samples {f['samples_vs_val']:.2f}; "
             f"real training images {f['real_train_vs_val']:.2f} (the floor at this N)")
    echo(f"  samples: {run / 'samples.png'}, retrieval: {run / 'retrieval.png'}, commands: {run / 'commands.sh'}")
