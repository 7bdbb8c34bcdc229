"""Positional embeddings of the HTDemucs transformer: 1D sinusoidal, CAPE, learnt ("scaled") and 2D.

Owns the position tables and their formulas (values match demucs 4.1.0). Must not: know about
attention, layers or the U-Nets (transformer.py and htdemucs.py use these tables).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _sin_cos(positions: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """positions (..., 1) -> (..., dim): cosines then sines at geometric frequencies."""
    half = dim // 2
    exponents = torch.arange(half, device=positions.device) / (half - 1)
    phase = positions / (max_period ** exponents)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def sin_embedding(length: int, dim: int, shift: int = 0, device: Any = "cpu",
                  max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of positions shift .. shift + length - 1: (length, 1, dim)."""
    if dim % 2:
        raise ValueError("sinusoidal embedding needs an even dimension")
    positions = shift + torch.arange(length, device=device).view(-1, 1, 1)
    return _sin_cos(positions, dim, max_period)


def cape_embedding(length: int, dim: int, batch: int, mean_normalize: bool, augment: bool,
                   max_global_shift: float = 0.0, max_local_shift: float = 0.0,
                   max_scale: float = 1.0, device: Any = "cpu",
                   max_period: float = 10000.0) -> torch.Tensor:
    """Continuous augmented positional embedding (Likhomanenko et al. 2021): (length, batch, dim).

    Positions are optionally centred; with `augment` (training) they get a random global shift
    per item, a random local jitter per position and a random global log-scale.
    """
    if dim % 2:
        raise ValueError("sinusoidal embedding needs an even dimension")
    positions = torch.arange(length, dtype=torch.float64).view(-1, 1, 1).repeat(1, batch, 1)
    if mean_normalize:
        positions = positions - positions.mean(dim=0, keepdim=True)
    if augment:
        def uniform(bound: float, *shape: int) -> torch.Tensor:
            return (torch.rand(*shape, dtype=torch.float64) * 2 - 1) * bound
        shift = uniform(max_global_shift, 1, batch, 1)
        jitter = uniform(max_local_shift, length, batch, 1)
        log_scale = uniform(math.log(max_scale), 1, batch, 1)
        positions = (positions + shift + jitter) * log_scale.exp()
    return _sin_cos(positions.to(device), dim, max_period).float()


def sin_embedding_2d(dim: int, height: int, width: int, device: Any = "cpu",
                     max_period: float = 10000.0) -> torch.Tensor:
    """2D sinusoidal embedding (1, dim, height, width).

    The first half of the channels encodes the width position (sin on even, cos on odd
    channels), the second half the height position.
    """
    if dim % 4:
        raise ValueError(f"2D sinusoidal embedding needs a dimension divisible by 4, got {dim}")
    half = dim // 2
    rates = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))
    along_w = torch.arange(0.0, width)[:, None] * rates  # (width, half / 2)
    along_h = torch.arange(0.0, height)[:, None] * rates
    table = torch.zeros(dim, height, width)
    table[0:half:2] = torch.sin(along_w).t()[:, None, :].expand(-1, height, -1)
    table[1:half:2] = torch.cos(along_w).t()[:, None, :].expand(-1, height, -1)
    table[half::2] = torch.sin(along_h).t()[:, :, None].expand(-1, -1, width)
    table[half + 1::2] = torch.cos(along_h).t()[:, :, None].expand(-1, -1, width)
    return table[None].to(device)


class LearntPositions(nn.Module):
    """Learnt positional table stored divided by `boost` (faster effective learning rate)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 1.0,
                 boost: float = 3.0) -> None:
        super().__init__()
        self.boost = boost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            self.embedding.weight.mul_(scale / boost)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices) * self.boost
