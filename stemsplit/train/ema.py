"""Exponential moving average of model weights.

Owns: the shadow copy of parameters and buffers, its update rule, and swapping it into the model
for validation and saving. Must not: decide when to update (the trainer does, once per step).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class EMA:
    """shadow = decay * shadow + (1 - decay) * weights, for floating-point tensors; others copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if value.is_floating_point():
                shadow.lerp_(value.detach(), 1 - self.decay)
            else:
                shadow.copy_(value)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Temporarily load the averaged weights into `model`; restore the live ones afterwards."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(live)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)
