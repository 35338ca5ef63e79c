"""Training the joint image tower: locked-text tuning onto frozen all-MiniLM-L6-v2 (`rissole joint train`).

Captioned images: the sticker folder's train split (emoji names and CLDR keywords, Tux Paint
descriptions) and Fashion-MNIST's training images captioned from templates with their class names,
except the held-out classes (`data.fmnist_holdout`), whose images and names the tower never sees,
so that zero-shot accuracy on them means something. Every caption's text embedding is computed
once, at the start, and cached in the run directory. A batch holds `train.batch_size` stickers (in
the trainer's step-indexed order) and `data.fmnist_per_batch` Fashion-MNIST images drawn with the
run's generator, so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from rissole.checkpoint import Checkpoint
from rissole.data.fashion_mnist import CAPTION_NAMES, CAPTION_TEMPLATES, load_fashion_mnist
from rissole.errors import DataError
from rissole.fileio import atomic_path, write_json_atomic
from rissole.heads.trainer import COMMON_DEFAULTS, HeadTrainer
from rissole.models.image_tower import ImageTower, contrastive_loss, to_tower_input
from rissole.training import with_defaults

KIND = "joint"
MODEL_DEFAULTS: dict[str, Any] = {"channels": [32, 64, 128, 256], "dim": 384, "groups": 8, "init_temperature": 0.07}
DATA_DEFAULTS: dict[str, Any] = {
    "stickers": "runs/stickers32",  # written by `rissole data stickers`
    "fmnist_holdout": ["ankle boot", "bag", "shirt"],
    "fmnist_per_batch": 64,
    "fmnist_dir": None,
    "pad": 2,  # random translation by up to this many pixels (edge-replicated), and horizontal flips
}
CACHE = "text_cache.npy"


def sticker_captions(record: dict[str, Any]) -> list[str]:
    """The captions of one sticker: its name or description, and for emoji the name with its keywords."""
    text = str(record.get("text", "")).strip()
    out = [text] if text else []
    kw = [k for k in record.get("keywords") or [] if k and k != text]
    if kw:
        out.append(f"{text}: {', '.join(kw)}")
    return out


def fmnist_captions(class_id: int) -> list[str]:
    return [t.format(CAPTION_NAMES[class_id]) for t in CAPTION_TEMPLATES]


def holdout_ids(names: list[str]) -> list[int]:
    unknown = [n for n in names if n not in CAPTION_NAMES]
    if unknown:
        raise DataError(f"data.fmnist_holdout: unknown class names {unknown}; Fashion-MNIST's are {list(CAPTION_NAMES)}.")
    return sorted(CAPTION_NAMES.index(n) for n in names)


class JointTrainer(HeadTrainer):
    kind: ClassVar[str] = KIND
    required_data: ClassVar[list[str] | None] = None  # data.stickers and the hold-out list are checked in setup_data
    defaults: ClassVar[dict[str, Any]] = {**COMMON_DEFAULTS, "lr": 1.0e-3, "weight_decay": 0.05,
                                          "ema_decay": 0.999, "cond_dropout": 0.0, "ckpt_every": 250}

    def build_model(self) -> torch.nn.Module:
        self.mc = mc = with_defaults(self.config.get("model"), MODEL_DEFAULTS, "model")
        self.config["model"] = mc
        return ImageTower(tuple(mc["channels"]), mc["dim"], 3, mc["groups"], mc["init_temperature"])

    def count_parameters(self) -> dict[str, int]:
        m = self.model
        counts = {"features": sum(p.numel() for p in m.features.parameters()),
                  "proj": sum(p.numel() for p in m.proj.parameters()), "logit_scale": 1}
        return {**counts, "total": sum(counts.values())}

    def setup_data(self) -> None:
        from rissole.data.folder import ImageFolder

        self.dc = dc = with_defaults(self.config.get("data"), DATA_DEFAULTS, "data")
        self.config["data"] = dc
        folder = ImageFolder(dc["stickers"], size=32, channels=3, split="train")
        if folder.records is None:
            raise DataError(f"{dc['stickers']}: no metadata.jsonl; write the sticker folder with `rissole data stickers`.")
        self.sticker_images = torch.from_numpy(folder.to_array())
        sticker_caps = [sticker_captions(r) for r in folder.records]
        keep = [i for i, c in enumerate(sticker_caps) if c]
        self.sticker_images = self.sticker_images[keep]
        sticker_caps = [sticker_caps[i] for i in keep]
        images, labels = load_fashion_mnist("train", data_dir=dc["fmnist_dir"], size=32)
        self.holdout = holdout_ids(list(dc["fmnist_holdout"]))
        seen = ~np.isin(labels, self.holdout)
        self.fm_images, self.fm_labels = torch.from_numpy(images[seen]), torch.from_numpy(labels[seen])

        # every caption once, in a fixed order; items index into this list
        captions: list[str] = sorted({c for caps in sticker_caps for c in caps} |
                                     {c for k in range(10) if k not in self.holdout for c in fmnist_captions(k)})
        index = {c: i for i, c in enumerate(captions)}
        self.sticker_caption_ids = [torch.tensor([index[c] for c in caps]) for caps in sticker_caps]
        self.sticker_keys = torch.tensor([index[caps[0]] for caps in sticker_caps])  # same name: same positive
        self.class_caption_ids = {k: torch.tensor([index[c] for c in fmnist_captions(k)])
                                  for k in range(10) if k not in self.holdout}
        self.text = torch.from_numpy(self._text_embeddings(captions)).to(self.device)

    def _text_embeddings(self, captions: list[str]) -> np.ndarray:
        """MiniLM embeddings of every caption, computed once and cached in the run directory."""
        digest = hashlib.sha256(json.dumps(captions).encode()).hexdigest()
        cache, meta = self.run_dir / CACHE, self.run_dir / (CACHE + ".json")
        if cache.is_file() and meta.is_file() and json.loads(meta.read_text()).get("sha256") == digest:
            return np.load(cache)
        from rissole.embeddings.minilm import MiniLMEmbedder

        emb = MiniLMEmbedder(device=self.device).embed_texts(captions, progress=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache, suffix=".npy") as tmp, open(tmp, "wb") as f:
            np.save(f, emb)
        write_json_atomic(meta, {"sha256": digest, "count": len(captions), "captions": captions})
        return emb

    def num_rows(self) -> int:
        return len(self.sticker_images)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random translation (edge-replicated padding, random crop) and horizontal flip, from the run's generator."""
        p = int(self.dc["pad"])
        n, _, h, w = x.shape
        if p:
            padded = F.pad(x, (p, p, p, p), mode="replicate")
            dx = torch.randint(0, 2 * p + 1, (n,), generator=self.gen)
            dy = torch.randint(0, 2 * p + 1, (n,), generator=self.gen)
            x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        flip = torch.rand(n, generator=self.gen) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images in [-1, 1], caption ids, positive keys) for `ids` stickers plus a draw of Fashion-MNIST."""
        g = self.gen
        s_ids = torch.from_numpy(np.asarray(ids))
        s_caps = torch.stack([c[torch.randint(len(c), (1,), generator=g)][0] for c in
                              (self.sticker_caption_ids[i] for i in s_ids.tolist())])
        f_ids = torch.randint(len(self.fm_images), (int(self.dc["fmnist_per_batch"]),), generator=g)
        f_labels = self.fm_labels[f_ids]
        f_caps = torch.stack([self.class_caption_ids[int(k)][torch.randint(len(CAPTION_TEMPLATES), (1,), generator=g)][0]
                              for k in f_labels])
        x = torch.cat([to_tower_input(self.sticker_images[s_ids]), to_tower_input(self.fm_images[f_ids])])
        keys = torch.cat([self.sticker_keys[s_ids], -1 - f_labels])  # classes: negative keys, disjoint from captions
        return self.augment(x), torch.cat([s_caps, f_caps]), keys

    def loss(self, ids: np.ndarray) -> torch.Tensor:
        x, caps, keys = self.batch(ids)
        image = self.model(x.to(self.device))
        return contrastive_loss(image, self.text[caps.to(self.device)], self.model.logit_scale, keys.to(self.device))

    def on_resume(self, ckpt: Checkpoint) -> None:
        if ckpt.config.get("data", {}).get("fmnist_holdout") != self.config["data"]["fmnist_holdout"]:
            raise DataError(f"{ckpt.path}: trained with held-out classes {ckpt.config.get('data', {}).get('fmnist_holdout')}, "
                            f"the config holds out {self.config['data']['fmnist_holdout']}; resume with the same config.")


def train_joint(config: dict[str, Any], run_dir: str | Path, resume: bool = False, stop_after: int | None = None,
                progress: bool = True) -> JointTrainer:
    from rissole.heads.trainer import train_head

    return train_head(JointTrainer, config, run_dir, resume=resume, stop_after=stop_after, progress=progress)
