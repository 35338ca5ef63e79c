"""Text prompts on the device: the bundle's tokenizer.json through the `tokenizers` library (Rust, no torch)
and text_encoder.onnx, one prompt per call (no padding, so nothing depends on a pad token); the vector
lands in the bundle database's embedding space, where rissole_runtime.prompts turns it into conditioning."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rissole_runtime.errors import ConfigError, DataError


class Tokenizer:
    """A Hugging Face fast-tokenizer file: text -> int64 ids, truncated to max_tokens, special tokens added."""

    def __init__(self, path: str | os.PathLike, max_tokens: int) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ModuleNotFoundError as exc:
            raise ConfigError("text prompts need the tokenizers library (no torch): `pip install tokenizers` "
                              "(or rissole-runtime[text]).") from exc
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the library raises its own exception type for a malformed file
            raise DataError(f"{path}: not a readable tokenizer.json ({exc}). Re-export the bundle.") from exc
        self._tok.no_padding()
        self._tok.enable_truncation(int(max_tokens))
        self.path = Path(path)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(str(text)).ids, dtype=np.int64)


class TextEncoder:
    """Prompts -> unit (n, d) float32 vectors with the bundle's text encoder (an onnxruntime session)."""

    def __init__(self, session, tokenizer: Tokenizer, dim: int) -> None:  # noqa: ANN001 - an InferenceSession
        self.session, self.tokenizer, self.dim = session, tokenizer, dim

    def embed(self, prompts: list[str]) -> np.ndarray:
        out = np.empty((len(prompts), self.dim), dtype=np.float32)
        for i, p in enumerate(prompts):
            ids = self.tokenizer.encode(p)[None]
            v = self.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
            if v.shape != (1, self.dim):
                raise DataError(f"the bundle's text encoder returned {list(v.shape)}, expected [1, {self.dim}]. "
                                "Re-export the bundle.")
            out[i] = v[0]
        return out
