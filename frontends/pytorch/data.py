"""Torch-side data: hwsim.data datasets as tensors, per-channel normalisation, seeded batches and augmentation."""

from __future__ import annotations

import numpy as np
import torch

from hwsim.data import load_dataset


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of NCHW images in [0, 1] (float64 sums, rounded to float32)."""
    m = x.astype(np.float64).mean(axis=(0, 2, 3))
    s = x.astype(np.float64).std(axis=(0, 2, 3))
    return [float(np.float32(v)) for v in m], [float(np.float32(max(v, 1e-6))) for v in s]


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x − mean)/std per channel."""
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random shift by up to ``pad`` pixels (zero-padded crop) and, if ``flip``, random horizontal flip."""
    n, _, h, w = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        f = torch.rand(n, generator=gen) < 0.5
        x = torch.where(f.reshape(-1, 1, 1, 1), torch.flip(x, dims=[3]), x)
    return x


def augmentation_for(name: str) -> tuple[int, bool]:
    """(shift pad, flip): CIFAR random crop 4 + flip; MNIST-like data small shifts of 2, no flip."""
    return (4, True) if name.lower().startswith("cifar") else (2, False)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches of one epoch: a permutation from a generator seeded with (seed, epoch) — independent of any global RNG."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    perm = torch.randperm(n, generator=g)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


__all__ = ["load_dataset", "channel_stats", "normalise", "augment", "augmentation_for", "epoch_batches"]
