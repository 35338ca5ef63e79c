"""Small line plots as PNG with Pillow (no plotting library on the reference machine)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    xlog: bool = True
    hline: float | None = None  # e.g. a recall target
    join: str = "pareto"  # "pareto": markers joined along the series' Pareto front; "all": every marker, in x order


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both axes (higher x and higher y), in x order: the trade-off curve."""
    front, best_y = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return front[::-1]


def nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], int]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi], about `target` of them, and the
    decimals their labels need."""
    raw = (hi - lo) / target if hi > lo else 1.0
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return ticks, max(0, -math.floor(math.log10(step)))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def save_panels(panels: list[Panel], path: str | Path, width: int = 560, height: int = 420) -> None:
    """Panels side by side; each series as markers joined along its Pareto front (or all of them, Panel.join),
    legend bottom-left."""
    img = Image.new("RGB", (width * len(panels), height), "white")
    draw = ImageDraw.Draw(img)
    small, big = _font(12), _font(15)
    for i, p in enumerate(panels):
        x0, y0, x1, y1 = i * width + 70, 40, (i + 1) * width - 20, height - 60
        pts = [pt for s in p.series.values() for pt in s]
        fx = (lambda v: math.log10(v)) if p.xlog else (lambda v: v)
        xs, ys = [fx(x) for x, _ in pts], [y for _, y in pts] + ([p.hline] if p.hline is not None else [])
        xmin, xmax = (math.floor(min(xs)), math.ceil(max(xs))) if p.xlog else (min(xs), max(xs))
        ymin, ymax = min(ys), max(ys)
        ymin, ymax = ymin - 0.05 * (ymax - ymin + 1e-9), ymax + 0.05 * (ymax - ymin + 1e-9)
        X = lambda v: x0 + (fx(v) - xmin) / (xmax - xmin or 1) * (x1 - x0)  # noqa: E731
        Y = lambda v: y1 - (v - ymin) / (ymax - ymin or 1) * (y1 - y0)  # noqa: E731
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text(((x0 + x1) / 2, 12), p.title, fill="black", font=big, anchor="mt")
        draw.text(((x0 + x1) / 2, height - 22), p.xlabel, fill="black", font=small, anchor="mt")
        draw.text((i * width + 8, (y0 + y1) / 2), p.ylabel, fill="black", font=small, anchor="lm")
        for e in range(int(xmin), int(xmax) + 1) if p.xlog else []:
            xv = x0 + (e - xmin) / (xmax - xmin or 1) * (x1 - x0)
            draw.line([xv, y1, xv, y1 + 5], fill="black")
            draw.text((xv, y1 + 8), f"1e{e}", fill="black", font=small, anchor="mt")
        ticks, decimals = nice_ticks(ymin, ymax)
        for yv in ticks:
            draw.line([x0 - 5, Y(yv), x0, Y(yv)], fill="black")
            draw.text((x0 - 8, Y(yv)), f"{yv:.{decimals}f}", fill="black", font=small, anchor="rm")
        if p.hline is not None:
            draw.line([x0, Y(p.hline), x1, Y(p.hline)], fill="#999999", width=1)
        for j, (name, s) in enumerate(p.series.items()):
            c = COLOURS[j % len(COLOURS)]
            front = pareto_front(s) if p.join == "pareto" else sorted(s)
            if len(front) > 1:
                draw.line([(X(x), Y(y)) for x, y in front], fill=c, width=2)
            for x, y in s:
                draw.ellipse([X(x) - 3, Y(y) - 3, X(x) + 3, Y(y) + 3], fill=c)
            draw.text((x0 + 8, y1 - 8 - 15 * (len(p.series) - j)), name, fill=c, font=small)
    img.save(path)


def labelled_image_rows(rows: list[tuple[str, "np.ndarray"]], path: str | Path, label_width: int = 200) -> Path:
    """One PNG of image rows, each (label, uint8 (m, C, H, W)), grey rows shown as RGB and shorter rows
    padded with white: the benchmarks' sample figures."""
    import numpy as np

    from rissole_runtime.images import labelled_rows, save_png

    width = max(len(im) for _, im in rows)
    rgb = [im if im.shape[1] == 3 else np.repeat(im, 3, 1) for _, im in rows]
    grid = np.stack([np.concatenate([im, np.full((width - len(im), *im.shape[1:]), 255, np.uint8)]) for im in rgb])
    return save_png(labelled_rows(grid, [t for t, _ in rows], scale=2, label_width=label_width), path)
