"""VQ-GAN losses: L1 (+ optional LPIPS) reconstruction, codebook/commitment, PatchGAN hinge with the adaptive weight.

taming's own loss class builds LPIPS with downloaded VGG weights on construction, which fails
offline; this module needs no weights unless the user passes an LPIPS file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init


def build_discriminator(in_channels: int, ndf: int, n_layers: int) -> nn.Module:
    """PatchGAN discriminator (taming's NLayerDiscriminator) with its N(0, 0.02) initialisation."""
    disc = NLayerDiscriminator(input_nc=in_channels, ndf=ndf, n_layers=n_layers)
    disc.apply(weights_init)
    return disc


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQ-GAN paper, Eq. 7: lambda = |grad_L(rec)| / (|grad_L(gan)| + 1e-4) at the decoder's last layer."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def grey_distance(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean distance of a pixel from grey, in grey levels (0-255), for RGB images in [-1, 1]:
    the largest of |R-G|, |G-B|, |R-B| at each pixel, averaged. 0 for grey images; how much colour a
    reconstruction kept is this figure beside the data's."""
    x = x.float()
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    d = torch.maximum(torch.maximum((r - g).abs(), (g - b).abs()), (r - b).abs())
    return d.flatten(1).mean(1) * 127.5


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-12))
