"""keep_freed_memory: large blocks come from glibc's reusable heap instead of fresh mmaps."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# The allocator setting is process-wide, hence a child process. It mallocs a 64 MiB block and reads
# glibc's chunk header just before it: bit 0x2 (IS_MMAPPED) says the block is a private mmap that
# free() will unmap, so its pages would be faulted in and zeroed again on the next allocation.
_PROBE = textwrap.dedent("""
    import contextlib, ctypes, io, sys
    from stemsplit.runtime import keep_freed_memory
    tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None
    if sys.argv[1] == "command":  # any subcommand goes through the CLI's root callback
        from stemsplit.cli import app
        with contextlib.redirect_stdout(io.StringIO()):
            app(["models", "list", "--json"], standalone_mode=False)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(64 << 20)
    mmapped = bool(ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2)
    libc.free(block)
    print(tuned, mmapped)
""")


def _probe(mode: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True).stdout
    tuned, mmapped = out.split()
    return tuned, mmapped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator tuning is Linux only")
def test_large_blocks_come_from_the_reusable_heap() -> None:
    tuned, mmapped = _probe("tuned")
    if tuned != "True":
        pytest.skip("this libc has no mallopt (not glibc)")
    assert mmapped == "False"
    assert _probe("plain") == ("None", "True")  # without it, glibc maps (and later unmaps) the block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator tuning is Linux only")
def test_every_command_tunes_the_allocator() -> None:
    if _probe("tuned")[0] != "True":
        pytest.skip("this libc has no mallopt (not glibc)")
    assert _probe("command") == ("None", "False")


def test_commands_tune_but_the_library_does_not() -> None:
    code = "import stemsplit, stemsplit.engine.separator, stemsplit.cli; import sys; print('stemsplit.runtime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
