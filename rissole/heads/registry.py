"""The one table of heads: a checkpoint's or config's `kind` -> where each of its parts lives.

Adding a head means writing its modules (model, trainer, pipeline, export source; the runtime's
bundle kind if it exports) and one entry here; nothing in the CLI, export or benchmarks compares
kind strings. Entries name "module:attribute" and are imported on use, so asking for a pipeline
does not import training code and the CLI starts without importing every head.

    head("rdm").build_model(config["model"])      head("rdm").load("pipeline")
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from rissole_runtime.errors import CheckpointError


@dataclass(frozen=True)
class Head:
    kind: str
    model: str  # the torch module class
    model_config: str  # its config dataclass (from_dict)
    train: str  # train(config, run_dir, resume, stop_after) -> trainer
    pipeline: str  # the rissole.heads.pipeline.Pipeline subclass
    export_source: str  # rissole_export: pipeline -> ExportSource (its bundle kind: rissole_runtime.bundle)
    synthetic_loss: str  # (model, images, generator) -> the training loss on a random batch
    width_key: str  # the model-config key `rissole budget` scales (channels) ...
    depth_key: str  # ... and the one it may vary where asked (blocks / layers)

    def load(self, part: str) -> Any:
        """The attribute named by field `part`, imported."""
        module, _, attr = getattr(self, part).partition(":")
        return getattr(importlib.import_module(module), attr)

    def build_model(self, model_cfg: dict[str, Any]) -> Any:
        return self.load("model")(self.load("model_config").from_dict(model_cfg))

    def parameter_counts(self, model: Any) -> dict[str, int]:
        """Used parameters per component (train.max_params, `rissole budget`): the modules the training loss
        runs on a random batch of two samples (rissole.models.params.used_parameters)."""
        import torch

        from rissole.models.params import used_parameters

        return used_parameters(model, lambda: self.load("synthetic_loss")(model, 2, torch.Generator().manual_seed(0)))


HEADS: dict[str, Head] = {h.kind: h for h in (
    Head("rissole", "rissole.models.block_unet:BlockDenoiser", "rissole.models.block_unet:BlockDenoiserConfig",
         "rissole.heads.rissole.train:train_block_diffusion", "rissole.heads.rissole.pipeline:RissolePipeline",
         "rissole_export.sources:rissole_source", "rissole.heads.rissole.train:synthetic_loss", "model_channels",
         "num_res_blocks"),
    Head("rdm", "rissole.models.rdm_unet:RDMUNet", "rissole.models.rdm_unet:RDMUNetConfig",
         "rissole.heads.rdm.train:train_rdm", "rissole.heads.rdm.pipeline:RDMPipeline",
         "rissole_export.sources:rdm_source", "rissole.heads.rdm.train:synthetic_loss", "model_channels",
         "num_res_blocks"),
    Head("rarm", "rissole.models.rarm_transformer:RARMTransformer", "rissole.models.rarm_transformer:RARMConfig",
         "rissole.heads.rarm.train:train_rarm", "rissole.heads.rarm.pipeline:RARMPipeline",
         "rissole_export.sources:rarm_source", "rissole.heads.rarm.train:synthetic_loss", "width", "depth"),
)}


# trainable kinds that are not generator heads (no pipeline, no export): the joint text-image space's
# image tower, trained by `rissole joint train`
OTHER_TRAINERS: dict[str, str] = {"joint": "rissole.embeddings.joint_train:train_joint"}


def trainer(kind: str | None, where: str = "the config") -> Any:
    """train(config, run_dir, resume, stop_after) of a head or of another trainable kind."""
    if kind in OTHER_TRAINERS:
        module, _, attr = OTHER_TRAINERS[kind].partition(":")
        return getattr(importlib.import_module(module), attr)
    return head(kind, where).load("train")


def head(kind: str | None, where: str = "the checkpoint") -> Head:
    """The registered head of `kind`; an error naming `where` and the known kinds otherwise."""
    if kind not in HEADS:
        raise CheckpointError(f"{where}: kind {kind!r} is not a head; expected one of {', '.join(sorted(HEADS))}.")
    return HEADS[kind]


def load_pipeline(ckpt: Any, database: Any = None, vqgan: Any = None, device: str = "auto") -> Any:
    """The pipeline of any head's checkpoint (rissole.heads.pipeline.Pipeline.load)."""
    from rissole.heads.pipeline import Pipeline

    return Pipeline.load(ckpt, database=database, vqgan=vqgan, device=device)
