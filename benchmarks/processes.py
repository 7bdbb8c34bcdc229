"""Running the benchmarked command lines as whole processes, with honest peak memory.

Shared by the benchmark scripts. Each child's wall time, CPU time and peak RSS come from
`os.wait4`, so they are its own. Children are started from a small launcher process forked before
the calling script loads anything: Linux counts the memory high-water mark of the process a child
was forked from in the child's peak RSS (exec records the old address space's), so a child spawned
straight from a script that holds a model or decoded stems would report the script's peak instead.
"""
from __future__ import annotations

import multiprocessing
import os
import shlex
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system CPU seconds of the child (less sensitive to other load than wall)
    rss: int  # bytes, peak resident set of the child


class Launcher:
    """Starts the measured processes from a helper forked while the caller is still small.

    Create it first thing in a script; the helper never loads anything, so each child's peak RSS
    is its own.
    """

    def __init__(self) -> None:
        self._pool = multiprocessing.get_context("fork").Pool(1)

    def run(self, command: list[str], env: dict) -> Run:
        return self._pool.apply(run_child, (command, env))

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


def run_child(command: list[str], env: dict) -> Run:
    """Run a whole process; wall time and its own peak RSS (not the cumulative RUSAGE_CHILDREN).

    Call it through `Launcher.run`, so the peak RSS is not inflated by the caller's memory.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()  # drained while it runs, so a chatty child never blocks
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(command)}\n"
                           f"{err.decode(errors='replace')[-3000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)  # ru_maxrss: KiB on Linux
