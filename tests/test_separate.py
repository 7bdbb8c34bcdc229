"""The Separator: exact overlap-add, padding paths, shifts, bags, streaming, and official parity."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import GainModel, gain_expected, tiny_demucs

from stemsplit.errors import AudioError, ModelError, SettingsError
from stemsplit.engine.separator import Separator, resolve_device
from stemsplit.pipeline import separate


def _mix(seconds: float, samplerate: int = 8000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, int(seconds * samplerate) + 37, generator=g) * 0.3 + 0.05


@pytest.mark.parametrize("padding", ["none", "valid", "fixed"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"overlap": 0.5, "batch_size": 3}, {"shifts": 2, "seed": 4}, {"shifts": 3, "batch_size": 4, "segment": 0.3},
     {"overlap": 0.0, "segment": 0.25}],
    ids=["default", "overlap-batch", "shifts", "shifts-batch-segment", "no-overlap"],
)
def test_overlap_add_reproduces_a_full_length_forward_exactly(padding, kwargs):
    model = GainModel(padding=padding)
    mix = _mix(3.3)
    out = Separator(model, device="cpu", **kwargs).separate_tensor(mix)
    assert out.shape == (4, 2, mix.shape[-1])
    assert (out - gain_expected(model, mix)).abs().max() < 1e-6


def test_shorter_than_a_segment_and_silence_work():
    model = GainModel(padding="fixed")
    short = _mix(0.01)
    out = Separator(model, device="cpu", shifts=1).separate_tensor(short)
    assert (out - gain_expected(model, short)).abs().max() < 1e-6
    silent = Separator(model, device="cpu").separate_tensor(torch.zeros(2, 20000))
    assert torch.isfinite(silent).all() and silent.abs().max() == 0


@pytest.mark.parametrize("segment", [1e9, 1e300, float("inf")])
@pytest.mark.parametrize("shifts", [0, 2])
def test_a_segment_longer_than_the_track_covers_it_whole(segment, shifts):
    """The weight was allocated at the requested length: 1e9 s asked for terabytes."""
    model = GainModel()
    mix = _mix(1.5)
    out = Separator(model, device="cpu", segment=segment, shifts=shifts).separate_tensor(mix)
    assert (out - gain_expected(model, mix)).abs().max() < 1e-6
    assert model.calls == max(shifts, 1)  # one forward pass over the whole track per shift
    network = tiny_demucs(samplerate=8000)
    whole = Separator(network, device="cpu", segment=60).separate_tensor(mix)  # one segment already
    torch.testing.assert_close(Separator(network, device="cpu", segment=segment).separate_tensor(mix), whole)


def test_a_segment_that_is_no_number_of_seconds_is_refused():
    with pytest.raises(ModelError, match="segment must be a positive number of seconds, got nan"):
        Separator(GainModel(), device="cpu", segment=float("nan"))
    with pytest.raises(ModelError, match="longer than"):  # a fixed-length model keeps its own limit
        Separator(GainModel(padding="fixed"), device="cpu", segment=float("inf"))


def test_non_finite_mix_is_refused():
    mix = _mix(0.5)
    mix[0, 10] = float("nan")
    with pytest.raises(AudioError, match="NaN"):
        Separator(GainModel(), device="cpu").separate_tensor(mix)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_estimate_is_refused_by_the_api(bad):
    """`separate()` handed NaN stems back silently; only the file writers checked."""
    model = GainModel(gains=(0.1, bad, 0.3, 0.4))
    with pytest.raises(ModelError, match=r"estimate has NaN or infinite samples$"):
        separate(torch.rand(2, 8000) - 0.5, model, device="cpu")
    with pytest.raises(ModelError, match=r"infinite samples \(it ran in bf16: try fp32\)"):
        Separator(model, device="cpu", precision="bf16").separate_tensor(torch.rand(2, 8000) - 0.5)


def test_stream_blocks_are_consecutive_and_do_not_grow_with_track_length():
    model = GainModel(segment=0.5)
    sizes = {}
    for seconds in (3, 30):
        mix = _mix(seconds)
        blocks = list(Separator(model, device="cpu", shifts=2, batch_size=2).stream(mix))
        starts = [start for start, _ in blocks]
        lengths = [block.shape[-1] for _, block in blocks]
        assert starts == list(np.cumsum([0] + lengths[:-1]))
        assert sum(lengths) == mix.shape[-1]
        sizes[seconds] = max(lengths)
    # each block is at most a couple of strides long, however long the track is
    assert sizes[30] <= 2 * 4000 and sizes[30] == sizes[3]


def test_progress_reports_every_segment_once():
    calls = []
    model = GainModel()
    Separator(model, device="cpu", shifts=2, batch_size=2, progress=lambda d, t: calls.append((d, t))).separate_tensor(
        _mix(3))
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1]
    assert all(b[0] > a[0] for a, b in zip(calls, calls[1:]))
    assert model.calls == len(calls) - 1


def test_shifts_are_deterministic_per_seed():
    model = tiny_demucs(samplerate=8000)
    mix = _mix(2)
    a = Separator(model, device="cpu", shifts=2, seed=1).separate_tensor(mix)
    b = Separator(model, device="cpu", shifts=2, seed=1).separate_tensor(mix)
    c = Separator(model, device="cpu", shifts=2, seed=2).separate_tensor(mix)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_requested_sources_are_selected_in_order():
    model = GainModel()
    mix = _mix(1.5)
    full = Separator(model, device="cpu").separate_tensor(mix)
    some = Separator(model, device="cpu").separate_tensor(mix, ["vocals", "drums"])
    assert torch.equal(some, full[[3, 0]])
    with pytest.raises(ModelError, match="unknown stem"):
        Separator(model, device="cpu").separate_tensor(mix, ["flute"])


def test_bag_weights_and_member_skipping():
    from stemsplit.nn.bag import BagOfModels

    a, b = GainModel(gains=(1.0, 2.0, 3.0, 4.0)), GainModel(gains=(10.0, 20.0, 30.0, 40.0))
    bag = BagOfModels([a, b], weights=[[1, 1, 0, 0], [3, 0, 1, 1]])
    mix = _mix(2)
    out = Separator(bag, device="cpu", shifts=1).separate_tensor(mix)
    gains = torch.tensor([(1 + 30) / 4, 2.0, 30.0, 40.0])
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    expected = ((mix - mean) / std)[None] * gains[:, None, None] * std + mean
    assert (out - expected).abs().max() < 1e-5
    a.calls = b.calls = 0
    Separator(bag, device="cpu").separate_tensor(mix, ["other", "vocals"])
    assert a.calls == 0 and b.calls > 0


def test_devices_and_options_are_validated():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(ModelError, match="fp16 precision is only available on CUDA"):
            Separator(GainModel(), device="cpu", precision="fp16")
    with pytest.raises(ModelError, match="overlap"):
        Separator(GainModel(), device="cpu", overlap=1.0)
    with pytest.raises(SettingsError, match="longer than"):
        Separator(GainModel(padding="fixed"), device="cpu", segment=2.0)
    # stride 0: refused before any track, not once per track (the model's own 1 s at 8 kHz here)
    with pytest.raises(SettingsError, match="segment 1.0 s with overlap 0.99999 leaves no sample"):
        Separator(GainModel(), device="cpu", overlap=0.99999)
    Separator(GainModel(), device="cpu", overlap=0.9998)  # 8000 * 0.0002 = 1.6: one sample apart is fine


def test_separate_api_on_files_and_tensors(tmp_path):
    model = GainModel(samplerate=8000)
    path = tmp_path / "mono.wav"
    original = 0.3 * torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * 300)[None]
    sf.write(path, original.T.numpy(), 16000, subtype="FLOAT")
    stems = separate(path, model, device="cpu")
    assert list(stems) == model.sources
    assert all(s.shape == (1, 16000) for s in stems.values())
    total = sum(stems.values())
    # gains sum to 1: stems add back to the input, through 16 -> 8 -> 16 kHz resampling
    inner = slice(500, -500)
    assert (total - original)[:, inner].abs().max() < 0.01
    tensor_stems = separate(torch.zeros(2, 4000), model, device="cpu", sources=["bass"])
    assert list(tensor_stems) == ["bass"] and tensor_stems["bass"].shape == (2, 4000)
    for rate, frames in ((44100, 7777), (11025, 1001)):  # 44.1 -> 8 -> 44.1 kHz alone loses 5 samples
        assert separate(torch.rand(2, frames), model, device="cpu", samplerate=rate)["bass"].shape == (2, frames)
        sf.write(path, torch.rand(frames, 1).numpy(), rate)
        assert separate(path, model, device="cpu")["bass"].shape == (1, frames)


def test_separate_api_at_another_rate_keeps_the_last_samples():
    """Back at the input's rate the stems lacked the sample or two lost to rounding, padded with
    zeros: a click at the end of every stem (the CLI already gave them back). An input that
    rounds to nothing at the model's rate crashed in julius."""
    model = GainModel(samplerate=8000)
    frames = 11025 + 7  # 11025 -> 8000 -> 11025 Hz loses samples at the end
    mix = 0.5 * torch.cos(torch.arange(frames) / 11025 * 2 * torch.pi * 2).expand(2, -1)
    stems = separate(mix, model, device="cpu", samplerate=11025)
    assert stems["vocals"].shape == (2, frames)
    # near the end the signal is ~0.5, and vocals are 0.4 x the (zero-mean) mix
    torch.testing.assert_close(stems["vocals"][:, -3:], 0.4 * mix[:, -3:], atol=0.01, rtol=0)
    for empty in (torch.zeros(2, 0), torch.zeros(2, 1)):  # one sample at 11025 Hz is none at 8000
        assert separate(empty, model, device="cpu", samplerate=11025)["bass"].shape == empty.shape


# ---- parity with the official implementation (test oracle) ----------------------------------


def _official(model, mix, shifts=0, seed=0, **kwargs):
    from demucs.apply import apply_model

    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    random.seed(seed)
    out = apply_model(model, ((mix - mean) / std)[None], shifts=shifts, split=True, overlap=0.25, **kwargs)[0]
    return out * std + mean


def _official_models():
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    return {
        "demucs": Demucs(sources=["a", "b"], channels=4, depth=2, lstm_layers=0, samplerate=8000, segment=1),
        "hdemucs": HDemucs(sources=["a", "b"], channels=8, depth=2, samplerate=8000, segment=1, nfft=64),
        "htdemucs": HTDemucs(sources=["a", "b"], channels=8, depth=2, samplerate=8000, segment=1, nfft=256,
                             t_layers=1, bottom_channels=0, t_heads=2, t_hidden_scale=1.0),
    }


@pytest.mark.parametrize("name", ["demucs", "hdemucs", "htdemucs"])
def test_parity_with_official_apply_model(name):
    model = _official_models()[name].eval()
    mix = _mix(2.6, seed=3) * 0.5
    ours = Separator(model, device="cpu", batch_size=2, precision="fp32").separate_tensor(mix)
    assert (ours - _official(model, mix)).abs().max() <= 1e-4


def test_parity_with_official_shifts_and_bags():
    from demucs.apply import BagOfModels
    from demucs.demucs import Demucs

    torch.manual_seed(1)
    members = [Demucs(sources=["a", "b"], channels=4, depth=2, lstm_layers=0, samplerate=8000, segment=1)
               for _ in range(2)]
    mix = _mix(2.2, seed=5) * 0.5
    # Demucs draws no random numbers in forward, so the official shift sequence is reproducible
    assert (Separator(members[0], device="cpu", shifts=2, seed=7).separate_tensor(mix)
            - _official(members[0].eval(), mix, shifts=2, seed=7)).abs().max() <= 1e-4
    bag = BagOfModels(members, weights=[[1.0, 0.5], [0.25, 1.0]])
    assert (Separator(bag, device="cpu", shifts=1, seed=3).separate_tensor(mix)
            - _official(bag, mix, shifts=1, seed=3)).abs().max() <= 1e-4


def test_parity_on_stemsplit_htdemucs():
    from stemsplit.nn import HTDemucs

    torch.manual_seed(2)
    model = HTDemucs(sources=["a", "b"], channels=8, depth=2, samplerate=8000, segment=1, nfft=256, t_layers=1,
                     bottom_channels=0, t_heads=2, t_hidden_scale=1.0).eval()
    mix = _mix(2.3, seed=9) * 0.5
    ours = Separator(model, device="cpu", batch_size=3, precision="fp32").separate_tensor(mix)
    assert (ours - _official(model, mix)).abs().max() <= 1e-4


def test_the_package_function_separate_is_not_shadowed_by_a_module(tmp_path):
    """`stemsplit.separate` is the API function even after other names were imported lazily."""
    code = "import stemsplit; stemsplit.Separator; print(stemsplit.separate)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<function separate")


def test_memory_does_not_grow_with_shifts(tmp_path):
    """Many shifts on a short track run one after another: each lane would otherwise hold its own
    segment-long buffers (400 lanes of 6-s segments at 44.1 kHz were gigabytes). Peak RSS after 400
    shifts is compared with the same process's peak after 2, so the interpreter's own size cancels."""
    code = textwrap.dedent("""
        import resource, sys, torch
        sys.path.insert(0, {tests!r})
        from conftest import GainModel
        from stemsplit.engine.separator import Separator
        mix = torch.rand(2, 2 * 44100) - 0.5
        for shifts in (2, 400):
            model = GainModel(samplerate=44100, segment=6.0)
            out = Separator(model, device="cpu", shifts=shifts, seed=1).separate_tensor(mix)
            assert torch.isfinite(out).all() and model.calls == shifts
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """).format(tests=str(Path(__file__).parent))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    few, many = (int(v) for v in result.stdout.split()[-2:])
    assert many - few < 400, f"peak RSS {few} MB with 2 shifts, {many} MB with 400"


def test_shift_lanes_hold_at_most_two_accumulators_at_once(monkeypatch):
    """The structural half of the memory promise: with more lanes than fit side by side, no more
    than two lanes (the one running and the one handing over) hold a segment's output at once."""
    from stemsplit.engine import separator as sep

    seen: list[list] = []
    planned = sep.Separator._lanes
    monkeypatch.setattr(sep.Separator, "_lanes", lambda self, *a: seen.append(planned(self, *a)) or seen[-1])
    live = []
    accumulate = sep._Lane.accumulate

    def counting(self, offset, out):
        accumulate(self, offset, out)
        live.append(sum(lane.acc is not None for lane in seen[-1]))

    monkeypatch.setattr(sep._Lane, "accumulate", counting)
    model = GainModel(samplerate=8000, segment=2.0)
    mix = torch.rand(2, 8000) - 0.5
    out = Separator(model, device="cpu", shifts=50, seed=1).separate_tensor(mix)
    assert model.calls == 50 and max(live) <= 2
    assert torch.allclose(out, Separator(GainModel(samplerate=8000, segment=2.0), device="cpu").separate_tensor(mix),
                          atol=1e-5)  # a pointwise model's shifts all agree


def test_lanes_one_after_another_give_the_same_stems_as_side_by_side():
    model = GainModel(segment=0.5, padding="valid")
    mix = torch.rand(2, 8000) - 0.5
    long_mix = torch.rand(2, 80000) - 0.5
    # 3 shifts of 0.5 s on 1 s run one after another; on 10 s, side by side
    for signal in (mix, long_mix):
        got = Separator(model, device="cpu", shifts=3, seed=2).separate_tensor(signal)
        assert torch.allclose(got, gain_expected(model, signal), atol=1e-5)
