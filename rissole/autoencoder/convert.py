"""Import taming-transformers / latent-diffusion VQ checkpoints into rissole's checkpoint format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rissole.autoencoder.vqgan import VQGANConfig, VQModel
from rissole.checkpoint import load_foreign_state_dict, load_state_dict_checked, save_checkpoint
from rissole.config import load_config
from rissole_runtime.errors import ConfigError


def config_from_taming_yaml(path: str | os.PathLike) -> VQGANConfig:
    """Read `model.params.{ddconfig, embed_dim, n_embed}` from a taming / latent-diffusion config."""
    cfg = load_config(path)
    try:
        params = cfg["model"]["params"]
        dd, embed_dim, n_embed = dict(params["ddconfig"]), int(params["embed_dim"]), int(params["n_embed"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: expected a taming/latent-diffusion VQ config with model.params.ddconfig, embed_dim and n_embed "
            f"(missing {exc})."
        ) from exc
    # taming's VQModel passes legacy=True by default (beta on the codebook term)
    return VQGANConfig(ddconfig=dd, embed_dim=embed_dim, n_embed=n_embed, legacy=True)


def import_taming_checkpoint(ckpt_path: str | os.PathLike, config: VQGANConfig, out_dir: str | os.PathLike,
                             force: bool = False) -> Path:
    """Keep the first-stage weights (drop `loss.*`, i.e. LPIPS and discriminator), check them, save as rissole."""
    state = load_foreign_state_dict(ckpt_path)
    weights = {k: v for k, v in state.items() if not k.startswith("loss.")}
    model = VQModel(config)
    load_state_dict_checked(model, weights, Path(ckpt_path))
    meta: dict[str, Any] = {"model": config.to_dict(), "imported_from": str(ckpt_path)}
    return save_checkpoint(out_dir, "vqgan", 0, meta, {"model": model.state_dict()}, replace=force)
