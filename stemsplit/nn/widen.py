"""Widening a trained Hybrid Demucs: a model with more channels that starts from a smaller one's
weights, so a larger model need not relearn what the small one knows.

Every old channel keeps its weights at a mapped position of the wider layer; the new channels
start silent (their producing weights, biases and norm gains are zero, so they carry zeros and
change nothing downstream) while their consuming weights keep a fresh initialisation, so they
receive gradients from the first step. Only the GroupNorms see the silent channels, in their
statistics: that leaves the wide model close to the old one (about 17 dB from the shipped
model's output at 20 channels), a gap the first training steps close.

Owns: the channel maps of every HDemucs layer (which axis of which tensor holds which channels,
in which blocks: GLU halves, LSTM gates, attention heads, norm groups) and the copy into a
freshly built wider model. Must not: read or write files, train, or know other architectures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from stemsplit.nn.hdemucs import HDemucs
from stemsplit.nn.hybrid_layers import HybridDecoderLayer, HybridEncoderLayer, MultiBand
from stemsplit.nn.layers import BLSTM, DConv, LayerScale, LocalState


@dataclass(frozen=True)
class Axis:
    """Where each of an axis's `old` channels goes among its `new` ones (`index[i]`)."""

    old: int
    new: int
    index: torch.Tensor

    @staticmethod
    def blocked(old: int, new: int, blocks: int = 1) -> "Axis":
        """Channels in `blocks` equal groups (norm groups, heads); each old group's channels lead
        the same group of the wider axis."""
        if old % blocks or new % blocks or new < old:
            raise ValueError(f"cannot widen {old} channels in {blocks} groups to {new}")
        size_old, size_new = old // blocks, new // blocks
        i = torch.arange(old)
        return Axis(old, new, (i // size_old) * size_new + i % size_old)

    def repeat(self, times: int) -> "Axis":
        """The axis of `times` such axes side by side (GLU halves, LSTM gates, two directions)."""
        index = torch.cat([self.index + k * self.new for k in range(times)])
        return Axis(self.old * times, self.new * times, index)


def same(size: int) -> Axis:
    return Axis(size, size, torch.arange(size))


def widen_hdemucs(model: HDemucs, channels: int) -> HDemucs:
    """A new HDemucs like `model` with `channels` in its first layer (and the same growth)."""
    if type(model) is not HDemucs:
        raise ValueError(f"only an HDemucs can be widened, not a {type(model).__name__}")
    kwargs = dict(model.init_kwargs)
    if kwargs.get("channels_time") is not None:
        raise ValueError("a model with its own channels_time cannot be widened")
    if channels < kwargs["channels"]:
        raise ValueError(f"cannot widen {kwargs['channels']} channels to fewer ({channels})")
    kwargs["channels"] = channels
    wide = HDemucs(**kwargs)
    wide.segment = model.segment
    old_params = dict(model.named_parameters())
    with torch.no_grad():
        for name, rule in _rules(model, wide, kwargs["norm_groups"]).items():
            param = wide.get_parameter(name)
            param.copy_(rule(old_params[name], param))
    return wide


# -- the channel maps ------------------------------------------------------------------------------

Rule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _layer(module: nn.Module) -> nn.Module:
    """The first (or only) layer of an encoder/decoder slot; multi-band slots share their sizes."""
    return module.layers[0] if isinstance(module, MultiBand) else module


def _rules(old: HDemucs, new: HDemucs, groups: int) -> dict[str, Rule]:
    """One copy rule per parameter of `new`, keyed by name."""
    def main_axis(level: int) -> Axis:
        size_old = _layer(old.encoder[level]).conv.weight.shape[0]
        size_new = _layer(new.encoder[level]).conv.weight.shape[0]
        # Levels whose size splits into the norm groups keep each old group within its new group.
        fits = size_old % groups == 0 and size_new % groups == 0
        return Axis.blocked(size_old, size_new, groups if fits else 1)

    rules: dict[str, Rule] = {}
    branches = [("encoder", old.encoder, new.encoder, False), ("tencoder", old.tencoder, new.tencoder, False),
                ("decoder", old.decoder, new.decoder, True), ("tdecoder", old.tdecoder, new.tdecoder, True)]
    for branch, old_list, new_list, decoding in branches:
        count = len(old_list)
        for slot, (old_slot, new_slot) in enumerate(zip(old_list, new_list)):
            level = count - 1 - slot if decoding else slot
            for path, old_layer in old_slot.named_modules():
                if not isinstance(old_layer, (HybridEncoderLayer, HybridDecoderLayer)):
                    continue
                prefix = f"{branch}.{slot}." + (f"{path}." if path else "")
                new_layer = new_slot.get_submodule(path) if path else new_slot
                if decoding:
                    last = level == 0
                    out_axis = same(new_layer.conv_tr.weight.shape[1]) if last else main_axis(level - 1)
                    _decoder_rules(rules, prefix, old_layer, new_layer, main_axis(level), out_axis)
                else:
                    inputs = main_axis(level - 1) if level else same(old_layer.conv.weight.shape[1])
                    _encoder_rules(rules, prefix, old_layer, new_layer, inputs, main_axis(level))
    if old.freq_emb is not None:
        rules["freq_emb.embedding.weight"] = _copy(None, main_axis(0), produces=1)
    missing = {name for name, _ in new.named_parameters()} - set(rules)
    if missing:
        raise ValueError(f"no channel map for {sorted(missing)[:3]}")
    return rules


def _encoder_rules(rules: dict[str, Rule], prefix: str, layer: HybridEncoderLayer, new_layer: nn.Module,
                   inputs: Axis, outputs: Axis) -> None:
    rules[prefix + "conv.weight"] = _copy(outputs, inputs)
    rules[prefix + "conv.bias"] = _copy(outputs)
    if layer.empty:
        return
    _norm_rules(rules, prefix + "norm1", layer.norm1, outputs)
    _rewrite_and_dconv_rules(rules, prefix, layer, new_layer, outputs, "norm2")


def _decoder_rules(rules: dict[str, Rule], prefix: str, layer: HybridDecoderLayer, new_layer: nn.Module,
                   inputs: Axis, outputs: Axis) -> None:
    # A transposed convolution stores (in, out, ...).
    rules[prefix + "conv_tr.weight"] = _copy(inputs, outputs, produces=1)
    rules[prefix + "conv_tr.bias"] = _copy(outputs)
    _norm_rules(rules, prefix + "norm2", layer.norm2, outputs)
    if layer.empty:
        return
    _rewrite_and_dconv_rules(rules, prefix, layer, new_layer, inputs, "norm1")


def _rewrite_and_dconv_rules(rules: dict[str, Rule], prefix: str, layer: nn.Module, new_layer: nn.Module,
                             channels: Axis, rewrite_norm: str) -> None:
    """The GLU rewrite conv (and its norm, named `rewrite_norm`) and the DConv branch of a layer
    working at `channels`; encoder and decoder layers name the norm differently."""
    if layer.rewrite is not None:
        rules[prefix + "rewrite.weight"] = _copy(channels.repeat(2), channels)
        rules[prefix + "rewrite.bias"] = _copy(channels.repeat(2))
        _norm_rules(rules, prefix + rewrite_norm, getattr(layer, rewrite_norm), channels.repeat(2))
    if layer.dconv is not None:
        _dconv_rules(rules, prefix + "dconv.", layer.dconv, new_layer.dconv, channels)


def _norm_rules(rules: dict[str, Rule], prefix: str, norm: nn.Module, axis: Axis) -> None:
    if not isinstance(norm, nn.GroupNorm):
        return
    groups = norm.num_groups
    if groups > 1 and (axis.old % groups or not torch.equal(axis.index // (axis.new // groups),
                                                             torch.arange(axis.old) // (axis.old // groups))):
        raise ValueError(f"{prefix}: {axis.old} channels do not split into {norm.num_groups} groups")
    # Silent channels join the statistics (mean and variance shrink); rescaling the old gains by
    # sqrt(old / new), exact for zero-mean inputs, measured worse on the shipped model than none.
    rules[prefix + ".weight"] = _copy(axis)
    rules[prefix + ".bias"] = _copy(axis)


def _dconv_rules(rules: dict[str, Rule], prefix: str, dconv: DConv, wide: DConv, outer: Axis) -> None:
    for index, block in enumerate(dconv.layers):
        first = block[0]
        heads = next((m.heads for m in block if isinstance(m, LocalState)), 1)
        hidden_old = first.weight.shape[0]
        hidden = Axis.blocked(hidden_old, wide.layers[index][0].weight.shape[0], heads)
        for position, module in enumerate(block):
            name = f"{prefix}layers.{index}.{position}"
            if position == 0:
                rules[name + ".weight"] = _copy(hidden, outer)
                rules[name + ".bias"] = _copy(hidden)
            elif isinstance(module, nn.GroupNorm):
                _norm_rules(rules, name, module, hidden if position == 1 else outer.repeat(2))
            elif isinstance(module, BLSTM):
                _blstm_rules(rules, name + ".", module, hidden)
            elif isinstance(module, LocalState):
                _local_state_rules(rules, name + ".", module, hidden)
            elif isinstance(module, nn.Conv1d):
                rules[name + ".weight"] = _copy(outer.repeat(2), hidden)
                rules[name + ".bias"] = _copy(outer.repeat(2))
            elif isinstance(module, LayerScale):
                rules[name + ".scale"] = _scale_copy(outer)


def _blstm_rules(rules: dict[str, Rule], prefix: str, blstm: BLSTM, hidden: Axis) -> None:
    gates = hidden.repeat(4)  # input, forget, cell, output gates, each `hidden` wide
    for layer in range(blstm.lstm.num_layers):
        inputs = hidden if layer == 0 else hidden.repeat(2)
        for suffix in ("", "_reverse"):
            rules[f"{prefix}lstm.weight_ih_l{layer}{suffix}"] = _copy(gates, inputs)
            rules[f"{prefix}lstm.weight_hh_l{layer}{suffix}"] = _copy(gates, hidden)
            rules[f"{prefix}lstm.bias_ih_l{layer}{suffix}"] = _copy(gates)
            rules[f"{prefix}lstm.bias_hh_l{layer}{suffix}"] = _copy(gates)
    rules[prefix + "linear.weight"] = _copy(hidden, hidden.repeat(2))
    rules[prefix + "linear.bias"] = _copy(hidden)


def _local_state_rules(rules: dict[str, Rule], prefix: str, state: LocalState, hidden: Axis) -> None:
    # Logits are divided by the square root of the head width; the old query weights make up for
    # the wider heads.
    boost = math.sqrt(hidden.new / hidden.old)
    for name in ("content", "key", "proj"):
        rules[f"{prefix}{name}.weight"] = _copy(hidden, hidden)
        rules[f"{prefix}{name}.bias"] = _copy(hidden)
    rules[prefix + "query.weight"] = _copy(hidden, hidden, scale=boost)
    rules[prefix + "query.bias"] = _copy(hidden, scale=boost)
    if state.ndecay:
        decays = state.heads * state.ndecay
        rules[prefix + "query_decay.weight"] = _copy(same(decays), hidden)
        rules[prefix + "query_decay.bias"] = _copy(same(decays))


# -- the copies ------------------------------------------------------------------------------------

def _copy(rows: Axis | None, cols: Axis | None = None, *, produces: int = 0, scale: float = 1.0) -> Rule:
    """Copy an old tensor into the fresh wide one: axis 0 along `rows`, axis 1 along `cols` (None:
    unchanged). The axis that `produces` channels is silenced at its new positions; consuming
    positions keep the fresh initialisation."""

    def rule(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        wide = fresh.clone()
        silent = rows if produces == 0 else cols
        if silent is not None:
            keep = torch.zeros(silent.new, dtype=torch.bool)
            keep[silent.index] = True
            if produces == 0:
                wide[~keep] = 0
            else:
                wide[:, ~keep] = 0
        first = rows.index if rows is not None else torch.arange(old.shape[0])
        if old.dim() == 1:
            wide[first] = old * scale
            return wide
        second = cols.index if cols is not None else torch.arange(old.shape[1])
        wide[first[:, None], second[None, :]] = old * scale
        return wide

    return rule


def _scale_copy(axis: Axis) -> Rule:
    """LayerScale: old scales where they were, the mean old scale for new channels (they multiply
    silent channels, so any value keeps the output; the mean lets them join at the same strength)."""

    def rule(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        wide = torch.full_like(fresh, float(old.mean()))
        wide[axis.index] = old
        return wide

    return rule
