"""The model a training run optimises: built from the config or loaded with `init` (and widened),
its frozen encoder, and its optimiser parameter groups.

Must not: run steps, read data or write files (trainer.py does).
"""
from __future__ import annotations

from typing import Any

import torch

from stemsplit.errors import ConfigError, ModelError
from stemsplit.train.config import TrainConfig

ENCODER_PREFIXES = ("encoder.", "tencoder.")
"""Parameter-name prefixes of the (waveform and spectral) encoders in every nn architecture."""


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """A fresh model from architecture + kwargs, or the model named by `cfg.init` to fine-tune."""
    if cfg.init is not None:
        from stemsplit.models.resolve import load_model
        from stemsplit.nn.bag import is_bag

        model = load_model(cfg.init)
        if is_bag(model):
            raise ModelError(f"{cfg.init}: a bag of models cannot be fine-tuned; pick one of its members")
        if cfg.widen is not None:
            from stemsplit.nn.widen import widen_hdemucs

            try:
                model = widen_hdemucs(model, cfg.widen)
            except ValueError as exc:
                raise ConfigError(f"--widen {cfg.widen}: {cfg.init}: {exc}") from None
        return model
    from stemsplit.models.checkpoint import build_model as build

    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("sources", list(cfg.sources))
    kwargs.setdefault("samplerate", cfg.samplerate)
    kwargs.setdefault("audio_channels", cfg.channels)
    if cfg.segment is not None:
        kwargs.setdefault("segment", cfg.segment)
    return build(cfg.architecture, kwargs)


def freeze_encoder(model: torch.nn.Module) -> int:
    """Stop gradients into the encoder layers; return how many tensors were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if name.startswith(ENCODER_PREFIXES):
            param.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise ConfigError(f"--freeze-encoder: {type(model).__name__} has no parameters named encoder.*")
    return frozen


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters: the run's lr and weight decay, except where a
    module asks for its own (`make_optim_group`: HTDemucs's transformer with `t_lr` and
    `t_weight_decay`, as the reference trains it).

    A group's `lr_scale` is its lr over the run's, so the schedule keeps it in proportion.
    """
    groups: list[dict[str, Any]] = []
    claimed: set[int] = set()
    for module in model.modules():
        make = getattr(module, "make_optim_group", None)
        if make is None:
            continue
        group = make()
        params = [p for p in group["params"] if p.requires_grad and id(p) not in claimed]
        claimed.update(id(p) for p in group["params"])
        if params:
            own = group.get("lr")
            if own is not None and (isinstance(own, bool) or not isinstance(own, (int, float))):
                raise ConfigError(f"{type(module).__name__}: its own learning rate must be a number, got {own!r}")
            scale = own / lr if own is not None else 1.0
            groups.append({"params": params, "weight_decay": group.get("weight_decay", weight_decay),
                           "lr": lr * scale, "lr_scale": scale})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    return [{"params": rest, "weight_decay": weight_decay, "lr": lr, "lr_scale": 1.0}, *groups]
