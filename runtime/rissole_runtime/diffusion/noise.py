"""The one noise source of diffusion sampling, shared by the PyTorch pipelines and the edge runtime.

x_T of all n samples comes first from np.random.default_rng(seed) as float32 standard normal in the
layout (n, *sample_shape) (C order, so sample j's x_T does not depend on n). The noise of every
stochastic step (DDPM, DDIM with eta > 0) of sample j comes from that sample's own child stream,
SeedSequence(seed).spawn(...)[j], one draw of sample_shape per stochastic step in step order, so an
image does not depend on the batch or chunk it was denoised in (the runtime denoises max_samples at
a time, the pipelines all at once). The same seed therefore gives the same image everywhere.

numpy only: the torch side wraps the arrays with torch.from_numpy.
"""

from __future__ import annotations

import numpy as np


class NoiseSource:
    """x_T and the per-step noise of n samples of shape `sample_shape`, from one seed."""

    def __init__(self, seed: int, n: int, sample_shape: tuple[int, ...]) -> None:
        self.seed, self.n, self.sample_shape = int(seed), int(n), tuple(int(d) for d in sample_shape)
        self._streams: dict[int, np.random.Generator] = {}

    def initial(self) -> np.ndarray:
        """x_T, float32 (n, *sample_shape)."""
        return np.random.default_rng(self.seed).standard_normal((self.n, *self.sample_shape), dtype=np.float32)

    def _stream(self, j: int) -> np.random.Generator:
        if j not in self._streams:
            self._streams[j] = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(j,)))
        return self._streams[j]

    def step(self, start: int, stop: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The next stochastic step's noise of samples start..stop-1, float32 (stop - start, *sample_shape),
        reshaped to `shape` when given (e.g. with the blocks folded into the batch)."""
        if not 0 <= start < stop <= self.n:
            raise ValueError(f"samples {start}..{stop - 1} asked of a noise source for {self.n}")
        out = np.stack([self._stream(j).standard_normal(self.sample_shape, dtype=np.float32) for j in range(start, stop)])
        return out if shape is None else out.reshape(shape)
