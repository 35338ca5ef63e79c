"""First stage: the VQ-GAN whose latent space RISSOLE, RDM and RARM work in."""

from rissole.autoencoder.vqgan import VQGANConfig, VQModel, load_vqgan

__all__ = ["VQGANConfig", "VQModel", "load_vqgan"]
