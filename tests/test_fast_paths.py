"""The speed paths: kernel-1 convolutions as batched matrix products, per-head bf16 attention,
and the Separator's / CLI's reduced precisions (`bf16`; `fp16`, CUDA only). Each must compute the
same thing as the plain path (the float32 ones to float32 rounding, bf16/fp16 to within what the
half-width floats can hold). No timings here: speed is measured by benchmarks/vs_demucs.py.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import soundfile as sf
import torch
from conftest import SOURCES, run_cli, tone
from torch import nn
from torch.nn import functional as F

import stemsplit.nn as snn
from stemsplit.errors import ModelError
from stemsplit.nn.layers import PointwiseConv1d
from stemsplit.nn.transformer import _attend_by_head
from stemsplit.engine.separator import Separator


def tiny_htdemucs(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return snn.HTDemucs(sources=SOURCES, channels=16, depth=2, nfft=512, t_layers=2, bottom_channels=32,
                        dconv_mode=3, segment=Fraction(1, 2), samplerate=8000).eval()


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()))


@pytest.mark.parametrize("shape", [(37, 6, 50), (1, 24, 300), (3, 5, 1)])
def test_pointwise_conv_matches_conv1d_with_the_same_parameters_and_initialisation(shape):
    batch, chin, steps = shape
    torch.manual_seed(3)
    plain = nn.Conv1d(chin, 2 * chin, 1)
    torch.manual_seed(3)
    fast = PointwiseConv1d(chin, 2 * chin)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, fast.state_dict()[key])
    x = torch.randn(batch, chin, steps)
    assert torch.allclose(fast(x), plain(x), atol=1e-6)
    assert torch.allclose(fast(x[0]), plain(x[0]), atol=1e-6)  # unbatched input falls back to the conv
    fast(x).sum().backward()  # trainable like the conv
    assert fast.weight.grad is not None and fast.weight.grad.shape == plain.weight.shape


def test_per_head_attention_matches_scaled_dot_product_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 30, 8), torch.randn(2, 4, 45, 8), torch.randn(2, 4, 45, 8)
    expected = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(_attend_by_head(q, k, v), expected, atol=1e-6)
    got = _attend_by_head(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert got.dtype == torch.bfloat16 and snr_db(expected, got.float()) > 30


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast is CUDA only")


@pytest.mark.parametrize("device, precision", [("cpu", "bf16"), pytest.param("cuda", "fp16", marks=_CUDA)])
def test_reduced_precision_stays_close_to_fp32_and_fp32_is_unchanged(device, precision):
    model = tiny_htdemucs()
    torch.manual_seed(1)
    mix = 0.3 * torch.randn(2, 8000 * 2 + 11)
    fp32 = Separator(model, device=device, precision="fp32").separate_tensor(mix)
    again = Separator(model, device=device, precision="fp32").separate_tensor(mix)
    reduced = Separator(model, device=device, precision=precision).separate_tensor(mix)
    assert torch.equal(fp32, again)
    assert reduced.dtype == torch.float32 and reduced.shape == fp32.shape
    assert not torch.equal(reduced, fp32)  # it really ran in the reduced precision
    assert snr_db(fp32, reduced) > 25


def test_separator_refuses_unknown_precision_and_fp16_off_cuda():
    with pytest.raises(ModelError, match="unknown precision 'int4'"):
        Separator(tiny_htdemucs(), device="cpu", precision="int4")
    with pytest.raises(ModelError, match="fp16 precision is only available on CUDA, not cpu"):
        Separator(tiny_htdemucs(), device="cpu", precision="fp16")


def test_cli_precision_flag_writes_stems(tmp_path, tiny_checkpoint):
    sf.write(tmp_path / "song.wav", tone(1.0, 44100, 2), 44100)
    result = run_cli("separate", "song.wav", "--model-path", str(tiny_checkpoint), "--precision", "bf16", "-d", "cpu",
                     "-o", "out", "--filename", "{stem}.{ext}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for stem in SOURCES:
        audio, rate = sf.read(tmp_path / "out" / f"{stem}.wav")
        assert rate == 44100 and audio.shape == (44100, 2)
    bad = run_cli("separate", "song.wav", "--model-path", str(tiny_checkpoint), "--precision", "fp8", cwd=tmp_path)
    assert bad.returncode == 2
    if not torch.cuda.is_available():
        cpu_fp16 = run_cli("separate", "song.wav", "--model-path", str(tiny_checkpoint), "--precision", "fp16",
                           "-d", "cpu", cwd=tmp_path)
        assert cpu_fp16.returncode == 1 and "fp16 precision is only available on CUDA" in cpu_fp16.stderr


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bf16_only_where_native_and_only_for_families_that_hold_quality(monkeypatch, native):
    from stemsplit import runtime
    from stemsplit.nn.bag import BagOfModels

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    hybrid = tiny_htdemucs()
    assert Separator(hybrid, device="cpu").precision == ("bf16" if native else "fp32")
    v2 = snn.Demucs(sources=SOURCES, channels=4, depth=2, lstm_layers=0, samplerate=8000, segment=1).eval()
    assert Separator(v2, device="cpu").precision == "fp32"  # its family fails the 40 dB gate
    mixed = BagOfModels([snn.HDemucs(sources=SOURCES, channels=4, depth=2, nfft=256), snn.HDemucs(
        sources=SOURCES, channels=4, depth=2, nfft=256)])
    assert Separator(mixed, device="cpu").precision == ("bf16" if native else "fp32")
    assert Separator(hybrid, device="cpu", precision="fp32").precision == "fp32"


def test_the_bf16_quality_gate_holds_for_the_embedded_model_at_small_size():
    """auto picks bf16 for HDemucs (the embedded model) and HTDemucs: worst stem >= 40 dB SNR from
    fp32. Pinned on one second of a generated song; benchmarks/RESULTS.md ("fp32 against the default
    precision") measures whole evaluation sets."""
    from stemsplit.models.resolve import load_model
    from stemsplit.synth.song import render_song

    model = load_model(None)
    mix = torch.from_numpy(render_song(3, 1.5, 44100, 2)["mixture"]).float()
    fp32 = Separator(model, device="cpu", precision="fp32").separate_tensor(mix)
    bf16 = Separator(model, device="cpu", precision="bf16").separate_tensor(mix)
    assert min(snr_db(fp32[i], bf16[i]) for i in range(4)) >= 40
    model = tiny_htdemucs()
    mix = 0.3 * torch.randn(2, 8000 * 2)
    fp32 = Separator(model, device="cpu", precision="fp32").separate_tensor(mix)
    bf16 = Separator(model, device="cpu", precision="bf16").separate_tensor(mix)
    assert min(snr_db(fp32[i], bf16[i]) for i in range(4)) >= 40
