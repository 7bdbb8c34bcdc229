"""The separation engine: apply a model (or a bag of models) to a whole track in segments.

Owns segmenting, padding, batching, the shift trick, weighted overlap-add, input normalisation,
bag weighting and device placement. Results follow the reference `demucs.apply.apply_model`
(same segment grid, triangular weights, padding with real context, same random shifts for a
given seed) but are produced as a stream: `Separator.stream` yields finished stretches of output
as soon as no later segment can touch them, so the caller can write them out and memory stays
bounded by a few segments whatever the track length. The input is a tensor or any long signal
read by slices (`LongSignal`, e.g. `stemsplit.audio.SignalFile`), so it need not be in memory
either.

It must not read or write files (see `stemsplit.audio` and `stemsplit.export`) and never prints;
progress goes through a callback.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import torch
from torch import nn

from stemsplit.constants import PRECISIONS
from stemsplit.errors import AudioError, ModelError, SettingsError
from stemsplit.nn.bag import has_fixed_segment

Progress = Callable[[int, int], None]
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


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

    `auto` prefers CUDA, then Apple MPS, then the CPU. Raises ModelError for unknown spellings and
    for devices this machine does not have.
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
        raise ModelError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {spec!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError(f"device {spec!r} requested but Apple MPS is not available on this machine")
    elif device.type != "cpu":
        raise ModelError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


def _is_bag(model: nn.Module) -> bool:
    return hasattr(model, "models") and hasattr(model, "weights")


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
    """One pass of one model over the track (one shift of one bag member).

    The lane sees the normalised mix delayed by `delay` zero samples, so lane sample u is track
    sample u - delay; its segments sit on a grid starting at lane sample 0, exactly like the
    reference applies a model to a shifted copy of the track. `scale` holds, per requested
    source, the weight of this lane in the final average.
    """

    model: nn.Module
    delay: int
    length: int  # lane length: track length + delay
    segment: int  # samples per segment
    pad_to: Optional[int]  # fixed padded length (HTDemucs with explicit segment), else None
    offsets: list[int]
    sources: list[int]  # indices of the requested sources in the model output
    scale: torch.Tensor
    done: int = 0  # segments processed
    base: int = 0  # lane position of acc[..., 0]
    acc: Optional[torch.Tensor] = None
    wsum: Optional[torch.Tensor] = None
    weight: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def finished(self) -> int:
        """Lane position up to which no further segment will add anything."""
        return self.offsets[self.done] if self.done < len(self.offsets) else self.length

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
        self.acc = self.acc[..., n:].clone()
        self.wsum = self.wsum[n:].clone()
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
        precision: the dtype the model runs in. `fp32` (default) matches the reference. `bf16`
            runs it under bfloat16 autocast (CPU or CUDA): on CPUs with bf16 instructions
            (AVX512-BF16, AMX) this about halves the time, on other CPUs it is correct but not
            faster. `fp16` runs it under float16 autocast, on CUDA only (CPUs have no fast float16
            path). Both change the stems slightly (bf16: roughly 40-50 dB SNR from fp32), so they
            are an explicit choice, never the default.
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
        precision: str = "fp32",
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
        if precision == "bf16" and self.device.type not in ("cpu", "cuda"):
            raise ModelError(f"bf16 precision is only available on CPU and CUDA, not {self.device.type}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ModelError(f"fp16 precision is only available on CUDA, not {self.device.type} "
                             "(use bf16 for a faster CPU run)")
        self.model = model
        self.members = list(model.models) if _is_bag(model) else [model]
        for member in self.members:
            limit = float(member.segment)
            if segment is not None and has_fixed_segment(member) and segment > limit:
                raise SettingsError("segment", f"{segment} s is longer than the {limit:.2f} s this model was "
                                               "trained on; choose a smaller one")
            seconds = limit if segment is None else segment
            samples = int(min(member.samplerate * seconds, 2.0**62))  # (the planner's cap is far above this)
            if int((1 - overlap) * samples) < 1:
                raise SettingsError("segment", f"{seconds} s with overlap {overlap} leaves no sample between "
                                               "segments; raise the segment or lower the overlap")
            member.to(self.device)
            member.eval()
        self.samplerate: int = int(model.samplerate)
        self.audio_channels: int = int(model.audio_channels)
        self.sources: list[str] = list(model.sources)
        self.segment, self.overlap, self.shifts, self.seed = segment, overlap, shifts, seed
        self.batch_size, self.precision, self.progress = batch_size, precision, progress

    # ---- planning ---------------------------------------------------------------------------

    def _resolve_sources(self, sources: Optional[Sequence[str]]) -> list[int]:
        if sources is None:
            return list(range(len(self.sources)))
        unknown = [s for s in sources if s not in self.sources]
        if unknown:
            raise ModelError(f"unknown stem(s) {', '.join(unknown)}; this model has {', '.join(self.sources)}")
        return [self.sources.index(s) for s in sources]

    def _lanes(self, length: int, wanted: list[int]) -> list[_Lane]:
        """One lane per (bag member, shift), with the reference's weights and random shifts."""
        if _is_bag(self.model):
            weights = [list(map(float, w)) for w in self.model.weights]
        else:
            weights = [[1.0] * len(self.sources)]
        totals = [sum(w[k] for w in weights) for k in range(len(self.sources))]
        for k in wanted:
            if totals[k] == 0:
                raise ModelError(f"no model in the bag predicts {self.sources[k]!r} (all its weights are zero)")
        rng = random.Random(self.seed)
        lanes = []
        for member, member_weights in zip(self.members, weights):
            seconds = float(self.segment if self.segment is not None else member.segment)
            max_shift = int(0.5 * self.samplerate)
            samples = self.samplerate * seconds
            if not has_fixed_segment(member):  # (a fixed one is never longer than its training length)
                # From the length whose stride passes the end of the longest lane on, a longer
                # segment only adds zero padding to one segment over the whole lane. Stop there, so
                # that an absurd --segment (1e9, inf) neither overflows nor costs memory; never below
                # the model's own segment, so default runs pad exactly as the reference does.
                whole = math.ceil((length + max_shift) / (1 - self.overlap)) + 1
                samples = min(samples, max(whole, self.samplerate * float(member.segment)))
            seg = int(samples)
            stride = int((1 - self.overlap) * seg)  # (at least 1: checked at construction)
            # Draw every shift, even for members skipped below, so a seed means the same shifts.
            delays = [max_shift - rng.randint(0, max_shift) for _ in range(self.shifts)] or [0]
            if all(member_weights[k] == 0 for k in wanted):
                continue
            scale = torch.tensor([member_weights[k] / totals[k] / len(delays) for k in wanted])
            pad_to = seg if (self.segment is not None and has_fixed_segment(member)) else None
            for delay in delays:
                lane_length = length + delay
                # segments that end before the track starts (inside the shift prefix) are useless
                offsets = [o for o in range(0, lane_length, stride) if o + seg > delay]
                lanes.append(
                    _Lane(member, delay, lane_length, seg, pad_to, offsets, wanted, scale,
                          base=delay, weight=_triangle(seg, lane_length))
                )
        return lanes

    # ---- running ----------------------------------------------------------------------------

    def _padded_length(self, lane: _Lane, chunk: int) -> int:
        if lane.pad_to is not None:
            return lane.pad_to
        if hasattr(lane.model, "valid_length"):
            return int(lane.model.valid_length(chunk))
        return chunk

    def _run_batch(self, lane: _Lane, mix: Signal, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Process the lane's next segments that share a padded length, as one forward pass."""
        first = lane.offsets[lane.done]
        chunk = min(lane.segment, lane.length - first)
        target = self._padded_length(lane, chunk)
        batch = []
        while lane.done + len(batch) < len(lane.offsets) and len(batch) < self.batch_size:
            offset = lane.offsets[lane.done + len(batch)]
            if min(lane.segment, lane.length - offset) != chunk:
                break
            batch.append(offset)
        channels, length = mix.shape
        inputs = torch.zeros(len(batch), channels, target)
        for i, offset in enumerate(batch):
            # window of `target` lane samples centred on the chunk; real samples where the track
            # has them (normalised), zeros elsewhere: the reference's padding with context
            start = offset - (target - chunk) // 2 - lane.delay
            lo, hi = max(0, start), min(length, start + target)
            if hi > lo:
                inputs[i, :, lo - start : hi - start] = (mix[:, lo:hi] - mean) / std
        with torch.inference_mode():
            x = inputs.to(self.device)
            if self.precision in _AUTOCAST:
                with torch.autocast(device_type=self.device.type, dtype=_AUTOCAST[self.precision]):
                    out = lane.model(x)
            else:
                out = lane.model(x)
            out = out.float()
            excess = out.shape[-1] - chunk
            out = out[..., excess // 2 : excess // 2 + chunk][:, lane.sources].to("cpu")
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
        wanted = self._resolve_sources(sources)
        if isinstance(mix, torch.Tensor):
            mix = mix.detach().to("cpu", torch.float32)
        length = mix.shape[-1]
        if length == 0:
            return
        mean, std = _mean_std(mix)
        if not (torch.isfinite(mean) and torch.isfinite(std)):
            raise AudioError("the mix contains NaN or infinite samples")
        lanes = self._lanes(length, wanted)
        total = sum(len(lane.offsets) for lane in lanes)
        done = 0
        if self.progress is not None:
            self.progress(0, total)
        emitted = 0
        while emitted < length:
            pending = [lane for lane in lanes if lane.done < len(lane.offsets)]
            lane = min(pending, key=lambda ln: ln.finished() - ln.delay)
            before = lane.done
            self._run_batch(lane, mix, mean, std)
            done += lane.done - before
            if self.progress is not None:
                self.progress(done, total)
            ready = min(min(ln.finished() - ln.delay for ln in lanes), length)
            if ready > emitted:
                block = sum(ln.pop(ready + ln.delay) * ln.scale[:, None, None] for ln in lanes)
                assert isinstance(block, torch.Tensor)
                yield emitted, block * std + mean
                emitted = ready

    def separate_tensor(self, mix: Signal, sources: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Separate `(channels, time)` (a tensor or a `LongSignal`) at the model's rate into
        `(sources, channels, time)`."""
        wanted = self._resolve_sources(sources)
        out = torch.zeros(len(wanted), mix.shape[0], mix.shape[-1])
        for start, block in self.stream(mix, sources):
            out[..., start : start + block.shape[-1]] = block
        return out


def separate(
    path_or_tensor: Union[str, Path, torch.Tensor],
    model: Union[None, str, nn.Module] = None,
    *,
    samplerate: Optional[int] = None,
    sources: Optional[Sequence[str]] = None,
    repo: Optional[Union[str, Path]] = None,
    **kwargs: object,
) -> dict[str, torch.Tensor]:
    """Separate a file or a `(channels, time)` tensor; returns `{stem: (channels, time)}`.

    Stems come back at the input's sample rate and channel count (mono in, mono out). A tensor is
    taken to be at `samplerate` (default: the model's). `model` is a model, a catalog name or a
    checkpoint path (None: the embedded default). Other keyword arguments go to `Separator`.
    """
    from stemsplit.audio import load_audio, resample

    if not isinstance(model, nn.Module):
        from stemsplit.catalog import load_model

        model = load_model(model, repo=repo)
    separator = Separator(model, **kwargs)  # type: ignore[arg-type]
    if isinstance(path_or_tensor, torch.Tensor):
        wav = path_or_tensor.detach().to("cpu", torch.float32)
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2:
            raise ModelError(f"expected a (channels, time) tensor, got shape {tuple(wav.shape)}")
        rate = samplerate or separator.samplerate
        channels = wav.shape[0]
        if channels not in (1, 2):
            raise AudioError(f"tensor has {channels} channels; only mono and stereo are supported")
        mix = wav.expand(separator.audio_channels, -1) if channels == 1 else wav
        mix = resample(mix, rate, separator.samplerate)
        length = wav.shape[-1]
    else:
        loaded = load_audio(path_or_tensor, separator.samplerate, separator.audio_channels)
        mix, rate, channels = loaded.wav, loaded.native_samplerate, loaded.native_channels
        length = loaded.native_frames
    stems = separator.separate_tensor(mix, sources)
    if channels == 1:
        stems = stems.mean(1, keepdim=True)
    if rate != separator.samplerate:  # (there and back loses a sample or two: give back the input's length)
        stems = resample(stems, separator.samplerate, rate, length=length)
    names = list(sources) if sources is not None else separator.sources
    return dict(zip(names, stems))
