"""stemsplit against the reference `demucs` command line, as whole processes, side by side.

Builds one randomly initialised model with the released htdemucs hyperparameters (fixed seed,
weights rounded to half precision like the released files), saves it once for each tool (a local
demucs repo folder `DIR/NAME.th` for `python -m demucs.separate --repo DIR -n NAME`, and a native
checkpoint for `stemsplit separate --model-path`), writes stereo 44.1 kHz test tracks (tones plus
noise bursts, never silence), then runs both command lines end to end at the same settings
(7.8 s segments -- the model's own, which demucs uses when --segment is not given, since its flag
only takes whole seconds --, overlap 0.25, no shifts, 16-bit wav, no clip handling, same threads),
alternating which goes first. Each child's wall time and peak RSS are its own (processes.py). The stems of the two tools must agree (max |diff| <= 1e-3 plus one 16-bit step),
otherwise the race would not be fair and the script fails.

stemsplit runs twice: `--precision fp32` (the exact path, whose stems are checked against the
reference's) and at its default settings (no precision flag: `auto`, bf16 where the CPU computes it
natively), with the SNR of its stems against the fp32 stems.

Also printed: the floors (model FLOPs per audio second over this machine's measured fp32 and bf16
matmul rates, i.e. the time a perfect implementation would need; each run is compared with the
floor of the precision it ran in), stemsplit alone on a 60-minute track, and the embedded model
(`-n stemsplit_default`, its default precision) on the longest track.

Usage (CPU, the full comparison takes a while on 2 cores):
    python benchmarks/vs_demucs.py --durations 30,180,600 --runs 3 --write-results
    python benchmarks/vs_demucs.py --durations 30 --runs 1 --long 0      # smoke run
    python benchmarks/vs_demucs.py --device cuda --write-results         # GPU: adds --batch-size/--precision fp16
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from processes import Launcher, Run
from testaudio import SAMPLERATE, write_track

HERE = Path(__file__).resolve().parent
NAME = "benchhtd"  # model signature in the demucs repo folder (no '-': that would mean a checksum)
SEGMENT = 7.8
OVERLAP = 0.25
SOURCES = ["drums", "bass", "other", "vocals"]
LSB = 1 / 32768


# ---- the model ------------------------------------------------------------------------------

def released_htdemucs_kwargs() -> dict:
    """The released htdemucs hyperparameters, as the team's released-size parity test uses them."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    try:
        from test_parity_released import RELEASED
    finally:
        sys.path.pop(0)
    return dict(RELEASED["htdemucs"][1])


def build_models(work: Path, seed: int) -> tuple[Path, Path]:
    """Write `work/repo/NAME.th` (demucs package) and `work/NAME.safetensors` (stemsplit), once."""
    repo, native = work / "repo", work / f"{NAME}.safetensors"
    package = repo / f"{NAME}.th"
    if package.exists() and native.exists():
        return repo, native
    import torch
    from demucs.htdemucs import HTDemucs as ReferenceHTDemucs

    from stemsplit.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(seed)
    reference = ReferenceHTDemucs(**released_htdemucs_kwargs()).eval()
    with torch.no_grad():  # the package stores half precision; make both files hold the same values
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    repo.mkdir(parents=True, exist_ok=True)
    args, kwargs = reference._init_args_kwargs  # recorded by demucs' own constructor wrapper
    torch.save({"klass": type(reference), "args": args, "kwargs": kwargs, "training_args": {},
                "state": {k: v.half() if v.is_floating_point() else v for k, v in reference.state_dict().items()}},
               package)
    save_checkpoint(load_checkpoint(package), native)  # through stemsplit's own reader
    return repo, native


# ---- running one process --------------------------------------------------------------------

@dataclass
class Contender:
    label: str
    command: list[str]  # with {track} and {out} placeholders
    subdir: str  # where the stems land: {out}/subdir/<track name>/<stem>.wav
    runs: dict[float, list[Run]] = field(default_factory=dict)


def expand(command: list[str], track: str, out: str) -> list[str]:
    """Fill in the `{track}` and `{out}` placeholders (other braces belong to the tools)."""
    return [track if part == "{track}" else out if part == "{out}" else part for part in command]


def read_stems(folder: Path) -> dict[str, np.ndarray]:
    import soundfile as sf

    return {s: sf.read(str(folder / f"{s}.wav"), dtype="int16", always_2d=True)[0].astype(np.float32) * LSB
            for s in SOURCES}


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[s] - b[s]).max()) for s in SOURCES)


def snr_db(ref: dict[str, np.ndarray], est: dict[str, np.ndarray]) -> float:
    """Worst stem's SNR of `est` against `ref`, in dB."""
    worst = float("inf")
    for s in SOURCES:
        noise = float(np.sum((ref[s].astype(np.float64) - est[s]) ** 2))
        signal = float(np.sum(ref[s].astype(np.float64) ** 2))
        worst = min(worst, 10 * np.log10(signal / max(noise, 1e-30)))
    return worst


# ---- the floor ------------------------------------------------------------------------------

def floor_seconds(native: Path, device: str, threads: int, dtype: str = "float32") -> tuple[float, float, float]:
    """(model GFLOP per audio second, measured GFLOP/s of matmul in `dtype`, floor s per audio second)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stemsplit.models.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model = load_checkpoint(native).eval().to(device)
    mix = 0.1 * torch.randn(1, 2, int(SEGMENT * SAMPLERATE), device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(mix)
    per_audio_second = counter.get_total_flops() / (SEGMENT * (1 - OVERLAP))  # each segment advances 0.75 * 7.8 s
    size = 4096 if device == "cuda" else 1536
    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    best = float("inf")
    for _ in range(6 if device == "cuda" else 4):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    rate = 2 * size ** 3 / best
    return per_audio_second / 1e9, rate / 1e9, per_audio_second / rate


def default_precision(native: Path, device: str) -> str:
    """The precision `--precision auto` (stemsplit's default) picks for the bench model here."""
    from stemsplit.engine.separator import resolve_device, resolve_precision
    from stemsplit.models.checkpoint import load_checkpoint

    return resolve_precision("auto", resolve_device(device), load_checkpoint(native))


# ---- reporting ------------------------------------------------------------------------------

def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table that also reads well in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def hardware(device: str) -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, Python {platform.python_version()}"
    if device == "cuda":
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durations", default="30,180,600", help="Track lengths in seconds, comma separated.")
    parser.add_argument("--runs", type=int, default=3, help="Runs per tool and track (alternating A/B).")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Torch threads of both tools.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--long", type=float, default=3600, help="Seconds of the stemsplit-alone track (0: skip).")
    parser.add_argument("--batch-size", type=int, default=8, help="Batched stemsplit variant on CUDA.")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stemsplit-bench",
                        help="Folder for the model files, tracks and stems (reused between calls).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-results", action="store_true", help="Append the tables to benchmarks/RESULTS.md.")
    args = parser.parse_args()
    launcher = Launcher()  # first, while this process is still small

    durations = [float(d) for d in args.durations.split(",") if d.strip()]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore")
    print(f"hardware: {hardware(args.device)}; threads {args.threads}; device {args.device}", flush=True)
    repo, native = build_models(work, args.seed)
    py = sys.executable
    dev = args.device
    common = ["--overlap", str(OVERLAP), "--shifts", "0"]
    reference = Contender("demucs 4.1.0", [py, "-m", "demucs.separate", "--repo", str(repo), "-n", NAME, "-d", dev,
                                           *common, "-j", "1", "--clip-mode", "none", "-o", "{out}", "{track}"],
                          NAME)
    ours = [py, "-m", "stemsplit", "separate", "{track}", "--model-path", str(native), "--segment", str(SEGMENT),
            *common, "--bit-depth", "16", "--clip", "none", "-d", dev, "-q", "-o", "{out}",
            "--filename", "{track}/{stem}.{ext}"]
    exact = Contender("stemsplit fp32", ours + ["--precision", "fp32"], "")
    contenders = [reference, exact, Contender("stemsplit default", ours, "")]
    if dev == "cuda":
        contenders.append(Contender(f"stemsplit batch {args.batch_size}", ours + ["--batch-size", str(args.batch_size)], ""))
        contenders.append(Contender(f"stemsplit batch {args.batch_size} fp16",
                                    ours + ["--batch-size", str(args.batch_size), "--precision", "fp16"], ""))

    agreement: dict[float, float] = {}
    variant_snr: dict[str, dict[float, float]] = {c.label: {} for c in contenders[2:]}
    for seconds in durations:
        track = write_track(work / f"track_{int(seconds)}s.wav", seconds, args.seed)
        for run in range(args.runs):
            order = contenders if run % 2 == 0 else contenders[1:] + contenders[:1]
            for contender in order:
                out = work / "out" / contender.label.replace(" ", "_")
                shutil.rmtree(out, ignore_errors=True)
                result = launcher.run(expand(contender.command, track=str(track), out=str(out)), env)
                contender.runs.setdefault(seconds, []).append(result)
                print(f"  {seconds:>6.0f} s  run {run + 1}  {contender.label:<24} {result.wall:8.1f} s wall "
                      f"{result.cpu:8.1f} s cpu  {gib(result.rss)}", flush=True)
            if run == 0:
                stems = {c.label: read_stems(work / "out" / c.label.replace(" ", "_") / c.subdir / track.stem)
                         for c in contenders}
                agreement[seconds] = max_diff(stems[reference.label], stems[exact.label])
                if agreement[seconds] > 1e-3 + LSB:
                    sys.exit(f"the two tools disagree on the {seconds:.0f}-s track: max |diff| "
                             f"{agreement[seconds]:.2e} > 1e-3 (+1 LSB); the comparison would not be fair")
                for label, values in variant_snr.items():
                    values[seconds] = snr_db(stems[exact.label], stems[label])
                del stems

    gflop, rate, floor = floor_seconds(native, dev, args.threads)
    auto = default_precision(native, dev)
    floors = {"fp32": floor, "bf16": floor_seconds(native, dev, args.threads, "bfloat16")[2]}
    ran_in = {c.label: "fp32" for c in contenders} | {contenders[2].label: auto}
    header = ["track", "tool", "median wall s", "s per audio s", "x of floor", "median cpu s", "peak RSS",
              "wall ratio", "cpu ratio", "RSS ratio"]
    rows = []
    for seconds in durations:
        ref_wall = statistics.median(r.wall for r in reference.runs[seconds])
        ref_cpu = statistics.median(r.cpu for r in reference.runs[seconds])
        ref_rss = max(r.rss for r in reference.runs[seconds])
        for contender in contenders:
            wall = statistics.median(r.wall for r in contender.runs[seconds])
            cpu = statistics.median(r.cpu for r in contender.runs[seconds])
            rss = max(r.rss for r in contender.runs[seconds])
            rows.append([f"{seconds:.0f} s", contender.label, f"{wall:.1f}", f"{wall / seconds:.3f}",
                         f"{wall / seconds / floors.get(ran_in[contender.label], floor):.2f}", f"{cpu:.1f}", gib(rss), f"{wall / ref_wall:.2f}",
                         f"{cpu / ref_cpu:.2f}", f"{rss / ref_rss:.2f}"])
    main_table = table(header, rows)
    notes = ["stems agree: max |diff| stemsplit vs demucs "
             + ", ".join(f"{s:.0f} s: {d:.1e}" for s, d in agreement.items()) + " (limit 1e-3 + 1 LSB)",
             f"floor: {gflop:.1f} GFLOP per audio second / {rate:.1f} GFLOP/s measured fp32 matmul "
             f"({args.threads} threads) = {floor:.3f} s per audio second ('x of floor' = 1 would be perfect); "
             f"bf16 floor {floors['bf16']:.3f} s per audio second",
             f"stemsplit default ran in {auto} (--precision auto on this machine) and is compared with the "
             f"{auto} floor"]
    for label, values in variant_snr.items():
        notes.append(f"{label}: SNR of its stems vs stemsplit fp32 stems (worst stem) "
                     + ", ".join(f"{s:.0f} s: {v:.1f} dB" for s, v in values.items()))

    alone_rows = []
    if args.long > 0:
        track = write_track(work / f"track_{int(args.long)}s.wav", args.long, args.seed)
        contender = contenders[2]  # stemsplit at default settings: the memory claim is about them
        out = work / "out" / "long"
        shutil.rmtree(out, ignore_errors=True)
        result = launcher.run(expand(contender.command, track=str(track), out=str(out)), env)
        shutil.rmtree(out, ignore_errors=True)
        alone_rows.append([f"{args.long:.0f} s", contender.label + " (bench model)", f"{result.wall:.1f}",
                           f"{result.wall / args.long:.3f}", f"{result.cpu:.1f}", gib(result.rss)])
        print(f"  {args.long:>6.0f} s  {contender.label:<24} {result.wall:8.1f} s  {gib(result.rss)}", flush=True)
    from stemsplit.constants import DEFAULT_MODEL
    from stemsplit.models.registry import default_model_path

    default = default_model_path()
    default_command: list[str] = []
    if default is not None and default.exists():
        seconds = max(durations)
        track = work / f"track_{int(seconds)}s.wav"
        out = work / "out" / "default"
        shutil.rmtree(out, ignore_errors=True)
        default_command = [py, "-m", "stemsplit", "separate", "{track}", "-n", DEFAULT_MODEL, *common,
                           "--bit-depth", "16", "-d", dev, "-q", "-o", "{out}"]
        result = launcher.run(expand(default_command, track=str(track), out=str(out)), env)
        alone_rows.append([f"{seconds:.0f} s", f"embedded model ({default.name}, default precision)", f"{result.wall:.1f}",
                           f"{result.wall / seconds:.3f}", f"{result.cpu:.1f}", gib(result.rss)])
    else:
        notes.append("embedded default model: weights/default.safetensors does not exist yet; skipped")
    alone_table = table(["track", "run", "wall s", "s per audio s", "cpu s", "peak RSS"], alone_rows) if alone_rows else ""

    launcher.close()
    print()
    print(main_table)
    print()
    if alone_table:
        print(alone_table)
        print()
    print("\n".join(notes))

    if args.write_results:
        lines = [f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {dev}", "",
                 f"Hardware: {hardware(dev)}. Threads: {args.threads}. Runs per tool: {args.runs} (alternating).", "",
                 f"Benchmark: `{shlex.join([py.rsplit('/', 1)[-1], 'benchmarks/vs_demucs.py', *sys.argv[1:]])}`", "",
                 "Commands ({track}, {out} filled in per run):", ""]
        lines += [f"- {c.label}: `{shlex.join(c.command)}`" for c in contenders]
        if default_command:
            lines.append(f"- embedded model: `{shlex.join(default_command)}`")
        lines += ["", main_table, ""]
        if alone_table:
            lines += [alone_table, ""]
        lines += [f"- {n}" for n in notes] + [""]
        results = HERE / "RESULTS.md"
        head = "" if results.exists() else "# Benchmark results (written by benchmarks/vs_demucs.py)\n\n"
        with open(results, "a") as handle:
            handle.write(head + "\n".join(lines) + "\n")
        print(f"\nappended to {results}")


if __name__ == "__main__":
    main()
