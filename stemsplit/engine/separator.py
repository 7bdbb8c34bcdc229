"""The Separator: runs a separation plan over a whole track and yields the stems as a stream.

Owns batching segments into forward passes, padding them with real context, input
normalisation, device placement and precision, the weighted overlap-add of every lane into one
output, the NaN check on estimates, and progress. What runs (grid, shifts, bag members and their
weights) is decided by `engine.plan`. `Separator.stream` yields finished stretches of output as
soon as no later segment can touch them, so memory is bounded by a few segments whatever the
track's length; with more lanes (shifts x members) than that saves, it runs them one after
another so that memory does not grow with `shifts` either. The input is a tensor or any long
signal read by slices (`LongSignal`, e.g. `stemsplit.audio.spool.SignalFile`).
It must not read or write files (see `stemsplit.pipeline`) and never prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import torch
from torch import nn

from stemsplit.constants import PRECISIONS
from stemsplit.engine import plan
from stemsplit.errors import AudioError, ModelError, SettingsError

Progress = Callable[[int, int], None]
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
assert set(PRECISIONS) == {"auto", "fp32", *_AUTOCAST}


class LongSignal(Protocol):
    """A float32 `(channels, time)` signal the separator reads window by window.

    `signal[:, start:end]` returns a `(channels, n)` tensor. A signal may also offer
    `channel_mean_std() -> (mean, std)`, the mean and unbiased std of its channel average,
    to spare the separator a pass over it.
    """

    @property
    def shape(self) -> tuple[int, int]: ...

    def __getitem__(self, key: tuple[slice, slice]) -> torch.Tensor: ...


Signal = Union[torch.Tensor, LongSignal]


def resolve_device(spec: Union[str, torch.device]) -> torch.device:
    """Turn `auto`, `cpu`, `cuda`, `cuda:N` or `mps` into an available torch device.

    `auto` prefers CUDA, then Apple MPS, then the CPU. Raises SettingsError for unknown spellings
    and ModelError for devices this machine does not have.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise SettingsError("device", f"names an unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {spec!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError(f"device {spec!r} requested but Apple MPS is not available on this machine")
    elif device.type != "cpu":
        raise SettingsError("device", f"names an unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


# Families whose stems stay within 40 dB SNR of fp32 under bf16 autocast (worst stem of four, an
# 8-s song): HDemucs 43.3 (the embedded model) to 47.4 dB, HTDemucs 45.2 dB. Demucs v2 reached
# only 40.2 dB (its LSTM), too close to the line, so `auto` keeps it in fp32.
BF16_FAMILIES = ("HDemucs", "HTDemucs")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (a bf16 CUDA device, a CPU with AVX512-BF16/AMX);
    elsewhere bf16 is emulated, several times slower than fp32."""
    from stemsplit.runtime import cpu_has_native_bf16

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(precision: str, device: torch.device, model: nn.Module) -> str:
    """`auto` -> `bf16` where `device` computes it natively and every member of `model` is of a
    family that holds quality in it, else `fp32`; any other precision is returned as it is."""
    if precision != "auto":
        return precision
    families_hold = all(type(member).__name__ in BF16_FAMILIES for member in plan.members(model))
    return "bf16" if native_bf16(device) and families_hold else "fp32"


def _triangle(length: int, used: int) -> torch.Tensor:
    """The first `used` samples of the overlap-add weight of a `length`-sample segment.

    The weight rises 1..L/2 then falls back to 1, peak normalised to 1. No segment reaches past
    the end of its lane, so only that much of it is made: a segment far longer than the track
    costs no memory.
    """
    i = torch.arange(min(used, length))
    ramp = torch.minimum(i + 1, length - i).float()
    return ramp / (length - length // 2)


def _mean_std(mix: Signal, block: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std of the channel-average, as the reference normalises its input.

    Computed block by block in float64 so that no full-length temporary is created (or taken
    from the signal when it keeps them); the result matches the reference's float32 `ref.mean()`
    and `ref.std() + 1e-8` to float32 precision. Any NaN or infinite sample makes them
    non-finite, which is how the caller detects those.
    """
    known = getattr(mix, "channel_mean_std", None)
    if known is not None:
        mean, std = known()
    else:
        length = mix.shape[-1]
        total = sum(float(mix[:, i : i + block].double().mean(0).sum()) for i in range(0, length, block))
        mean = total / length
        squares = sum(float(((mix[:, i : i + block].double().mean(0) - mean) ** 2).sum())
                      for i in range(0, length, block))
        std = (squares / (length - 1)) ** 0.5 if length > 1 else 0.0
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std + 1e-8, dtype=torch.float32)


@dataclass
class _Lane:
    """A planned lane with its running overlap-add: `acc / wsum` over lane positions [base, ...)."""

    plan: plan.LanePlan
    weight: torch.Tensor  # overlap-add weight of one segment (shared by the lanes of a member)
    done: int = 0  # segments processed
    base: int = 0  # lane position of acc[..., 0]: everything before it was handed on
    acc: Optional[torch.Tensor] = None
    wsum: Optional[torch.Tensor] = None

    def pending(self) -> bool:
        return self.done < len(self.plan.offsets)

    def finished(self) -> int:
        """Lane position up to which no further segment will add anything."""
        return self.plan.offsets[self.done] if self.pending() else self.plan.length

    def accumulate(self, offset: int, out: torch.Tensor) -> None:
        """Add one segment's `(S, C, n)` output starting at lane position `offset`."""
        n = out.shape[-1]
        w = self.weight[:n]
        cut = max(0, self.base - offset)  # part before `base` was never needed (shift prefix)
        if cut >= n:
            return
        start, end = offset + cut - self.base, offset + n - self.base
        self._ensure(end, out)
        assert self.acc is not None and self.wsum is not None
        self.acc[..., start:end] += out[..., cut:] * w[cut:]
        self.wsum[start:end] += w[cut:]

    def _ensure(self, size: int, like: torch.Tensor) -> None:
        if self.acc is None or self.wsum is None:
            self.acc = like.new_zeros(*like.shape[:-1], size)
            self.wsum = like.new_zeros(size)
        elif self.acc.shape[-1] < size:
            grow = size - self.acc.shape[-1]
            self.acc = torch.cat([self.acc, self.acc.new_zeros(*self.acc.shape[:-1], grow)], -1)
            self.wsum = torch.cat([self.wsum, self.wsum.new_zeros(grow)])

    def pop(self, end: int) -> torch.Tensor:
        """Remove and return the averaged output for lane positions [base, end)."""
        n = end - self.base
        assert self.acc is not None and self.wsum is not None and self.acc.shape[-1] >= n
        out = self.acc[..., :n] / self.wsum[:n]
        self.acc = self.acc[..., n:].clone() if self.pending() else None
        self.wsum = self.wsum[n:].clone() if self.pending() else None
        self.base = end
        return out


class Separator:
    """Applies a model or bag of models to tracks of any length.

    Args:
        model: a Demucs-family model (or bag) with `samplerate`, `audio_channels`, `sources`,
            `segment`; moved to `device` and put in eval mode.
        device: `auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `cuda:N` or `mps`.
        segment: seconds per segment (default: the model's own); fixed-length models (HTDemucs)
            refuse a segment longer than their training length. Other models take any length,
            `inf` included: one longer than the track covers it whole, and memory follows the
            track's length, not this number.
        overlap: fraction of a segment shared with the next one, in [0, 1).
        shifts: number of random time shifts (up to 0.5 s) averaged; 0 disables the shift trick.
        seed: seeds the shifts, so the same call gives the same output every time.
        batch_size: segments per forward pass.
        precision: the dtype the model runs in. `auto` (default) is bf16 where the device
            computes it natively (CPUs with AVX512-BF16 or AMX, CUDA devices with bf16) and the
            model family keeps its quality there (see `resolve_precision`), else fp32. `fp32`
            matches the reference exactly. `bf16` runs the model under bfloat16 autocast (CPU or
            CUDA): about half the time where it is native, correct but slower elsewhere. `fp16`
            runs it under float16 autocast, on CUDA only. Both change the stems slightly (bf16:
            43-49 dB SNR from fp32 on the families `auto` picks it for). `self.precision` is the
            precision chosen.
        progress: called as `progress(done_segments, total_segments)` after every forward pass.

    A forward pass whose output has NaN or infinite samples (e.g. fp16 overflow) raises
    ModelError: no caller should turn it into audio.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: Union[str, torch.device] = "auto",
        segment: Optional[float] = None,
        overlap: float = 0.25,
        shifts: int = 0,
        seed: int = 0,
        batch_size: int = 1,
        precision: str = "auto",
        progress: Optional[Progress] = None,
    ) -> None:
        if not 0 <= overlap < 1:
            raise SettingsError("overlap", f"must be in [0, 1), got {overlap}")
        if shifts < 0:
            raise SettingsError("shifts", f"must be >= 0, got {shifts}")
        if batch_size < 1:
            raise SettingsError("batch_size", f"must be >= 1, got {batch_size}")
        if segment is not None and not segment > 0:  # (NaN too)
            raise SettingsError("segment", f"must be a positive number of seconds, got {segment}")
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ModelError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
        precision = resolve_precision(precision, self.device, model)
        if precision == "bf16" and self.device.type not in ("cpu", "cuda"):
            raise ModelError(f"bf16 precision is only available on CPU and CUDA, not {self.device.type}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ModelError(f"fp16 precision is only available on CUDA, not {self.device.type} "
                             "(use bf16 for a faster CPU run)")
        self.model = model
        for member in plan.members(model):
            plan.member_seconds(member, segment, overlap)  # refuse impossible settings before any work
            member.to(self.device)
            member.eval()
        self.samplerate: int = int(model.samplerate)
        self.audio_channels: int = int(model.audio_channels)
        self.sources: list[str] = list(model.sources)
        self.segment, self.overlap, self.shifts, self.seed = segment, overlap, shifts, seed
        self.batch_size, self.precision, self.progress = batch_size, precision, progress

    def _lanes(self, length: int, wanted: list[int]) -> list[_Lane]:
        """The planned lanes, each member's lanes sharing one overlap-add weight."""
        plans = plan.plan_lanes(self.model, wanted, length, segment=self.segment, overlap=self.overlap,
                                shifts=self.shifts, seed=self.seed)
        weights: dict[int, torch.Tensor] = {}
        longest = max((p.length for p in plans), default=0)
        for p in plans:
            if p.segment not in weights:
                weights[p.segment] = _triangle(p.segment, longest)
        return [_Lane(p, weights[p.segment], base=p.delay) for p in plans]

    # ---- running ----------------------------------------------------------------------------

    @staticmethod
    def _padded_length(lane: plan.LanePlan, chunk: int) -> int:
        if lane.pad_to is not None:
            return lane.pad_to
        if hasattr(lane.member, "valid_length"):
            return int(lane.member.valid_length(chunk))
        return chunk

    def _run_batch(self, lane: _Lane, mix: Signal, mean: torch.Tensor, std: torch.Tensor, wanted: list[int]) -> None:
        """Process the lane's next segments that share a padded length, as one forward pass."""
        p = lane.plan
        first = p.offsets[lane.done]
        chunk = min(p.segment, p.length - first)
        target = self._padded_length(p, chunk)
        batch = []
        while lane.done + len(batch) < len(p.offsets) and len(batch) < self.batch_size:
            offset = p.offsets[lane.done + len(batch)]
            if min(p.segment, p.length - offset) != chunk:
                break
            batch.append(offset)
        channels, length = mix.shape
        inputs = torch.zeros(len(batch), channels, target)
        for i, offset in enumerate(batch):
            # window of `target` lane samples centred on the chunk; real samples where the track
            # has them (normalised), zeros elsewhere: the reference's padding with context
            start = offset - (target - chunk) // 2 - p.delay
            lo, hi = max(0, start), min(length, start + target)
            if hi > lo:
                inputs[i, :, lo - start : hi - start] = (mix[:, lo:hi] - mean) / std
        with torch.inference_mode():
            x = inputs.to(self.device)
            if self.precision in _AUTOCAST:
                with torch.autocast(device_type=self.device.type, dtype=_AUTOCAST[self.precision]):
                    out = p.member(x)
            else:
                out = p.member(x)
            out = out.float()
            excess = out.shape[-1] - chunk
            out = out[..., excess // 2 : excess // 2 + chunk][:, wanted].to("cpu")
        if not bool(torch.isfinite(out).all()):  # overlap-add, clamping and peaks would carry or hide it
            hint = f" (it ran in {self.precision}: try fp32)" if self.precision in _AUTOCAST else ""
            raise ModelError(f"the model's estimate has NaN or infinite samples{hint}")
        for i, offset in enumerate(batch):
            lane.accumulate(offset, out[i])
        lane.done += len(batch)

    def stream(
        self, mix: Signal, sources: Optional[Sequence[str]] = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Separate `(channels, time)` at the model's rate, yielding `(start, (S, C, n))` blocks.

        `mix` is a tensor or a `LongSignal` (read one window at a time, so a track on disk is
        never loaded whole); both give the same stems, up to float32 rounding of the input
        statistics. Blocks are consecutive and cover the whole track; each is final when yielded.
        `sources` restricts (and orders) the stems computed; bag members that do not contribute
        to any of them are skipped.
        """
        if len(mix.shape) != 2 or mix.shape[0] != self.audio_channels:
            raise ModelError(
                f"expected a ({self.audio_channels}, time) mix for this model, got shape {tuple(mix.shape)}"
            )
        wanted = plan.source_indices(self.sources, sources)
        if isinstance(mix, torch.Tensor):
            mix = mix.detach().to("cpu", torch.float32)
        length = mix.shape[-1]
        if length == 0:
            return
        mean, std = _mean_std(mix)
        if not (torch.isfinite(mean) and torch.isfinite(std)):
            raise AudioError("the mix contains NaN or infinite samples")
        lanes = self._lanes(length, wanted)
        # Lanes side by side each hold about a segment of output; one after another they share
        # one output as long as the track. Whichever holds less decides the order.
        side_by_side = len(lanes) * max(lane.plan.segment for lane in lanes) <= 2 * length
        out = torch.zeros(len(wanted), self.audio_channels, 0)
        emitted = 0  # track position of out[..., 0]
        total = sum(len(lane.plan.offsets) for lane in lanes)
        done = 0
        if self.progress is not None:
            self.progress(0, total)
        while emitted < length:
            pending = [lane for lane in lanes if lane.pending()]
            if side_by_side:
                lane = min(pending, key=lambda ln: ln.finished() - ln.plan.delay)
            else:
                lane = pending[0]
            before = lane.done
            self._run_batch(lane, mix, mean, std, wanted)
            done += lane.done - before
            if self.progress is not None:
                self.progress(done, total)
            final = min(lane.finished(), length + lane.plan.delay)
            if final > lane.base:  # hand what this lane has finished to the shared output
                start = lane.base - lane.plan.delay - emitted
                block = lane.pop(final) * torch.tensor(lane.plan.scale)[:, None, None]
                end = start + block.shape[-1]
                if end > out.shape[-1]:
                    out = torch.cat([out, out.new_zeros(*out.shape[:-1], end - out.shape[-1])], -1)
                out[..., start:end] += block
            ready = min(min(ln.finished() - ln.plan.delay for ln in lanes), length)
            if ready > emitted:
                block, out = out[..., : ready - emitted], out[..., ready - emitted :].clone()
                yield emitted, block * std + mean
                emitted = ready

    def separate_tensor(self, mix: Signal, sources: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Separate `(channels, time)` (a tensor or a `LongSignal`) at the model's rate into
        `(sources, channels, time)`."""
        wanted = plan.source_indices(self.sources, sources)
        out = torch.zeros(len(wanted), mix.shape[0], mix.shape[-1])
        for start, block in self.stream(mix, sources):
            out[..., start : start + block.shape[-1]] = block
        return out

