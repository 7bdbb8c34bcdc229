"""Metrics against hand-computed cases and against museval (the test oracle) on random signals and
on separated-like audio, within 0.05 dB."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stemsplit.metrics import SILENT_POWER, USDR_DELTA, audible, bss_eval, nanmedian, si_sdr, usdr

RATE = 8000


def _load_museval_metrics():
    """museval/metrics.py loaded on its own: `import museval` needs musdb -> stempeg -> ffmpeg."""
    spec = importlib.util.find_spec("museval")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics_oracle", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def oracle():
    return _load_museval_metrics()


def _oracle_frames(oracle, ref: np.ndarray, est: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """museval's v4 call as museval.evaluate makes it, on our (S, C, T) layout."""
    sdr, isr, sir, sar, _ = oracle.bss_eval(ref.transpose(0, 2, 1), est.transpose(0, 2, 1), window=window, hop=window,
                                            compute_permutation=False, framewise_filters=False,
                                            bsseval_sources_version=False)
    return {"sdr": sdr, "isr": isr, "sir": sir, "sar": sar}


def _assert_matches(ours: dict[str, torch.Tensor], theirs: dict[str, np.ndarray]) -> None:
    for name in ("sdr", "isr", "sir", "sar"):
        got, want = ours[name].numpy(), theirs[name]
        assert got.shape == want.shape, name
        assert np.array_equal(np.isnan(got), np.isnan(want)), name
        ok = ~np.isnan(want)
        assert np.abs(got[ok] - want[ok]).max() < 0.05, name


def test_audible_is_the_silence_floor_per_reference():
    """-80 dBFS mean square per (excerpt, source): a whisper above it counts, a fainter one and
    digital silence do not; the leading dimensions are kept."""
    ref = torch.ones(2, 3, 2, 100)
    ref[0, 0] *= math.sqrt(2 * SILENT_POWER)
    ref[0, 1] *= math.sqrt(0.5 * SILENT_POWER)
    ref[1, 2] = 0
    assert audible(ref).tolist() == [[True, False, True], [True, True, False]]


def test_usdr_hand_computed_cases():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 4, 2, 1000, generator=gen)
    energy = ref.double().square().sum(dim=(-2, -1))
    assert torch.allclose(usdr(ref, ref), 10 * torch.log10((energy + USDR_DELTA) / USDR_DELTA))
    assert torch.allclose(usdr(ref, 0.5 * ref), 10 * torch.log10((energy + USDR_DELTA) / (0.25 * energy + USDR_DELTA)))
    assert abs(float(usdr(ref, 0.5 * ref)[0, 0]) - 20 * math.log10(2)) < 1e-6
    silent = torch.zeros(1, 2, 100)
    assert float(usdr(silent, silent)) == 0.0  # silence against silence: 0 dB, never NaN
    assert torch.isfinite(usdr(silent, torch.ones(1, 2, 100))).all()
    assert usdr(ref, ref).shape == (2, 4)


def test_si_sdr_hand_computed_cases():
    ref = torch.zeros(1, 8)
    ref[0, 0] = 2.0
    noise = torch.zeros(1, 8)
    noise[0, 1] = 1.0  # orthogonal to ref: the scaled target is ref itself
    assert abs(float(si_sdr(ref, ref + noise)) - 10 * math.log10(4 / 1)) < 1e-6
    assert float(si_sdr(ref, 0.25 * ref)) > 60  # any scaling of the reference is perfect
    silent = torch.zeros(2, 100)
    assert float(si_sdr(silent, silent)) == 0.0


def test_bss_eval_matches_museval_on_random_signals(oracle):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 2, int(RATE * 3.5)))
    est = 0.7 * ref + 0.3 * ref[[1, 2, 0]] + 0.2 * rng.standard_normal(ref.shape)
    ours = bss_eval(torch.from_numpy(ref), torch.from_numpy(est), RATE)
    _assert_matches(ours, _oracle_frames(oracle, ref, est, RATE))
    assert ours["sdr"].shape == (3, 3)  # whole 1 s frames only: the last half second is not a frame


def test_bss_eval_matches_museval_on_separated_like_audio_with_silence(oracle):
    rng = np.random.default_rng(1)
    t = np.arange(int(RATE * 4)) / RATE
    drums = (rng.standard_normal(t.size) * np.exp(-30 * (t % 0.5)))[None] * np.array([[1.0], [0.8]])
    bass = sum(np.sin(2 * np.pi * 55 * k * t) / k for k in range(1, 12))[None] * np.array([[0.6], [0.5]])
    vocals = sum(np.sin(2 * np.pi * 220 * k * t + 3 * np.sin(2 * np.pi * 5 * t)) / k**2 for k in range(1, 8))
    vocals = vocals[None] * np.array([[0.3], [0.5]])
    ref = np.stack([drums, bass, vocals])
    ref += 0.02 * rng.standard_normal(ref.shape)  # room noise: no source is exactly periodic or mono
    ref[2, :, RATE: 2 * RATE] = 0  # a silent second: an undefined frame for every source
    smear = np.array([0.6, 0.3, 0.1])  # a short low-pass, as a network's output would have
    est = np.apply_along_axis(lambda x: np.convolve(x, smear)[: x.size], -1, ref)
    est += 0.1 * ref[[1, 2, 0]] + 0.01 * rng.standard_normal(ref.shape)
    ours = bss_eval(torch.from_numpy(ref), torch.from_numpy(est), RATE)
    theirs = _oracle_frames(oracle, ref, est, RATE)
    _assert_matches(ours, theirs)
    assert torch.isnan(ours["sdr"][:, 1]).all() and not torch.isnan(ours["sdr"][:, [0, 2, 3]]).any()
    track = nanmedian(ours["sdr"])
    assert np.allclose(track.numpy(), np.nanmedian(theirs["sdr"], axis=1), atol=0.05)


def test_bss_eval_hand_computed_cases():
    rng = np.random.default_rng(2)
    ref = torch.from_numpy(rng.standard_normal((2, 2, 2 * RATE)))
    perfect = bss_eval(ref, ref.clone(), RATE)
    assert torch.isinf(perfect["sdr"]).all() and (perfect["sdr"] > 0).all()
    assert (perfect["isr"] > 100).all() and (perfect["sir"] > 100).all()
    scaled = bss_eval(ref, 0.5 * ref, RATE)
    assert torch.allclose(scaled["sdr"], torch.full((2, 2), 20 * math.log10(2), dtype=torch.float64))
    assert torch.allclose(scaled["isr"], torch.full((2, 2), 20 * math.log10(2), dtype=torch.float64), atol=1e-6)
    assert (scaled["sir"] > 100).all() and (scaled["sar"] > 100).all()
    silent_source = ref.clone()
    silent_source[1] = 0
    result = bss_eval(silent_source, 0.5 * ref, RATE)
    assert torch.isnan(result["sdr"]).all()  # museval's convention: frames with a silent source are undefined
    assert torch.isnan(nanmedian(result["sdr"])).all()


def test_bss_eval_short_track_is_one_frame_and_shapes_are_checked(oracle):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((2, 1, RATE // 2))
    est = ref + 0.1 * rng.standard_normal(ref.shape)
    ours = bss_eval(torch.from_numpy(ref), torch.from_numpy(est), RATE)
    assert ours["sdr"].shape == (2, 1)
    _assert_matches(ours, _oracle_frames(oracle, ref, est, RATE))
    with pytest.raises(ValueError, match="one shape"):
        bss_eval(torch.zeros(2, 1, 10), torch.zeros(2, 1, 11), RATE)


def test_nanmedian_of_an_even_count_is_the_mean_of_the_middle_two_like_museval():
    nan = float("nan")
    rows = [[4.0, 1.0, 3.0, 2.0], [1.0, nan, 5.0, 3.0], [7.0, nan, 1.0, nan], [nan, nan, nan, nan]]
    got = nanmedian(torch.tensor(rows, dtype=torch.float64))
    assert got[:3].tolist() == [2.5, 3.0, 4.0]
    assert np.allclose(got[:3].numpy(), np.nanmedian(np.array(rows[:3]), axis=1))  # museval's statistic
    assert torch.isnan(got[3])  # no defined frame: no score
