"""How fast the procedural song generator renders, single-threaded.

Prints a table: seconds of audio, wall seconds, CPU seconds, x real time (audio seconds per
wall second on one core). The generator should stay above 20x real time so that one CPU core
can feed training. Usage: python benchmarks/synth_speed.py [--songs 12] [--seconds 10]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=12)
    parser.add_argument("--seconds", type=float, nargs="+", default=[3.0, 6.0, 10.0, 30.0])
    parser.add_argument("--samplerate", type=int, default=44100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from stemsplit.synth import render_song

    render_song(args.seed, 1.0, args.samplerate)  # warm up imports and caches
    print(f"{'mode':<10}{'songs':>6}{'audio s':>10}{'wall s':>10}{'cpu s':>10}{'x real time':>13}{'x (cpu)':>10}")
    for excerpt in (False, True):
        for seconds in args.seconds:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for i in range(args.songs):
                render_song(args.seed + i, seconds, args.samplerate, excerpt=excerpt)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            audio = args.songs * seconds
            mode = "excerpt" if excerpt else "song"
            print(f"{mode:<10}{args.songs:>6}{audio:>10.1f}{wall:>10.2f}{cpu:>10.2f}"
                  f"{audio / wall:>13.1f}{audio / cpu:>10.1f}")


if __name__ == "__main__":
    main()
