"""Separation quality metrics: uSDR (the MDX challenge "new SDR"), SI-SDR, and BSSEval v4.

Owns: the definitions and their conventions for silent signals. Inputs are reference and estimate
tensors shaped (..., channels, time); every leading dimension (batch, source) is kept.
Must not: run models, read files or aggregate over tracks (evaluate.py does).

Silence convention: uSDR adds MDX's delta (1e-7) to numerator and denominator, so a silent
reference with a silent estimate scores 0 dB and nothing is ever NaN or infinite. Where a mean
over short excerpts should only count those with something to separate, `audible` says which
references are above the silence floor (`SILENT_POWER`).
"""
from __future__ import annotations

import torch

USDR_DELTA = 1e-7
"""The small constant the MDX challenge adds to both energies."""

SILENT_POWER = 1e-8
"""Mean square (about -80 dBFS) at or below which a reference counts as silent: a uSDR against it
only measures how quiet the leak is, tens of dB below zero, not separation."""


def audible(ref: torch.Tensor) -> torch.Tensor:
    """True where a reference (..., channels, time) is louder than `SILENT_POWER` on average."""
    return ref.double().square().mean(dim=(-2, -1)) > SILENT_POWER


def usdr(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """10 log10((sum ref^2 + delta) / (sum (ref - est)^2 + delta)) over channels and time, in float64."""
    ref, est = ref.double(), est.double()
    signal = ref.square().sum(dim=(-2, -1)) + USDR_DELTA
    error = (ref - est).square().sum(dim=(-2, -1)) + USDR_DELTA
    return 10 * torch.log10(signal / error)


def si_sdr(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR over channels and time jointly: the estimate is compared with the best
    scaled copy of the reference. Same delta as uSDR, so silence against silence is 0 dB."""
    ref, est = ref.double(), est.double()
    dims = (-2, -1)
    scale = ((ref * est).sum(dim=dims, keepdim=True) + USDR_DELTA) / (ref.square().sum(dim=dims, keepdim=True) + USDR_DELTA)
    target = scale * ref
    return 10 * torch.log10((target.square().sum(dim=dims) + USDR_DELTA)
                            / ((est - target).square().sum(dim=dims) + USDR_DELTA))


# ---- BSSEval v4 ----------------------------------------------------------------------------------
# Notation: S sources, C channels, T samples, L filter taps. A source image is decomposed, frame by
# frame, with distortion filters fitted once on the whole track (that is what makes it "v4"):
#   p_own = the estimate's best L-tap multichannel filtering of its own reference,
#   p_all = its best filtering of all references together,
#   SDR = |s|^2 / |est - s|^2, ISR = |s|^2 / |p_own - s|^2,
#   SIR = |p_own|^2 / |p_all - p_own|^2, SAR = |p_all|^2 / |est - p_all|^2,
# energies over the frame extended by the L - 1 samples the filters spill into. A ratio with a zero
# denominator is +inf. Frames where any reference or any estimate is silent are NaN (undefined),
# and `nanmedian` skips them; so a source silent for a whole track leaves every source of that
# track without a BSSEval score (NaN), as in museval.

BSS_FILTER_TAPS = 512


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _lagged_correlations(fa: torch.Tensor, b: torch.Tensor, n_fft: int, lags: torch.Tensor) -> torch.Tensor:
    """sum_t a(t) b(t + k) for every lag k in `lags`: (M, N, K), for flattened signals a (M, T),
    given as their spectra `fa = rfft(a, n_fft)`, and b (N, T).

    The spectra of `b` are made one at a time and every product is inverted on its own: for a
    7-minute track each full-length spectrum is a quarter of a gigabyte, so only a's are kept.
    """
    out = torch.empty(fa.shape[0], b.shape[0], lags.numel(), dtype=b.dtype)
    index = lags % n_fft
    for n in range(b.shape[0]):
        fb = torch.fft.rfft(b[n], n_fft)
        for m in range(fa.shape[0]):
            out[m, n] = torch.fft.irfft(fa[m].conj() * fb, n_fft)[index]
    return out


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a x = b; least squares when `a` is singular (e.g. a source with identical channels)."""
    try:
        return torch.linalg.solve(a, b)
    except torch.linalg.LinAlgError:
        return torch.linalg.lstsq(a, b).solution


def _distortion_filters(ref: torch.Tensor, est: torch.Tensor, taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares L-tap filters (whole track) from references to each estimate.

    Returns (all_filters (S_est, S, C, L, C): every reference -> estimate channel,
             own_filters (S, C, L, C): each estimate's own reference only).
    """
    sources, channels, length = ref.shape
    n_fft = _next_pow2(length + taps - 1)
    flat_ref = ref.reshape(sources * channels, length)
    lag = torch.arange(taps)
    # Gram matrix of the delayed references: <x_i(. - a), x_j(. - b)> = r_ij(a - b).
    spectra = torch.fft.rfft(flat_ref, n_fft)
    corr = _lagged_correlations(spectra, flat_ref, n_fft, torch.arange(-(taps - 1), taps))
    gram = corr[:, :, (lag[:, None] - lag[None, :]) + taps - 1]  # (SC, SC, L, L)
    size = sources * channels * taps
    gram = gram.permute(0, 2, 1, 3).reshape(size, size)
    gram = gram + torch.finfo(torch.float64).eps * torch.eye(size, dtype=gram.dtype)
    # Right-hand sides: <x_j(. - a), est_c> = r_{x_j, est_c}(a).
    rhs = _lagged_correlations(spectra, est.reshape(-1, length), n_fft, lag)  # (SC, S_est*C, L)
    del spectra  # (gigabytes for a long track; the solves below need none of it)
    rhs = rhs.permute(0, 2, 1).reshape(size, -1)
    all_filters = _solve(gram, rhs).reshape(sources, channels, taps, sources, channels)
    all_filters = all_filters.permute(3, 0, 1, 2, 4)
    block = channels * taps
    own = []
    for j in range(sources):
        rows = slice(j * block, (j + 1) * block)
        cols = slice(j * channels, (j + 1) * channels)
        own.append(_solve(gram[rows, rows], rhs[rows, cols]).reshape(channels, taps, channels))
    return all_filters, torch.stack(own)


def _ratio_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den == 0, torch.full_like(num, float("inf")), 10 * torch.log10(num / den))


def bss_eval(ref: torch.Tensor, est: torch.Tensor, samplerate: int, window: float = 1.0, hop: float = 1.0,
             taps: int = BSS_FILTER_TAPS, frames_per_chunk: int = 16) -> dict[str, torch.Tensor]:
    """BSSEval v4 (images, time-invariant filters) per frame: {"sdr", "isr", "sir", "sar"} each (S, frames).

    ref, est: (S, C, T) of one track. Frames are `window` seconds every `hop` seconds, only whole
    frames (a track shorter than a window is one frame), as in the SiSEC 2018 evaluation.
    """
    if ref.shape != est.shape or ref.dim() != 3:
        raise ValueError(f"bss_eval needs (sources, channels, time) tensors of one shape, got {tuple(ref.shape)} "
                         f"and {tuple(est.shape)}")
    ref, est = ref.detach().double().cpu(), est.detach().double().cpu()
    sources, channels, length = ref.shape
    win, step = int(window * samplerate), int(hop * samplerate)
    if win >= length:
        win, starts = length, [0]
    else:
        starts = list(range(0, (length - win) // step * step + 1, step))
    all_filters, own_filters = _distortion_filters(ref, est, taps)
    n_fft = _next_pow2(win + taps - 1)
    span = win + taps - 1
    h_all = torch.fft.rfft(all_filters, n_fft, dim=3)  # (S_est, S, C, F, C_out)
    h_own = torch.fft.rfft(own_filters, n_fft, dim=2)  # (S, C, F, C_out)
    names = ("sdr", "isr", "sir", "sar")
    out = {name: torch.empty(sources, len(starts), dtype=torch.float64) for name in names}
    for first in range(0, len(starts), frames_per_chunk):
        chunk = starts[first: first + frames_per_chunk]
        r = torch.stack([ref[..., s: s + win] for s in chunk])  # (N, S, C, W)
        e = torch.stack([est[..., s: s + win] for s in chunk])
        spectra = torch.fft.rfft(r, n_fft)  # (N, S, C, F)
        p_all = torch.fft.irfft(torch.einsum("nscf,kscfo->nkof", spectra, h_all), n_fft)[..., :span]
        p_own = torch.fft.irfft(torch.einsum("nkcf,kcfo->nkof", spectra, h_own), n_fft)[..., :span]
        pad = (0, span - win)
        s_true = torch.nn.functional.pad(r, pad)
        e_pad = torch.nn.functional.pad(e, pad)

        def energy(x: torch.Tensor) -> torch.Tensor:
            return x.square().sum(dim=(-2, -1))

        values = {
            "sdr": _ratio_db(energy(s_true), energy(e_pad - s_true)),
            "isr": _ratio_db(energy(s_true), energy(p_own - s_true)),
            "sir": _ratio_db(energy(p_own), energy(p_all - p_own)),
            "sar": _ratio_db(energy(p_all), energy(e_pad - p_all)),
        }
        silent = ((r.sum(dim=2) == 0).all(dim=-1).any(dim=1) | (e.sum(dim=2) == 0).all(dim=-1).any(dim=1))
        for name in names:
            value = values[name].masked_fill(silent[:, None], float("nan"))
            out[name][:, first: first + len(chunk)] = value.T
    return out


def nanmedian(values: torch.Tensor) -> torch.Tensor:
    """Median over the last dimension ignoring NaN: over frames, the per-track BSSEval score; over
    tracks, `evaluate`'s aggregate.

    Of an even count it is the mean of the two middle values, as museval's (numpy's) nanmedian;
    `torch.nanmedian` would return the lower one. No defined value gives NaN.
    """
    if values.shape[-1] == 0:  # nothing to take the median of
        return values.new_full(values.shape[:-1], float("nan"))
    ordered = values.sort(dim=-1).values  # NaN sorts last
    count = (~values.isnan()).sum(dim=-1, keepdim=True)
    low = ordered.gather(-1, ((count - 1) // 2).clamp(min=0))
    high = ordered.gather(-1, count // 2)
    return ((low + high) / 2).squeeze(-1)
