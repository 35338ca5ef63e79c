"""A new user's own colour images through `rissole fit`, timed stage by stage.

    python -m benchmarks.own_data make-folder --out runs/own/oxygen        # the folder (Debian's oxygen-icon-theme)
    python -m benchmarks.own_data run --folder runs/own/oxygen --work runs/own/rgb32 --preset rgb32

The folder is what a user would bring: the Oxygen icon theme's PNGs (RGBA, transparent backgrounds,
sizes 32-256 px), one file per icon (the largest size shipped), in class folders (actions, apps,
devices, ...). The project never trained on it. `run` calls `rissole fit` and copies its summary
(reconstruction PSNR and colour, FID vs the held-out split beside real train vs held-out at the same N,
per-stage wall times) to benchmarks/results/own_data_PRESET.json with the command and the machine, and
small copies of the sample grid and retrieval figure beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OXYGEN = Path("/usr/share/icons/oxygen/base")


def make_folder(out: Path, min_size: int = 32) -> int:
    """One PNG per (category, icon name): the largest size of at least `min_size` px the theme ships."""
    if not OXYGEN.is_dir():
        print(f"{OXYGEN} not found: apt-get install oxygen-icon-theme", file=sys.stderr)
        return 2
    best: dict[tuple[str, str], tuple[int, Path]] = {}
    for size_dir in OXYGEN.iterdir():
        side = int(size_dir.name.split("x")[0]) if "x" in size_dir.name else 0
        if side < min_size:
            continue
        for png in size_dir.glob("*/*.png"):
            key = (png.parent.name, png.name)
            if key not in best or best[key][0] < side:
                best[key] = (side, png)
    if out.exists():
        print(f"{out} exists: remove it or pick another --out", file=sys.stderr)
        return 2
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for (category, name), (_, src) in sorted(best.items()):
        (tmp / category).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp / category / name)
    tmp.rename(out)
    print(f"wrote {out}: {len(best)} icons in {len({c for c, _ in best})} class folders")
    return 0


def run(folder: Path, work: Path, preset: str, vqgan_steps: int | None, head_steps: int | None, fid_n: int | None) -> int:
    from PIL import Image

    from benchmarks._machine import machine_info
    from rissole.cli.main import main as rissole
    from rissole.fileio import write_json_atomic

    argv = ["fit", str(folder), "--out", str(work), "--preset", preset]
    if vqgan_steps is not None:
        argv += ["--vqgan-steps", str(vqgan_steps)]
    if head_steps is not None:
        argv += ["--head-steps", str(head_steps)]
    if fid_n is not None:
        argv += ["--fid-n", str(fid_n)]
    rc = rissole(argv)
    if rc != 0:
        return rc
    summary = json.loads((work / "summary.json").read_text())
    results = ROOT / "benchmarks" / "results"
    for name in ("samples", "retrieval"):
        with Image.open(work / f"{name}.png") as im:
            im.convert("RGB").save(results / f"own_data_{preset}_{name}.png", optimize=True)
    write_json_atomic(results / f"own_data_{preset}.json",
                      {"machine": machine_info(), "fit_command": "rissole " + " ".join(argv), **summary})
    print(f"wrote {results / f'own_data_{preset}.json'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-folder", help="copy the Oxygen icons into a class-folder tree")
    m.add_argument("--out", required=True, type=Path, help="folder to create (must not exist)")
    r = sub.add_parser("run", help="rissole fit on the folder; results to benchmarks/results/own_data_PRESET.*")
    r.add_argument("--folder", required=True, type=Path, help="the image folder")
    r.add_argument("--work", required=True, type=Path, help="the fit run directory")
    r.add_argument("--preset", default="rgb32", help="rgb32 or rgb64-f8")
    r.add_argument("--vqgan-steps", type=int, default=None, help="override the preset's VQ-GAN steps")
    r.add_argument("--head-steps", type=int, default=None, help="override the preset's RISSOLE steps")
    r.add_argument("--fid-n", type=int, default=None, help="FID N (default: all held-out images, at most 2000)")
    args = ap.parse_args()
    if args.cmd == "make-folder":
        return make_folder(args.out)
    return run(args.folder, args.work, args.preset, args.vqgan_steps, args.head_steps, args.fid_n)


if __name__ == "__main__":
    sys.exit(main())
