"""Captioned colour images from Debian packages: emoji and Tux Paint stamps, written as an image folder.

    rissole data stickers --out DIR     ->  DIR/train/{emoji,tuxpaint}/*.png + DIR/train/metadata.jsonl
                                            DIR/val/...                      + DIR/val/metadata.jsonl

The layout is the Hugging Face image-folder convention (one folder per split, a metadata.jsonl
beside the images whose `file_name` is relative to it), so `datasets.load_dataset("imagefolder",
data_dir=DIR)` and `folder:DIR:train` both read it. Every record has `file_name`, `text` (the
caption), `group` (the Unicode emoji group, or the Tux Paint stamp folder) and `source`; emoji add
their CLDR `keywords`.

- Emoji: the fully-qualified entries of Unicode's emoji-test.txt (Debian `unicode-data`), with
  their groups and names; keywords from CLDR's annotations/en.xml (`unicode-cldr-core`); rendered
  with Pillow from NotoColorEmoji.ttf (`fonts-noto-color-emoji`, a bitmap font: size 109 only,
  embedded colour). Skin-tone variants are left out (same caption, near-identical pixels) and so
  are sequences the font draws as several glyphs.
- Tux Paint stamps (`tuxpaint-stamps-default`): every PNG with a .txt description whose first line
  is English; `_mirror` copies are skipped.

Images are flattened on white, cropped to their content, fitted into size x size with the aspect
kept (white padding), RGB. The split is a seeded hash of each image's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rissole.errors import DataError

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
CLDR_ANNOTATIONS = Path("/usr/share/unicode/cldr/common/annotations/en.xml")
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
EMOJI_FONT_SIZE = 109  # the only size of Noto Color Emoji's bitmap strikes
SKIN_TONES = set(range(0x1F3FB, 0x1F400))
METADATA = "metadata.jsonl"
SPLITS = ("train", "val")


@dataclass
class Sticker:
    """One captioned image before it is written: a unique name, caption, group, and how to draw it."""

    name: str  # file stem, unique within its source
    source: str  # "emoji" | "tuxpaint"
    text: str
    group: str
    render: Callable[[], Image.Image]  # RGBA, any size
    extra: dict[str, Any] = field(default_factory=dict)


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: not found. Install it with `apt-get install {package}` (install.sh does).")
    return path


def read_emoji_test(path: Path = EMOJI_TEST) -> list[tuple[str, str, str, str]]:
    """(characters, name, group, subgroup) of every fully-qualified emoji in emoji-test.txt."""
    out, group, subgroup = [], "", ""
    for line in _need(path, "unicode-data").read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            codes, _, rest = line.partition(";")
            status, _, comment = rest.partition("#")
            if status.strip() != "fully-qualified":
                continue
            chars = "".join(chr(int(c, 16)) for c in codes.split())
            # comment: " 😀 E1.0 grinning face"
            m = re.match(r"\s*\S+\s+E\d+\.\d+\s+(.*)", comment)
            out.append((chars, m.group(1).strip() if m else comment.strip(), group, subgroup))
    return out


def read_cldr_keywords(path: Path = CLDR_ANNOTATIONS) -> dict[str, list[str]]:
    """Emoji (without variation selectors) -> its English CLDR keywords."""
    if not path.exists():
        return {}
    out: dict[str, list[str]] = {}
    for el in ET.parse(path).getroot().iter("annotation"):
        if el.get("type") != "tts" and el.text:
            out[el.get("cp", "").replace("\ufe0f", "")] = [k.strip() for k in el.text.split("|") if k.strip()]
    return out


def emoji_stickers(font_path: Path = EMOJI_FONT) -> list[Sticker]:
    """Every emoji the font draws as one glyph, skin-tone variants and the Component group left out."""
    font = ImageFont.truetype(str(_need(font_path, "fonts-noto-color-emoji")), EMOJI_FONT_SIZE)
    keywords = read_cldr_keywords()
    single_width = font.getbbox("\U0001F600")[2]
    out = []
    for chars, name, group, subgroup in read_emoji_test():
        if group == "Component" or any(ord(c) in SKIN_TONES for c in chars):
            continue
        if font.getbbox(chars)[2] > 1.3 * single_width:  # not one glyph in this font: drawn as pieces
            continue
        code = "-".join(f"{ord(c):x}" for c in chars if c != "\ufe0f")
        kw = [k for k in keywords.get(chars.replace("\ufe0f", ""), []) if k != name]

        def render(chars: str = chars) -> Image.Image:
            im = Image.new("RGBA", (int(single_width * 1.4), int(single_width * 1.4)), (255, 255, 255, 0))
            ImageDraw.Draw(im).text((0, 0), chars, font=font, embedded_color=True)
            return im

        out.append(Sticker(f"emoji_{code}", "emoji", name, group, render,
                           {"subgroup": subgroup, "keywords": kw}))
    return out


def tuxpaint_stickers(root: Path = TUXPAINT_STAMPS) -> list[Sticker]:
    """Every stamp PNG with an English description; group = its top-level stamp folder."""
    root = _need(root, "tuxpaint-stamps-default")
    out = []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if png.stem.endswith("_mirror") or not txt.is_file():
            continue
        first = txt.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        text = first[0].strip().rstrip(".").strip() if first else ""
        if not text:
            continue
        rel = png.relative_to(root)
        name = "tux_" + "_".join(rel.with_suffix("").parts)

        def render(png: Path = png) -> Image.Image:
            with Image.open(png) as im:
                return im.convert("RGBA")

        out.append(Sticker(name, "tuxpaint", text, rel.parts[0] if len(rel.parts) > 1 else "misc", render,
                           {"path": str(rel)}))
    return out


def flatten_fit(im: Image.Image, size: int) -> Image.Image:
    """RGBA -> RGB on white, cropped to the non-transparent content, fitted into size x size (aspect kept)."""
    bbox = im.getchannel("A").getbbox() or (0, 0, im.width, im.height)
    im = im.crop(bbox)
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, im).convert("RGB")
    scale = size / max(rgb.size)
    w, h = max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))
    rgb = rgb.resize((w, h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(rgb, ((size - w) // 2, (size - h) // 2))
    return canvas


def split_of(name: str, seed: int, val_fraction: float) -> str:
    """A seeded hash of the image's name: stable when other images are added or removed."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def select(stickers: list[Sticker], limit: int | None, seed: int) -> list[Sticker]:
    """All stickers, or a seeded subset of `limit` of them (for tests and quick looks)."""
    if limit is None or limit >= len(stickers):
        return stickers
    ids = np.sort(np.random.default_rng(seed).choice(len(stickers), size=limit, replace=False))
    return [stickers[i] for i in ids]


def write_image_folder(out: str | os.PathLike, records: Iterator[tuple[str, str, Image.Image, dict[str, Any]]],
                       splits: tuple[str, ...] = SPLITS) -> dict[str, int]:
    """Write (split, relative file name, image, record) items as an HF image folder at `out`, atomically.

    Everything is written into a temporary folder beside `out` and renamed into place at the end, so
    an interrupted run leaves nothing half-written; an existing non-empty `out` is refused, never
    overwritten (this command did not make it)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty directory; pass a new --out (nothing was changed).")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    counts = {s: 0 for s in splits}
    try:
        handles = {}
        for s in splits:
            (tmp / s).mkdir()
            handles[s] = open(tmp / s / METADATA, "w", encoding="utf-8")
        for split, rel, image, record in records:
            dest = tmp / split / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            image.save(dest, optimize=True)
            handles[split].write(json.dumps({"file_name": rel, **record}, ensure_ascii=False) + "\n")
            counts[split] += 1
        for h in handles.values():
            h.close()
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def build_stickers(out: str | os.PathLike, size: int = 32, seed: int = 0, val_fraction: float = 0.1,
                   limit: int | None = None, sources: tuple[str, ...] = ("emoji", "tuxpaint"),
                   progress: bool = True) -> dict[str, Any]:
    """Render the sticker dataset into `out`; returns counts per split, source and group."""
    from tqdm import tqdm

    if size not in (32, 64):
        raise DataError(f"--size must be 32 or 64, found {size}.")
    makers = {"emoji": emoji_stickers, "tuxpaint": tuxpaint_stickers}
    stickers: list[Sticker] = []
    for s in sources:
        if s not in makers:
            raise DataError(f"unknown sticker source {s!r}; choose from {sorted(makers)}.")
        stickers += makers[s]()
    stickers = select(stickers, limit, seed)
    groups: dict[str, int] = {}

    def records() -> Iterator[tuple[str, str, Image.Image, dict[str, Any]]]:
        for st in tqdm(stickers, desc="stickers", unit="image", disable=not progress):
            groups[f"{st.source}/{st.group}"] = groups.get(f"{st.source}/{st.group}", 0) + 1
            yield (split_of(st.name, seed, val_fraction), f"{st.source}/{st.name}.png", flatten_fit(st.render(), size),
                   {"text": st.text, "group": st.group, "source": st.source, **st.extra})

    counts = write_image_folder(out, records())
    return {"size": size, "seed": seed, "val_fraction": val_fraction, "splits": counts, "groups": groups}


def build_fmnist_folder(out: str | os.PathLike, size: int = 32, rgb: bool = True, limit: int | None = None,
                        data_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Fashion-MNIST as a captioned image folder: train/ and test/ (its own split), captions from the
    first caption template and the class name, group = class name, label = class id."""
    from tqdm import tqdm

    from rissole.data.fashion_mnist import CAPTION_NAMES, CAPTION_TEMPLATES, load_fashion_mnist

    def records() -> Iterator[tuple[str, str, Image.Image, dict[str, Any]]]:
        for split in ("train", "test"):
            images, labels = load_fashion_mnist(split, data_dir=data_dir, size=size)
            n = len(images) if limit is None else min(limit, len(images))
            for i in tqdm(range(n), desc=f"fmnist:{split}", unit="image", disable=not progress):
                im = Image.fromarray(images[i, 0])
                name = CAPTION_NAMES[int(labels[i])]
                yield (split, f"{name.replace(' ', '_')}/{i:05d}.png", im.convert("RGB") if rgb else im,
                       {"text": CAPTION_TEMPLATES[0].format(name), "group": name, "source": "fmnist",
                        "label": int(labels[i])})

    counts = write_image_folder(out, records(), splits=("train", "test"))
    return {"size": size, "rgb": rgb, "splits": counts}
