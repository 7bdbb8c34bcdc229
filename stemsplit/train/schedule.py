"""Learning-rate schedules: cosine with linear warmup, and reduce-on-plateau.

Owns: the learning-rate multiplier as a function of the step (cosine, constant) times a factor
that validation plateaus shrink. The schedule is a pure function of (step, plateau state), so
resuming needs only the small `state_dict` here. Must not: touch the optimiser beyond setting lr.
"""
from __future__ import annotations

import math
from typing import Any


class Schedule:
    """lr(step) = base_lr * warmup/cosine shape(step) * plateau factor."""

    def __init__(self, kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 min_ratio: float = 0.0, plateau_factor: float = 0.5, plateau_patience: int = 2):
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.factor = 1.0
        self.best: float | None = None
        self.bad_checks = 0

    def shape(self, step: int) -> float:
        """Multiplier at `step` (0-based) from warmup and, for "cosine", the cosine decay."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind != "cosine":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.base_lr * self.shape(step) * self.factor

    def apply(self, optimizer: Any, step: int) -> float:
        """Set every parameter group's lr for `step` (times the group's `lr_scale`, if it has one,
        for a module trained at its own rate); return the run's lr."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def observe(self, score: float) -> None:
        """Feed a validation score (higher is better); with "plateau", shrink lr once more than
        `plateau_patience` checks in a row brought no improvement."""
        if self.kind != "plateau":
            return
        if self.best is None or score > self.best:
            self.best = score
            self.bad_checks = 0
            return
        self.bad_checks += 1
        if self.bad_checks > self.plateau_patience:
            self.factor *= self.plateau_factor
            self.bad_checks = 0

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "best": self.best, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor = float(state["factor"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_checks = int(state["bad_checks"])
