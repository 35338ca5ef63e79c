"""`clip:PATH`: a real CLIP (Radford et al., 2021) from a local file, through transformers' CLIPModel.

PATH is either
- a Hugging Face CLIP folder (config.json, model.safetensors, the tokenizer files), loaded with
  `from_pretrained(local_files_only=True)`; or
- an OpenAI / open_clip ViT state dict (`.safetensors`, or `.pt` / `.bin` read with
  `torch.load(weights_only=True)`: never unpickling code), whose shapes give the configuration and
  whose weights are renamed onto CLIPModel's. The tokenizer (CLIP's vocab.json + merges.txt, or a
  tokenizer.json) must lie in the same folder; the state dict does not carry it.

Images are resized (bicubic) to the model's input size and normalised with CLIP's mean and std
(or the folder's preprocessor_config.json). The spec names the model by the hash of its weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rissole.checkpoint import load_foreign_state_dict
from rissole.embeddings.base import Embedder, EmbeddingSpec, TextTower
from rissole.errors import CheckpointError, DataError
from rissole.fileio import sha256_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def config_from_openai(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """CLIPConfig arguments from the shapes of an OpenAI / open_clip ViT state dict (heads = width / 64, as OpenAI's)."""
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        raise CheckpointError(f"{path}: expected an OpenAI / open_clip ViT CLIP state dict (visual.conv1.weight, "
                              f"token_embedding.weight, ...), found keys {sorted(state)[:6]}... ResNet CLIPs are not supported.")
    vw, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    tw = state["ln_final.weight"].shape[0]
    return {
        "projection_dim": int(state["text_projection"].shape[1]),
        "vision_config": {"hidden_size": vw, "patch_size": patch, "image_size": patch * grid, "num_channels": 3,
                          "num_hidden_layers": _blocks(state, "visual.transformer.resblocks."),
                          "num_attention_heads": max(1, vw // 64), "hidden_act": "quick_gelu",
                          "intermediate_size": int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])},
        "text_config": {"hidden_size": tw, "vocab_size": int(state["token_embedding.weight"].shape[0]),
                        "max_position_embeddings": int(state["positional_embedding"].shape[0]),
                        "num_hidden_layers": _blocks(state, "transformer.resblocks."),
                        "num_attention_heads": max(1, tw // 64), "hidden_act": "quick_gelu",
                        "intermediate_size": int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])},
    }


def openai_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenAI / open_clip ViT state dict onto transformers' CLIPModel (q, k, v split from in_proj)."""
    out: dict[str, torch.Tensor] = {}

    def layers(src: str, dst: str, n: int) -> None:
        for i in range(n):
            s, d = f"{src}{i}.", f"{dst}{i}."
            for j, name in enumerate(("q", "k", "v")):
                w, b = state[s + "attn.in_proj_weight"], state[s + "attn.in_proj_bias"]
                c = w.shape[0] // 3
                out[d + f"self_attn.{name}_proj.weight"] = w[j * c : (j + 1) * c]
                out[d + f"self_attn.{name}_proj.bias"] = b[j * c : (j + 1) * c]
            for a, b_ in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                          ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[d + b_ + ".weight"], out[d + b_ + ".bias"] = state[s + a + ".weight"], state[s + a + ".bias"]

    v, t = "vision_model.", "text_model."
    out[v + "embeddings.class_embedding"] = state["visual.class_embedding"]
    out[v + "embeddings.patch_embedding.weight"] = state["visual.conv1.weight"]
    out[v + "embeddings.position_embedding.weight"] = state["visual.positional_embedding"]
    for a, b in (("visual.ln_pre", v + "pre_layrnorm"), ("visual.ln_post", v + "post_layernorm"),
                 ("ln_final", t + "final_layer_norm")):
        out[b + ".weight"], out[b + ".bias"] = state[a + ".weight"], state[a + ".bias"]
    layers("visual.transformer.resblocks.", v + "encoder.layers.", _blocks(state, "visual.transformer.resblocks."))
    layers("transformer.resblocks.", t + "encoder.layers.", _blocks(state, "transformer.resblocks."))
    out[t + "embeddings.token_embedding.weight"] = state["token_embedding.weight"]
    out[t + "embeddings.position_embedding.weight"] = state["positional_embedding"]
    out["visual_projection.weight"] = state["visual.proj"].t().contiguous()
    out["text_projection.weight"] = state["text_projection"].t().contiguous()
    out["logit_scale"] = state["logit_scale"].reshape(())
    return out


class ClipEmbedder(Embedder):
    name: ClassVar[str] = "clip"

    def __init__(self, path: str | os.PathLike, batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        from rissole.embeddings.minilm import offline_transformers

        tf = offline_transformers()
        self.path = Path(path).resolve()
        self.batch_size, self.device = batch_size, torch.device(device)
        folder = self.path if self.path.is_dir() else self.path.parent
        if self.path.is_dir():
            if not (self.path / "config.json").is_file():
                raise CheckpointError(f"{self.path}: expected a Hugging Face CLIP folder (config.json + model.safetensors).")
            self.model = tf.CLIPModel.from_pretrained(str(self.path), local_files_only=True)
            weights = next((self.path / n for n in ("model.safetensors", "pytorch_model.bin") if (self.path / n).is_file()), None)
        elif self.path.is_file():
            state = load_foreign_state_dict(self.path)
            state = {k.removeprefix("module."): v for k, v in state.items()}
            config = config_from_openai(state, self.path)
            tok = _tokenizer(tf, folder)  # the text tower pools at the end-of-text token: take its id from here
            config["text_config"].update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id)
            self.model = tf.CLIPModel(tf.CLIPConfig(**config))
            mapped = openai_to_hf(state)
            missing, unexpected = self.model.load_state_dict(mapped, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise CheckpointError(f"{self.path}: the CLIP weights do not map onto CLIPModel: missing {missing[:6]}, "
                                      f"unexpected {unexpected[:6]}.")
            weights = self.path
        else:
            raise CheckpointError(f"{self.path}: not found. clip:PATH takes a Hugging Face CLIP folder or an "
                                  "OpenAI / open_clip state dict file.")
        self.model.to(self.device).eval()
        self.tokenizer = _tokenizer(tf, folder)
        self.model_hash = sha256_file(weights)[:16] if weights is not None else "unknown"
        vc = self.model.config.vision_config
        self.size = int(vc.image_size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            self.mean, self.std = tuple(p.get("image_mean", CLIP_MEAN)), tuple(p.get("image_std", CLIP_STD))
        self.dim = int(self.model.config.projection_dim)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(self.name, tokens=1, token_dim=self.dim, params={"model": self.model_hash, "path": str(self.path)})

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        """transformers 5 returns an output whose pooler_output is projected; earlier versions the tensor."""
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def embed_images(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"the clip embedder needs uint8 images (n, 1|3, H, W), found {images.dtype} {images.shape}.")
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for s in tqdm(range(0, len(images), self.batch_size), desc="clip", unit="batch", disable=not progress):
            x = torch.from_numpy(images[s : s + self.batch_size]).to(self.device, torch.float32) / 255.0
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
            out[s : s + len(x)] = self._features(self.model.get_image_features(pixel_values=(x - mean) / std)).cpu().numpy()
        return self.unit(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[s : s + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt").to(self.device)
            feats = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out[s : s + len(texts[s : s + self.batch_size])] = self._features(feats).cpu().numpy()
        return self.unit(out)

    def text_tower(self) -> TextTower:
        folder = self.path if self.path.is_dir() else self.path.parent
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json (the fast-tokenizer file the edge runtime reads) beside "
                                  "the CLIP weights; save it there with transformers' CLIPTokenizerFast.save_pretrained.")
        return TextTower(ClipTextGraph(self.model), folder / "tokenizer.json", self.max_tokens)


class ClipTextGraph(torch.nn.Module):
    """(input_ids, attention_mask) -> unit projected text features: what rissole-export traces to ONNX."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feats = ClipEmbedder._features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        return F.normalize(feats, dim=-1)


def _tokenizer(tf: Any, folder: Path) -> Any:
    """CLIP's tokenizer from the model's folder (local files only)."""
    has = [n for n in ("tokenizer.json", "vocab.json", "tokenizer_config.json") if (folder / n).is_file()]
    if not has:
        raise CheckpointError(f"{folder}: no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt) beside "
                              "the weights; copy them from the model's Hugging Face folder.")
    try:
        return tf.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: cannot read the CLIP tokenizer ({exc}).") from exc
