"""Exponential moving average of model weights.

Owns: the shadow copy of parameters and buffers, its update rule, and swapping it into the model
for validation and saving. Must not: decide when to update (the trainer does, once per step).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_UPDATES = "__ema_updates__"  # not a model key: state_dict keys never start with '_'


class EMA:
    """shadow = d * shadow + (1 - d) * weights, for floating-point tensors; others copied.

    The effective decay d = min(decay, (1 + n) / (10 + n)) after n updates warms up from 0.1:
    without it, a slow average (0.999) still holds mostly the random initialisation after a few
    hundred steps, so short runs would validate and ship an untrained-looking model.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @property
    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.current_decay
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if value.is_floating_point():
                shadow.lerp_(value.detach(), 1 - decay)
            else:
                shadow.copy_(value)
        self.updates += 1

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
        return {**self.shadow, _UPDATES: torch.tensor(self.updates, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop(_UPDATES))
        for name, value in state.items():
            self.shadow[name].copy_(value)
