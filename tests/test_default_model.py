"""The default model (no model name): htdemucs if cached, else downloaded now, else, when that
download cannot start, the embedded model with one line on stderr; offline mode opens no socket.

Everything runs against 127.0.0.1 (an HTTP server, a refused port, a socket that accepts and never
answers) or a name that cannot resolve. The session is offline (conftest): these tests lift it.
htdemucs itself (84 MB) is replaced by a tiny stand-in checkpoint: in-process by patching the
catalog, and for the command line by `launch.py`, written by the `launcher` fixture, which patches
`registry.MODELS["htdemucs"]` from `$TEST_STANDIN` and then runs the real `stemsplit` entry point
(`python -m stemsplit` with one catalog entry swapped).
"""
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import soundfile as sf
import torch

from conftest import run_cli, tone
from stemsplit.constants import DEFAULT_MODEL
from stemsplit.errors import DownloadError, DownloadNotStarted
from stemsplit.models import download, registry, resolve

OFFICIAL = registry.MODELS["htdemucs"].files[0].name  # 955717e8-8726e21a.th

LAUNCH = '''import json, os, sys
from stemsplit.models import registry
spec = json.loads(os.environ["TEST_STANDIN"])
file = registry.RemoteFile(path=spec["path"], sha256=spec["sha256"], size=spec["size"])
registry.MODELS["htdemucs"] = registry.CatalogEntry(name="htdemucs", description="stand-in", files=(file,),
                                                    sources=registry.FOUR_SOURCES)
from stemsplit.cli import main
sys.argv[0] = "stemsplit"
main()
'''


@pytest.fixture
def song(tmp_path):
    path = tmp_path / "song.wav"
    sf.write(path, tone(1.2, 44100, 2), 44100)
    return path


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _env(cache, root, **extra):
    return {"STEMSPLIT_OFFLINE": "0", registry.CACHE_ENV: str(cache), registry.REMOTE_ROOT_ENV: root, **extra}


@pytest.fixture
def standin(tiny_checkpoint):
    """The tiny checkpoint as htdemucs's one file: (RemoteFile, bytes)."""
    data = tiny_checkpoint.read_bytes()
    return registry.RemoteFile(path="ht/standin.safetensors", sha256=hashlib.sha256(data).hexdigest(),
                               size=len(data)), data


@pytest.fixture
def launcher(tmp_path, standin):
    """Run the real command line with htdemucs replaced by the stand-in (see the module docstring)."""
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    remote, _ = standin

    def run(*args, cwd, env):
        spec = json.dumps({"path": remote.path, "sha256": remote.sha256, "size": remote.size})
        full = dict(os.environ, OMP_NUM_THREADS="1", TEST_STANDIN=spec, **env)
        return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True,
                              env=full, timeout=300)

    return run


@pytest.fixture
def patched(standin, monkeypatch):
    """In-process: htdemucs is the stand-in."""
    remote, _ = standin
    monkeypatch.setitem(registry.MODELS, "htdemucs", registry.CatalogEntry(
        name="htdemucs", description="stand-in", files=(remote,), sources=registry.FOUR_SOURCES))
    return remote


class _Serve(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; `server.cut` sends the full Content-Length and closes half-way."""

    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.server.cut else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Serve)
    httpd.files, httpd.requests, httpd.cut = {}, [], False
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    httpd.root = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Silent:
    """A listening socket never accept()ed: connections complete in its backlog and get no answer.
    `connections()` counts those made so far (accepting them now, after the run)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.root = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"

    def connections(self):
        self.listener.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def silent():
    listener = _Silent()
    yield listener
    listener.listener.close()


def _summary(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _stems_under(folder):
    return sorted(path.name for path in folder.iterdir())


# ---- htdemucs cached or downloaded ----------------------------------------------------------------


def test_default_uses_a_cached_htdemucs_with_no_network(launcher, standin, song, cache, tmp_path, silent):
    remote, data = standin
    cache.mkdir()
    (cache / remote.name).write_bytes(data)
    result = launcher(str(song), "--json", cwd=tmp_path, env=_env(cache, silent.root, STEMSPLIT_OFFLINE="1"))
    summary = _summary(result)
    assert summary["model"] == "htdemucs" and summary["ok"] == 1
    assert _stems_under(tmp_path / "separated" / "htdemucs" / "song") == ["bass.wav", "drums.wav", "other.wav",
                                                                         "vocals.wav"]
    assert result.stderr == "" and silent.connections() == 0


def test_default_downloads_htdemucs_when_not_cached_and_says_why_with_v(launcher, standin, song, cache, tmp_path,
                                                                         server):
    remote, data = standin
    server.files[remote.path] = data
    result = launcher(str(song), "--json", cwd=tmp_path, env=_env(cache, server.root))
    summary = _summary(result)
    assert summary["model"] == "htdemucs" and server.requests == [f"/{remote.path}"]
    assert (cache / remote.name).read_bytes() == data
    assert (tmp_path / "separated" / "htdemucs" / "song" / "vocals.wav").is_file()
    verbose = launcher(str(song), "-v", "--overwrite", cwd=tmp_path, env=_env(cache, server.root))
    assert verbose.returncode == 0, verbose.stderr
    assert "default model htdemucs: htdemucs is in the model cache" in verbose.stdout
    assert len(server.requests) == 1, "cached now: not fetched again"


def test_a_download_that_fails_part_way_is_an_error_not_a_fallback(launcher, standin, song, cache, tmp_path, server):
    remote, data = standin
    server.files[remote.path], server.cut = data, True
    result = launcher(str(song), "--json", cwd=tmp_path, env=_env(cache, server.root))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    half = f"stopped at {len(data) // 2} of {len(data)} bytes; run again to resume"
    assert lines == [f"error: download of standin.safetensors {half}"]
    assert "embedded" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == "htdemucs" and summary["failed"] == 1 and half in summary["error"]
    assert not (cache / remote.name).exists(), "no broken file in the cache"
    assert [p.name for p in cache.iterdir()] in ([], [f"{remote.name}.part"])  # a resumable partial at most
    assert not (tmp_path / "separated").exists()


# ---- the fallback ---------------------------------------------------------------------------------


def _assert_fell_back(result, tmp_path, cache, why):
    summary = _summary(result)
    assert summary["model"] == DEFAULT_MODEL and summary["ok"] == 1
    assert (tmp_path / "separated" / DEFAULT_MODEL / "song" / "vocals.wav").is_file()
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"note: using the small embedded model {DEFAULT_MODEL}: ")
    assert why in lines[0]
    assert f"`stemsplit models download htdemucs`, or copy {OFFICIAL} into {cache}" in lines[0]
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.parametrize("where", ["refused", "unresolvable"])
def test_a_download_that_cannot_start_falls_back_to_the_embedded_model(where, song, cache, tmp_path):
    root = f"http://127.0.0.1:{_free_port()}/" if where == "refused" else "http://nonexistent.invalid/"
    result = run_cli(str(song), "--json", cwd=tmp_path, env=_env(cache, root))
    _assert_fell_back(result, tmp_path, cache, "htdemucs could not be downloaded (")


def test_a_server_that_never_answers_falls_back_within_the_connect_timeout(song, cache, tmp_path, silent,
                                                                            monkeypatch):
    for key, value in _env(cache, silent.root, STEMSPLIT_CONNECT_TIMEOUT="1").items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    choice = resolve.resolve_default()
    elapsed = time.monotonic() - started
    assert choice.fallback and choice.name == DEFAULT_MODEL and elapsed < 1 + 1.0, elapsed
    assert choice.reason == "htdemucs could not be downloaded (no answer within 1 s)"
    assert silent.connections() == 1
    result = run_cli(str(song), "--json", cwd=tmp_path, env=_env(cache, silent.root, STEMSPLIT_CONNECT_TIMEOUT="1"))
    _assert_fell_back(result, tmp_path, cache, "(no answer within 1 s)")


def _resolve_with_lookup(monkeypatch, cache, root, answer):
    """resolve_default() with the connect timeout at 0.5 s and every name lookup going through
    `answer(host, release)`, which returns the name to look up really and may wait on `release`
    (set when the call returns): (choice, seconds taken)."""
    import socket
    import threading

    release = threading.Event()
    real_lookup = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *args, **kwargs: real_lookup(answer(host, release), *args, **kwargs))
    for key, value in _env(cache, root, STEMSPLIT_CONNECT_TIMEOUT="0.5").items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    try:
        return resolve.resolve_default(), time.monotonic() - started
    finally:
        release.set()


def test_a_name_lookup_that_never_answers_falls_back_within_the_connect_timeout(cache, monkeypatch):
    def hung(host, release):
        if host == "hung-resolver.invalid":
            release.wait(30)  # a resolver whose packets vanish
        return host

    choice, seconds = _resolve_with_lookup(monkeypatch, cache, "http://hung-resolver.invalid/", hung)
    assert seconds < 0.5 + 1.0
    assert choice.fallback and choice.name == DEFAULT_MODEL
    assert choice.reason == "htdemucs could not be downloaded (looking up hung-resolver.invalid took more than 0.5 s)"


def test_the_name_is_looked_up_once_so_a_resolver_that_hangs_on_the_repeat_cannot_stall(
        monkeypatch, cache, patched, server, standin):
    lookups = []

    def answers_once(host, release):
        if host != "answers-once.invalid":
            return host
        lookups.append(host)
        if len(lookups) > 1:
            release.wait(30)  # the repeat vanishes
        return "127.0.0.1"

    server.files[patched.path] = standin[1]
    root = f"http://answers-once.invalid:{server.server_address[1]}/"
    choice, seconds = _resolve_with_lookup(monkeypatch, cache, root, answers_once)
    assert (choice.name, choice.fallback) == ("htdemucs", False), choice.reason
    assert lookups == ["answers-once.invalid"] and seconds < 5
    assert (cache / patched.name).is_file()


def test_the_default_connect_timeout_is_a_few_seconds(monkeypatch):
    monkeypatch.delenv(download.CONNECT_TIMEOUT_ENV, raising=False)
    assert download.connect_timeout() == 3.0
    monkeypatch.setenv(download.CONNECT_TIMEOUT_ENV, "never")
    with pytest.raises(DownloadError, match="STEMSPLIT_CONNECT_TIMEOUT must be a number"):
        download.connect_timeout()


# ---- offline --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_opens_no_socket_and_uses_the_embedded_model(how, song, cache, tmp_path, silent):
    args, env = (["--offline"], _env(cache, silent.root)) if how == "flag" else \
        ([], _env(cache, silent.root, STEMSPLIT_OFFLINE="1"))
    result = run_cli(str(song), "--json", *args, cwd=tmp_path, env=env)
    _assert_fell_back(result, tmp_path, cache, "offline mode is on and htdemucs is not in the model cache")
    assert silent.connections() == 0


def test_naming_the_embedded_model_never_touches_the_network(song, cache, tmp_path, silent):
    result = run_cli(str(song), "-n", DEFAULT_MODEL, "--json", cwd=tmp_path, env=_env(cache, silent.root))
    assert _summary(result)["model"] == DEFAULT_MODEL and result.stderr == ""
    assert silent.connections() == 0


def test_a_named_uncached_model_offline_is_a_clear_error(song, cache, tmp_path, silent):
    result = run_cli(str(song), "-n", "htdemucs", "--offline", cwd=tmp_path, env=_env(cache, silent.root))
    assert result.returncode == 1 and silent.connections() == 0
    assert f"{OFFICIAL} is not in the model cache {cache} and offline mode allows no download" in result.stderr


def _no_sockets(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_library_offline_opens_no_socket(monkeypatch, cache, patched):
    for key, value in _env(cache, "http://127.0.0.1:9/").items():
        monkeypatch.setenv(key, value)
    _no_sockets(monkeypatch)
    seen = []
    model = resolve.load_model(offline=True, on_default=seen.append)
    assert seen[0].name == DEFAULT_MODEL and seen[0].fallback and list(model.sources)
    with pytest.raises(DownloadNotStarted, match="offline mode allows no download"):
        resolve.load_model("htdemucs", offline=True)
    monkeypatch.setenv("STEMSPLIT_OFFLINE", "1")
    assert resolve.resolve_default().reason == "offline mode is on and htdemucs is not in the model cache"


# ---- the library and `stemsplit models` -----------------------------------------------------------


def test_library_default_follows_the_same_policy(monkeypatch, cache, patched, server, standin):
    import stemsplit

    for key, value in _env(cache, f"http://127.0.0.1:{_free_port()}/").items():
        monkeypatch.setenv(key, value)
    seen = []
    resolve.load_model(on_default=seen.append)
    assert seen[0].name == DEFAULT_MODEL and "could not be downloaded" in seen[0].reason
    stems = stemsplit.separate(torch.zeros(2, 4410), samplerate=44100)
    assert sorted(stems) == sorted(registry.FOUR_SOURCES)
    _, data = standin
    server.files[patched.path] = data
    monkeypatch.setenv(registry.REMOTE_ROOT_ENV, server.root)
    seen.clear()
    resolve.load_model(on_default=seen.append)
    assert (seen[0].name, seen[0].fallback) == ("htdemucs", False) and (cache / patched.name).is_file()


def test_models_list_marks_what_the_default_resolves_to_now(cache, tmp_path, silent):
    def infos(**extra):
        result = run_cli("models", "--json", cwd=tmp_path, env=_env(cache, silent.root, **extra))
        assert result.returncode == 0, result.stderr
        return {info["name"]: info for info in json.loads(result.stdout) if info["default"]}

    online = infos()
    assert list(online) == ["htdemucs"] and "downloaded on first use" in online["htdemucs"]["default_reason"]
    offline = infos(STEMSPLIT_OFFLINE="1")
    assert list(offline) == [DEFAULT_MODEL]
    assert offline[DEFAULT_MODEL]["default_reason"] == "offline mode is on and htdemucs is not in the model cache"
    cache.mkdir()
    shutil.copyfile(__file__, cache / OFFICIAL)  # placed by hand (not checked: listing reads no file)
    assert list(infos(STEMSPLIT_OFFLINE="1")) == ["htdemucs"]
    assert silent.connections() == 0, "listing never touches the network"
