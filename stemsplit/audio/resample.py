"""Resampling: whole signals and streams of blocks, with julius (windowed sinc).

Owns the conversion between sample rates: `resample` for a whole tensor, `StreamResampler` for a
signal that arrives (or leaves) block by block with the same result as resampling it whole, and
`fit_length`. It must not read or write files and never prints.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from stemsplit.errors import AudioError

# julius builds a (new, 2 * width + old) kernel for the reduced ratio old:new; past this many
# coefficients the ratio is too irregular (e.g. 44101 Hz) to resample with it sensibly.
_MAX_KERNEL_COEFFS = 20_000_000


def _reduced(old_sr: int, new_sr: int) -> tuple[int, int]:
    gcd = math.gcd(old_sr, new_sr)
    return old_sr // gcd, new_sr // gcd


def _width(old: int, new: int) -> int:
    """julius's filter half-width, in input samples, for the reduced ratio old:new."""
    return math.ceil(24 * old / (0.945 * min(old, new)))


def irregular_ratio(old_sr: int, new_sr: int) -> bool:
    """Whether resampling `old_sr` to `new_sr` needs a kernel too large to build: the one rule, for
    the resampler itself and for checking a model's rate when it is loaded."""
    old, new = _reduced(old_sr, new_sr)
    return old != new and new * (2 * _width(old, new) + 2 * old) > _MAX_KERNEL_COEFFS


class StreamResampler:
    """julius resampling applied block by block, with the same output as one full-length call.

    julius computes output frame k (of `new` samples) from the input around k * old, reaching
    `width` samples to the left and `width + old` to the right, and pads the signal's ends by
    replication. Feeding blocks aligned on multiples of `old` plus enough real context on both
    sides therefore reproduces the full-length result; only the true ends see the replication
    padding, exactly as in a single call.
    """

    def __init__(self, old_sr: int, new_sr: int) -> None:
        import julius

        self.old, self.new = _reduced(old_sr, new_sr)
        self._resample = None
        if self.old != self.new:
            width = _width(self.old, self.new)
            if irregular_ratio(old_sr, new_sr):
                raise AudioError(
                    f"cannot resample {old_sr} Hz to {new_sr} Hz: the ratio of the two rates is "
                    "too irregular (convert the file to a standard rate such as 44100 Hz first)"
                )
            self._resample = julius.ResampleFrac(old_sr, new_sr)
            # context kept on each side, a whole number of `old` periods larger than the reach
            self._context = (math.ceil((width + self.old) / self.old) + 1) * self.old
        self._history: Optional[torch.Tensor] = None  # already consumed input kept as left context
        self._pending: Optional[torch.Tensor] = None  # input not yet turned into output
        self._channels = 0

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Feed `(channels, n)` samples; returns the output samples that are now final."""
        self._channels = block.shape[0]
        if self._resample is None or block.shape[-1] == 0:  # (julius cannot take an empty signal)
            return block
        self._pending = block if self._pending is None else torch.cat([self._pending, block], -1)
        ready = (self._pending.shape[-1] - self._context) // self.old * self.old
        if ready <= 0:
            return block.new_zeros(block.shape[0], 0)
        return self._run(ready, final=False)

    def flush(self, full: bool = False) -> torch.Tensor:
        """Returns the remaining output once the input has ended.

        The output has floor(n * new / old) samples in all, or with `full` ceil(n * new / old): the
        last one then reaches past the input's end, where julius replicates the last sample.
        """
        if self._resample is None or self._pending is None:
            return torch.zeros(self._channels, 0)
        return self._run(self._pending.shape[-1], final=True, full=full)

    def _run(self, consume: int, final: bool, full: bool = False) -> torch.Tensor:
        assert self._pending is not None and self._resample is not None
        history = self._history
        left = 0 if history is None else history.shape[-1]
        joined = self._pending if history is None else torch.cat([history, self._pending], -1)
        chunk = joined if final else joined[..., : left + consume + self._context]
        out = self._resample(chunk, full=full)
        skip = left // self.old * self.new
        take = out.shape[-1] - skip if final else consume // self.old * self.new
        if final:
            self._history = self._pending = None
        else:
            self._history = joined[..., max(0, left + consume - self._context) : left + consume].clone()
            self._pending = self._pending[..., consume:].clone()
        return out[..., skip : skip + take]


def resample(wav: torch.Tensor, old_sr: int, new_sr: int, length: Optional[int] = None) -> torch.Tensor:
    """Resample `(..., time)` from `old_sr` to `new_sr` with julius (identity when equal).

    With `length`, the result has exactly that many samples (see `fit_length`): the way back to
    a signal's own rate after a trip to another one, where rounding lost a sample or two.
    """
    if old_sr != new_sr:
        resampler = StreamResampler(old_sr, new_sr)
        flat = wav.reshape(math.prod(wav.shape[:-1]), wav.shape[-1])  # (-1 is ambiguous when empty)
        out = torch.cat([resampler.push(flat), resampler.flush(full=length is not None)], -1)
        wav = out.reshape(*wav.shape[:-1], out.shape[-1])
    return wav if length is None else fit_length(wav, length)


def fit_length(wav: torch.Tensor, frames: int) -> torch.Tensor:
    """`(..., time)` cut or extended to `frames` samples, a missing end repeating the last sample.

    Resampling to a model's rate and back rounds the length down twice, losing up to two
    samples; the resampler's full output (`flush(full=True)`) gives back all but at most one,
    and repeating its neighbour for that one keeps the signal continuous: a zero there is a
    click, and stems that no longer sum to their mixture.
    """
    if wav.shape[-1] >= frames:
        return wav[..., : max(frames, 0)]
    if wav.shape[-1] == 0:
        return wav.new_zeros(*wav.shape[:-1], frames)
    return torch.cat([wav, wav[..., -1:].expand(*wav.shape[:-1], frames - wav.shape[-1])], -1)


