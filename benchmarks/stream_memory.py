"""Peak memory of `python -m stemsplit` against track length, with a tiny model.

A tiny random HDemucs keeps the model's own working memory negligible, so what grows with the
track is the engine's: decoded input, overlap-add state, outputs. The script writes stereo
44.1 kHz 16-bit test tracks of the given lengths (block by block, so writing them needs no
memory), runs the command line once per track as a whole process and prints each child's peak
RSS and wall time (processes.py). A flat column means memory does not grow with length.

Usage:
    python benchmarks/stream_memory.py --minutes 1,10,60
    PYTHONPATH=/some/other/checkout python benchmarks/stream_memory.py   # compare a version
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from processes import Launcher
from testaudio import SAMPLERATE, write_track


def write_model(path: Path) -> None:
    import torch

    from stemsplit.models.checkpoint import save_checkpoint
    from stemsplit.nn import HDemucs

    torch.manual_seed(0)
    model = HDemucs(sources=["drums", "bass", "other", "vocals"], channels=4, depth=2, samplerate=SAMPLERATE,
                    segment=10.0)
    save_checkpoint(model, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="1,10,60", help="comma-separated track lengths")
    parser.add_argument("--work", type=Path, default=None, help="folder for tracks and outputs (default: a temp dir)")
    args = parser.parse_args()
    launcher = Launcher()  # first, while this process is still small
    work = args.work or Path(tempfile.mkdtemp(prefix="stemsplit-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny.safetensors"
    if not model.exists():
        write_model(model)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    print(f"{'minutes':>8} {'peak RSS MB':>12} {'wall s':>8}")
    for minutes in (float(m) for m in args.minutes.split(",")):
        track = work / f"track_{minutes:g}min.wav"
        write_track(track, minutes * 60)
        cmd = [sys.executable, "-m", "stemsplit", str(track), "--model-path", str(model), "-o", str(work / "out"),
               "--overwrite", "-q", "-d", "cpu"]
        result = launcher.run(cmd, env)
        print(f"{minutes:>8g} {result.rss / 2**20:>12.0f} {result.wall:>8.1f}", flush=True)
    launcher.close()


if __name__ == "__main__":
    main()
