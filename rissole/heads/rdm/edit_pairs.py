"""Training pairs of kNN-Diffusion's mask-free manipulation (Sheynin et al., Sec. 3.1, Fig. 6 and 12).

For a training image I, a random local area M and I's nearest neighbour in the index:

    I_manip = I * (1 - M) + nn(I) * M          what the model sees beside z_t (model.edit)
    condition = f_img(I * M)                   the joint embedding of the original's area alone
    target    = I                              the model learns to restore the area

so at inference the embedding of a text prompt stands in for the area's embedding and the model finds,
with no mask, where the image disagrees with the text and changes that part (`rissole edit`).

What differs from the paper, and why: the area is replaced in the VQ latent, where the model works
(one latent cell is a 4 x 4 pixel patch at f = 4), so a pair costs no encoder call; the area's
embedding is taken of the pixels of the same rectangle on the stickers' white background (the paper's
I * M would paint the rest black, which no sticker is); the neighbour is not ECC-aligned (stickers are
centred on a plain background). Boxes are 2..5 latent cells a side, drawn per row from the training
generator (rissole.distributed: the same draws in one process and under DDP).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rissole import distributed
from rissole.heads.neighbour_data import NeighbourBatcher
from rissole_runtime.errors import DataError

MIN_CELLS, MAX_CELLS = 2, 5  # side of the replaced area, in latent cells
BACKGROUND = 255  # the stickers' white


def box_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    """(n, 1, size, size) float32 masks, 1 inside each box (y, x, h, w)."""
    m = np.zeros((len(boxes), 1, size, size), dtype=np.float32)
    for i, (y, x, h, w) in enumerate(boxes):
        m[i, :, y : y + h, x : x + w] = 1.0
    return m


def manipulate(latents: np.ndarray, neighbour_latents: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """I * (1 - M) + nn(I) * M in the latent: only the boxes' cells change."""
    m = box_mask(boxes, latents.shape[-1])
    return latents * (1.0 - m) + neighbour_latents * m


def area_images(images: np.ndarray, boxes: np.ndarray, factor: int) -> np.ndarray:
    """uint8 (n, C, H, W): each image's box (in latent cells, times the first stage's factor) on white."""
    out = np.full_like(images, BACKGROUND)
    for i, (y, x, h, w) in enumerate(np.asarray(boxes) * factor):
        out[i, :, y : y + h, x : x + w] = images[i, :, y : y + h, x : x + w]
    return out


def random_boxes(n: int, size: int, generator: torch.Generator) -> np.ndarray:
    """(n, 4) int64 boxes (y, x, h, w) in a size x size latent, one per row of this batch part."""
    sides = MAX_CELLS - MIN_CELLS + 1
    h = distributed.randint(sides, n, generator).numpy() + MIN_CELLS
    w = distributed.randint(sides, n, generator).numpy() + MIN_CELLS
    y = np.floor(distributed.rand(n, generator).numpy() * (size - h + 1)).astype(np.int64)
    x = np.floor(distributed.rand(n, generator).numpy() * (size - w + 1)).astype(np.int64)
    return np.stack([y, x, h, w], axis=1).astype(np.int64)


class EditPairs:
    """Manipulated pairs of the batcher's training rows: needs a same-set table (the training rows are the
    index, so each has a nearest *other* row) and the rows' pixels (from the latents' recorded source)."""

    def __init__(self, batcher: NeighbourBatcher, data: dict[str, Any]) -> None:
        from rissole.data import load_source
        from rissole.embeddings import embedder_for_spec

        if batcher.table.meta.get("queries") != "database":
            raise DataError(f"{batcher.edb.path}: an edit model trains on the index itself (its nearest other row is the "
                            f"replacement); give data.table a same-set table (`rissole db neighbours {batcher.edb.path}`, "
                            "no --queries), found one made for other queries.")
        self.batcher = batcher
        lat = batcher.latents_file
        source = lat.manifest.get("source")
        if not source:
            raise DataError(f"{lat.path}: the latents do not record the images they came from (manifest `source`); "
                            "re-encode them with `rissole encode`.")
        shape = lat.array.shape[1:]
        images = load_source(source, size=int(data.get("image_size", 32)), channels=int(data.get("channels", 3))).images
        self.images = np.ascontiguousarray(images[batcher.rows])  # training row i -> its pixels
        self.factor = self.images.shape[-1] // shape[-1]
        self.embedder = embedder_for_spec(batcher.edb.spec, tuple(shape), device="cpu")

    def batch(self, ids: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """(target latents, manipulated latents (both unscaled), area embeddings (B, 1, d)) of training rows."""
        ids = np.asarray(ids)
        target = self.batcher.latents(ids)
        nn_rows = np.asarray(self.batcher.table.ids[ids, 0], dtype=np.int64)
        boxes = random_boxes(len(ids), target.shape[-1], generator)
        source = manipulate(target, self.batcher.edb.latents(nn_rows), boxes)
        emb = self.embedder.embed_images(area_images(self.images[ids], boxes, self.factor))
        return target, source.astype(np.float32), torch.from_numpy(emb[:, None])
