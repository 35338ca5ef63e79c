"""Diffusion sampling in numpy terms: the noise schedule, the DDIM / DDPM samplers, the one denoise loop,
the prediction conversion (eps / v / x0 -> eps) and classifier-free guidance. Torch tensors pass
through the same code (it only uses +, *, reshapes and concatenation), so PyTorch sampling, the
exported graphs and the runtime share it."""
