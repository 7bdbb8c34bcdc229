"""Process-wide facts and tuning for long CPU runs: keep freed tensor memory for reuse, and
tell whether the processor computes bfloat16 natively.

Why: glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB)
with a fresh `mmap` and gives it back with `munmap` on free. One forward pass of a Demucs model
allocates and frees hundreds of such buffers, so every segment faults in (and the kernel zeroes)
the same gigabyte of pages again: measured on htdemucs, 1.3 million page faults and 2 s of
system time per four 7.8-s segments, and forward passes 3-15% slower than with the memory kept.
Raising the mmap and trim thresholds makes glibc keep freed blocks in its heap and hand them out
again; the working set repeats segment after segment, so peak memory stays the same.

It must not run on import: it changes the allocator of the whole process, so only the command
line (which owns its process) opts in. Elsewhere than glibc (macOS, Windows, musl) it does
nothing.

bfloat16 is only faster than float32 on CPUs with bf16 instructions (AVX512-BF16 or AMX on x86);
elsewhere torch emulates it, from three to over a hundred times slower than float32 (the latter a
matrix product on an AVX2-only EPYC). Linux says which the CPU has in /proc/cpuinfo; other systems
are taken not to have them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP = 1 << 30  # bytes: blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap is kept
_OLD_GLIBC_MMAP_MAX = 32 << 20  # glibc before 2.35 refuses mmap thresholds above 32 MiB


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of unmapping it; True when it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # musl has no such knobs
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(_M_MMAP_THRESHOLD, _KEEP) and not mallopt(_M_MMAP_THRESHOLD, _OLD_GLIBC_MMAP_MAX):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))


_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when every core of this (Linux, x86) machine has AVX512-BF16 or AMX-BF16."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            flag_lines = [line for line in handle if line.startswith("flags")]
    except OSError:
        return False
    return bool(flag_lines) and all(any(f in line.split() for f in _BF16_FLAGS) for line in flag_lines)
