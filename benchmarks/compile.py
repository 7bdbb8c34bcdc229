"""Does `torch.compile` (inductor, CPU) pay for itself on a whole song? Each way of running is a
fresh process, as a user's run is.

For each precision asked for, one randomly initialised model of the released htdemucs size
(benchmarks/vs_demucs.py builds it) separates one test track three ways, each in its own process
through `stemsplit.separate()` at the model's segment, overlap 0.25, no shifts:

- eager: no compilation (what stemsplit does);
- compiled, cold: `model.compile()` with an empty inductor cache folder (a user's first run);
- compiled, warm: the same again with the caches the cold run left (every later run).

Compilation would be worth offering if the warm run wins without the cold run costing more than
about 10% over eager (issue 24). Each child reports its own wall time and peak RSS (processes.py);
the compiled runs' stems are checked against eager's (SNR) so a miscompiled model cannot win.

Usage (the cold compile alone takes about ten minutes on 2 cores):
    python benchmarks/compile.py --seconds 180 --precisions bf16 --write-results
    python benchmarks/compile.py --seconds 10 --precisions fp32        # smoke run
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
from pathlib import Path

from processes import Launcher
from testaudio import write_track
from vs_demucs import build_models, hardware, snr_db, table

HERE = Path(__file__).resolve().parent


def child(model_path: str, track: str, precision: str, compiled: bool, out: str) -> None:
    """One measured run: separate `track` and save the stems for the SNR check."""
    import numpy as np
    import torch

    import stemsplit

    model = stemsplit.load_model(model_path)
    if compiled:
        model.compile()  # in place: the class stays, so precision and family rules still see it
    with torch.inference_mode():
        stems = stemsplit.separate(track, model, precision=precision, device="cpu", overlap=0.25, shifts=0)
    np.savez(out, **{name: stem.numpy() for name, stem in stems.items()})


def main() -> None:
    launcher = Launcher()  # first: each child's peak RSS is then its own
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="Length of the test track.")
    parser.add_argument("--precisions", default="bf16", help="Comma separated: fp32, bf16.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stemsplit-bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-results", action="store_true", help="Append the table to benchmarks/RESULTS.md.")
    parser.add_argument("--child", nargs=5, metavar=("MODEL", "TRACK", "PRECISION", "COMPILED", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, track, precision, compiled, out = args.child
        child(model, track, precision, compiled == "1", out)
        return

    import numpy as np

    args.work.mkdir(parents=True, exist_ok=True)
    _, native = build_models(args.work, args.seed)
    track = write_track(args.work / f"compile_{args.seconds:g}s.wav", args.seconds, seed=args.seed)
    rows, notes = [], []
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        cache = args.work / f"inductor-cache-{precision}"
        shutil.rmtree(cache, ignore_errors=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TORCHINDUCTOR_CACHE_DIR=str(cache),
                   STEMSPLIT_OFFLINE="1")
        results, stems = {}, {}
        for label, compiled in (("eager", "0"), ("compiled, cold caches", "1"), ("compiled, warm caches", "1")):
            out = args.work / f"compile_{precision}_{len(results)}.npz"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", str(native), str(track), precision,
                       compiled, str(out)]
            results[label] = launcher.run(command, env)
            with np.load(out) as data:
                stems[label] = {name: data[name] for name in data.files}
            print(f"{precision} {label}: {results[label].wall:.1f} s", file=sys.stderr)
        eager = results["eager"].wall
        for label, run in results.items():
            rows.append([f"{args.seconds:g} s", precision, label, f"{run.wall:.1f}", f"{run.wall / args.seconds:.3f}",
                         f"{run.wall / eager:.2f}", f"{run.rss / 2**30:.2f} GiB"])
        for label in ("compiled, cold caches", "compiled, warm caches"):
            notes.append(f"- {precision} {label}: SNR of its stems vs eager (worst stem) "
                         f"{snr_db(stems['eager'], stems[label]):.1f} dB")
    launcher.close()
    text = table(["track", "precision", "run", "wall s", "s per audio s", "x eager", "peak RSS"], rows)
    text += "\n\n" + "\n".join(notes)
    print(text)
    if args.write_results:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python benchmarks/compile.py " + " ".join(a for a in sys.argv[1:] if a != "--write-results")
        with open(HERE / "RESULTS.md", "a") as results_file:
            results_file.write(f"\n## {stamp}, cpu, torch.compile (inductor)\n\nHardware: {hardware('cpu')}. "
                               f"Threads: {args.threads}.\n\nBenchmark: `{command} --write-results`\n\n{text}\n")


if __name__ == "__main__":
    main()
