"""VQ-GAN (Esser et al., 2021) assembled from taming-transformers' Encoder, Decoder and VectorQuantizer2.

Module and parameter names follow taming's / latent-diffusion's VQModel (`encoder.*`, `decoder.*`,
`quantize.embedding.weight`, `quant_conv.*`, `post_quant_conv.*`), so their checkpoints load here.
The latent handed to the generators is the pre-quantisation output of `quant_conv` (as in
latent-diffusion); `decode` quantises it before the decoder.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2

from rissole.config import ModelConfig, check_section_types
from rissole_runtime.errors import ConfigError

DDCONFIG_DEFAULTS: dict[str, Any] = {
    "double_z": False,
    "z_channels": 10,
    "resolution": 32,
    "in_channels": 1,
    "out_ch": 1,
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


@dataclass
class VQGANConfig(ModelConfig):
    """Architecture of the first stage; `ddconfig` uses taming's key names."""

    ddconfig: dict[str, Any] = field(default_factory=lambda: dict(DDCONFIG_DEFAULTS))
    embed_dim: int = 10
    n_embed: int = 1024
    beta: float = 0.25
    # taming's default applies beta to the codebook term (a bug kept for compatibility);
    # our own models train with legacy=False, imported ones keep what they were trained with.
    legacy: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQGANConfig":
        cfg = super().from_dict(d)  # unknown keys and the types of every field
        check_section_types(cfg.ddconfig, DDCONFIG_DEFAULTS, "model.ddconfig",
                            ("z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks"))
        if cfg.ddconfig.get("double_z", False):
            raise ConfigError("ddconfig.double_z must be false for a VQ-GAN (it is for KL autoencoders).")
        widths = [cfg.ddconfig.get("ch", 0) * m for m in cfg.ddconfig.get("ch_mult", [])]
        if any(w % 32 for w in widths):
            raise ConfigError(f"model.ddconfig: ch x ch_mult gives widths {widths}; each must be a multiple of 32 "
                              f"(taming's GroupNorm uses 32 groups): use ch 32, 64, ...")
        cin, cout = cfg.ddconfig.get("in_channels"), cfg.ddconfig.get("out_ch")
        if cin != cout:
            # a 1-channel output broadcasts silently against a 3-channel target in the L1 loss
            raise ConfigError(f"model.ddconfig: in_channels is {cin} but out_ch is {cout}; an autoencoder must "
                              f"reconstruct the channels it reads: set both to the images' channel count.")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = self.ddconfig["resolution"] // self.downsample
        return (self.embed_dim, r, r)


class VQModel(nn.Module):
    """Encoder -> quant_conv -> (VectorQuantizer2) -> post_quant_conv -> Decoder."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        dd = dict(config.ddconfig)
        self.encoder = Encoder(**dd)
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
            self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=config.beta, legacy=config.legacy)
        self.quant_conv = nn.Conv2d(dd["z_channels"], config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd["z_channels"], 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N, C, H, W) -> pre-quantisation latents (N, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def quantize_latent(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents -> (quantised latents, codebook + commitment loss, code indices (N, h, w))."""
        z_q, qloss, (_, _, idx) = self.quantize(h)
        return z_q, qloss, idx.reshape(h.shape[0], h.shape[2], h.shape[3])

    def decode(self, h: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latents -> images in [-1, 1]; quantises first unless `quantize=False`."""
        if quantize:
            h = self.quantize_latent(h)[0]
        return self.decoder(self.post_quant_conv(h))

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (N, h, w) -> images."""
        n, hh, ww = indices.shape
        z_q = self.quantize.get_codebook_entry(indices.reshape(-1), (n, hh, ww, self.config.embed_dim))
        return self.decode(z_q, quantize=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images -> (reconstructions, codebook loss, code indices)."""
        z_q, qloss, idx = self.quantize_latent(self.encode(x))
        return self.decoder(self.post_quant_conv(z_q)), qloss, idx

    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight


def load_vqgan(path: str | os.PathLike, device: str | torch.device = "cpu") -> VQModel:
    """Load a VQ-GAN for inference from a rissole checkpoint directory (EMA weights when present)."""
    from rissole.checkpoint import load_checkpoint

    ckpt = load_checkpoint(Path(path), expect_kind="vqgan")
    model = VQModel(VQGANConfig.from_dict(ckpt.config["model"]))
    ckpt.load_into(model, ckpt.inference_weights_name())
    return model.to(device).eval()
