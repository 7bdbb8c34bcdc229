"""Widening a trained HDemucs (`stemsplit train --init X --widen N`): every channel map is right
(exact without GroupNorms), the wide model stays close with them, and new channels learn."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stemsplit.nn.hdemucs import HDemucs
from stemsplit.nn.widen import widen_hdemucs

SOURCES = ["drums", "bass", "other", "vocals"]


def _small(channels: int = 8, **kwargs) -> HDemucs:
    # nfft 256 and depth 3: two frequency layers, then the merge layer, where the LSTM, the local
    # attention and the 4-group norms live (dconv_lstm = dconv_attn = norm_starts = 2).
    options = dict(sources=SOURCES, channels=channels, depth=3, nfft=256, dconv_lstm=2, dconv_attn=2,
                   norm_starts=2, segment=1.0)
    options.update(kwargs)
    torch.manual_seed(0)
    model = HDemucs(**options)
    with torch.no_grad():  # trained-looking weights: layer scales far from their 1e-4 start
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.uniform_(0.1, 0.5)
    return model.eval()


def _without_norms(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, child_name, nn.Identity())
    return model


def _snr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()))


@pytest.mark.parametrize("bands", [None, [0.25, 0.5]])
def test_widening_maps_every_channel_exactly_when_no_norm_sees_the_silent_ones(bands):
    small = _small(multi_freqs=bands, multi_freqs_depth=1)
    wide = widen_hdemucs(small, 12)
    assert wide.init_kwargs["channels"] == 12
    assert sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in small.parameters())
    mix = torch.randn(1, 2, 8192) * 0.2
    with torch.no_grad():
        # GroupNorms are the only layers whose output depends on the silent channels.
        expected = _without_norms(small)(mix)
        got = _without_norms(wide.eval())(mix)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_wide_model_stays_close_to_the_small_one_and_its_new_channels_learn():
    small = _small()
    wide = widen_hdemucs(small, 12).eval()
    mix = torch.randn(1, 2, 8192) * 0.2
    with torch.no_grad():
        assert _snr(small(mix), wide(mix)) > 10
    wide.train()
    wide(mix).pow(2).mean().backward()
    # the conv producing level 0's 4 new channels, and the cell gate of the LSTM's 4 new hidden
    # units (rows 24..35; its other gates wait for the cell): silent now, with a gradient to grow
    lstm = wide.encoder[2].dconv.layers[0][3].lstm
    for weight in (wide.encoder[0].conv.weight, lstm.weight_ih_l0[24:36]):
        silent = weight.detach().flatten(1).abs().sum(1) == 0
        assert int(silent.sum()) == 4
        grad = wide.encoder[0].conv.weight.grad if weight.dim() == 4 else lstm.weight_ih_l0.grad[24:36]
        assert bool((grad.flatten(1)[silent].abs().sum(1) > 0).all())


def test_widening_refuses_what_it_cannot_map():
    small = _small()
    with pytest.raises(ValueError, match="fewer"):
        widen_hdemucs(small, 4)
    with pytest.raises(ValueError, match="groups"):
        # 4-group norms from level 0 on, where 10 channels do not split into 4 groups
        widen_hdemucs(_small(norm_starts=0, dconv_attn=99), 10)
    with pytest.raises(ValueError, match="only an HDemucs"):
        widen_hdemucs(nn.Linear(2, 2), 12)  # type: ignore[arg-type]
