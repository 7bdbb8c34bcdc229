"""Where a default `stemsplit song.mp3` spends its time: pipeline stages, then network operators.

Runs the one track pipeline (`stemsplit.pipeline.separate_file`) on a 3-minute mp3 (the benchmarks'
test track, encoded once with ffmpeg) with the embedded default model at default settings, timing
each stage by wrapping the function that does it: decoding + spooling, the network's forward
passes, the Separator's own work around them (input windows, overlap-add), resampling back and
encoding. Then the PyTorch profiler splits the forward passes of a few segments into operator
families (convolutions, STFT/iSTFT, normalisation and activations, attention, the rest), and the
floor says what a perfect implementation would need: the model's FLOPs per audio second over this
machine's measured matmul rate, in fp32 and in bf16.

Usage:
    python benchmarks/profile_default.py                  # the embedded model, 180 s
    python benchmarks/profile_default.py --seconds 60 --model-path CKPT --precision fp32
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from testaudio import write_track

FAMILIES = (  # operator name fragments -> family, first match wins
    ("conv", "convolutions"), ("addmm", "matmul / linear"), ("mm", "matmul / linear"), ("linear", "matmul / linear"),
    ("fft", "STFT / iSTFT"), ("stft", "STFT / iSTFT"), ("group_norm", "norm / activations"),
    ("layer_norm", "norm / activations"), ("native_layer_norm", "norm / activations"),
    ("gelu", "norm / activations"), ("glu", "norm / activations"), ("relu", "norm / activations"),
    ("softmax", "attention"), ("attention", "attention"), ("bmm", "attention"), ("lstm", "LSTM"),
)


def family(name: str) -> str:
    name = name.lower()
    return next((label for key, label in FAMILIES if key in name), "other (copies, pads, elementwise)")


class Timer:
    """Accumulates the wall time spent inside wrapped callables."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def wrap(self, owner: object, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        setattr(owner, attribute, timed)


def matmul_rate(dtype: "object", size: int = 1536) -> float:
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)  # type: ignore[arg-type]
    best = float("inf")
    for _ in range(4):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--model-path", default=None, help="A checkpoint (default: the embedded model).")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stemsplit import pipeline
    from stemsplit.audio import encode, resample
    from stemsplit.engine import separator as engine
    from stemsplit.models.resolve import load_model

    work = Path(tempfile.mkdtemp(prefix="stemsplit-profile-"))
    wav = write_track(work / "song.wav", args.seconds)
    song = work / "song.mp3"
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is needed to make the mp3")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-b:a", "320k", str(song)], check=True)

    model = load_model(args.model_path)
    timer = Timer()
    timer.wrap(pipeline, "spool_audio", "decode + spool input")
    forward = type(model).forward
    timer.wrap(type(model), "forward", "network forward passes")
    timer.wrap(resample.StreamResampler, "push", "resample back")
    timer.wrap(encode.AudioWriter, "write", "encode stems")
    timer.wrap(encode, "commit_together", "commit stems")
    separator = engine.Separator(model, precision=args.precision)
    targets = {name: work / "out" / f"{name}.wav" for name in separator.sources}
    start = time.perf_counter()
    pipeline.separate_file(song, separator, targets, pipeline.OutputOptions())
    total = time.perf_counter() - start
    type(model).forward = forward

    print(f"# {args.seconds:.0f}-s mp3, {type(model).__name__}, precision {separator.precision}, "
          f"{torch.get_num_threads()} threads\n")
    print("| stage | seconds | share |\n|---|---|---|")
    known = sum(timer.seconds.values())
    # the forward passes run inside the stream, so the Separator's own work is the rest of it
    rows = list(timer.seconds.items()) + [("Separator around the network (windows, overlap-add) and rest",
                                           total - known)]
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    print(f"| total | {total:.2f} | {args.seconds / total:.1f}x real time |\n")

    segment = int(float(model.segment) * model.samplerate) if not hasattr(model, "models") else 44100 * 6
    mix = 0.1 * torch.randn(2, 2, segment)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=separator.precision == "bf16")
    with torch.inference_mode(), autocast, torch.profiler.profile() as prof:
        model(mix)
    by_family: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") and event.cpu_time_total > 0:
            by_family[family(event.key)] += event.self_cpu_time_total / 1e6
    spent = sum(by_family.values())
    print("| operator family (2 segments) | self CPU s | share |\n|---|---|---|")
    for label, seconds in sorted(by_family.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {seconds:.2f} | {100 * seconds / spent:.0f}% |")

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(mix[:1])
    flops_per_second = counter.get_total_flops() / (segment / model.samplerate * 0.75)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rate = matmul_rate(dtype)
        floor = flops_per_second / rate
        print(f"\nfloor {name}: {flops_per_second / 1e9:.1f} GFLOP per audio second / {rate / 1e9:.1f} GFLOP/s "
              f"matmul = {floor:.4f} s per audio second; this run: {total / args.seconds:.4f} s per audio "
              f"second ({total / args.seconds / floor:.1f}x the floor)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
