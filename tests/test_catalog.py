"""The model catalog and downloads, against a real HTTP server on 127.0.0.1 serving checkpoints
built here: success, resume, corrupted bytes, 404, connection refused; plus local loading."""
import hashlib
import http.server
import re
import socket
import threading
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

import stemsplit.nn as snn
from stemsplit.errors import CheckpointError, DownloadError, ModelError
from stemsplit.models import checkpoint, download, registry, resolve
from stemsplit.nn.bag import BagOfModels

SOURCES = ["drums", "bass", "other", "vocals"]


def tiny(seed=0):
    torch.manual_seed(seed)
    return snn.HTDemucs(sources=SOURCES, channels=16, depth=2, nfft=512, t_layers=1, segment=Fraction(1, 2)).eval()


def run(model):
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(1, 2, 11025))


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` (path -> bytes) with HTTP Range support; records each request."""

    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.requests.append((self.path, self.headers.get("Range")))
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and self.server.ranges:
            start = int(match.group(1))
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch, online):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.ranges = {}, [], True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv(registry.REMOTE_ROOT_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/models")
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def published(server, tmp_path, seed=0, name="tiny"):
    """Save a tiny checkpoint, put it on the server, and return (RemoteFile, bytes, model)."""
    model = tiny(seed)
    local = tmp_path / f"{name}-{seed}.safetensors"
    checkpoint.save_checkpoint(model, local)
    data = local.read_bytes()
    remote = registry.RemoteFile(path=f"set/{local.name}", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    server.files[f"models/{remote.path}"] = data
    return remote, data, model


def test_download_fetches_verifies_and_caches(server, tmp_path):
    remote, data, _ = published(server, tmp_path)
    seen = []
    path = download.download_file(remote, progress=lambda name, done, total: seen.append((name, done, total)))
    assert path == tmp_path / "cache" / remote.name and path.read_bytes() == data
    assert seen[-1] == (remote.name, len(data), len(data))
    assert sorted(p.name for p in path.parent.iterdir()) == [remote.name]
    download.download_file(remote)
    assert len(server.requests) == 1, "a cached file is not fetched again"


def test_partial_download_resumes_with_a_range_request(server, tmp_path):
    remote, data, _ = published(server, tmp_path)
    partial = tmp_path / "cache" / f"{remote.name}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:1000])
    seen = []
    path = download.download_file(remote, progress=lambda name, done, total: seen.append(done))
    assert path.read_bytes() == data and not partial.exists()
    assert server.requests == [(f"/models/{remote.path}", "bytes=1000-")]
    assert seen[0] == 1000 and seen[-1] == len(data)


def test_a_server_that_ignores_ranges_gets_a_fresh_download(server, tmp_path):
    remote, data, _ = published(server, tmp_path)
    server.ranges = False
    partial = tmp_path / "cache" / f"{remote.name}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"stale bytes that must not stay in front")
    assert download.download_file(remote).read_bytes() == data


def test_a_complete_partial_file_is_verified_without_refetching(server, tmp_path):
    remote, data, _ = published(server, tmp_path)
    partial = tmp_path / "cache" / f"{remote.name}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data)
    assert download.download_file(remote).read_bytes() == data


@pytest.mark.parametrize("kept", ["longer", "other"])
def test_resumed_bytes_that_do_not_check_out_are_fetched_again_whole(server, tmp_path, kept):
    """A partial download longer than the file (the server answers 416) or of another version of
    it (the resumed bytes land after the wrong ones) is not the user's problem: fetch afresh."""
    remote, data, _ = published(server, tmp_path)
    partial = tmp_path / "cache" / f"{remote.name}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data + b"tail" if kept == "longer" else bytes(1000))
    assert download.download_file(remote).read_bytes() == data
    assert server.requests[-1] == (f"/models/{remote.path}", None)
    assert sorted(p.name for p in partial.parent.iterdir()) == [remote.name]


def test_a_download_running_in_another_process_is_not_written_into(server, tmp_path):
    """While one download holds `<name>.part`, a second one (here started from the first one's
    progress callback) fetches its own copy instead of appending to the first one's file."""
    remote, data, _ = published(server, tmp_path)
    inner = []

    def progress(name, done, total):
        if done and not inner:
            inner.append(download.download_file(remote))

    path = download.download_file(remote, progress=progress)
    assert inner == [path] and path.read_bytes() == data
    assert server.requests == [(f"/models/{remote.path}", None)] * 2
    assert sorted(p.name for p in path.parent.iterdir()) == [remote.name]


def test_ctrl_c_mid_download_leaves_a_partial_that_is_resumed_and_checked(server, tmp_path):
    remote, data, _ = published(server, tmp_path)

    def interrupt(name, done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download.download_file(remote, progress=interrupt)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{remote.name}.part"]
    assert download.download_file(remote).read_bytes() == data
    assert server.requests[-1] == (f"/models/{remote.path}", f"bytes={len(data)}-")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to stand for a full disk")
def test_a_full_cache_folder_is_reported_as_such_not_as_an_interruption(server, tmp_path):
    remote, _, _ = published(server, tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{remote.name}.part").symlink_to("/dev/full")
    with pytest.raises(DownloadError, match="cannot write .* into the model cache folder .*"
                                            "No space left on device.*STEMSPLIT_CACHE") as info:
        download.download_file(remote)
    assert "resume" not in str(info.value)


def test_a_folder_in_the_place_of_the_cached_file_is_a_download_error(server, tmp_path):
    remote, _, _ = published(server, tmp_path)
    (tmp_path / "cache" / remote.name).mkdir(parents=True)
    with pytest.raises(DownloadError, match=f"cannot place {remote.name} at .*{remote.name}"):
        download.download_file(remote)


def test_a_remote_root_that_is_not_a_url_is_a_download_error(tmp_path, monkeypatch, online):
    monkeypatch.setenv(registry.REMOTE_ROOT_ENV, "mirror.invalid/demucs")
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    remote = registry.RemoteFile(path="x/955717e8-8726e21a.th", sha256="8726e21a", size=None)
    with pytest.raises(DownloadError, match="955717e8-8726e21a.th: unknown url type.*STEMSPLIT_REMOTE_ROOT"):
        download.download_file(remote)


def test_corrupted_bytes_are_deleted_and_reported(server, tmp_path):
    remote, data, _ = published(server, tmp_path)
    server.files[f"models/{remote.path}"] = data[:500] + bytes([data[500] ^ 0xFF]) + data[501:]
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download.download_file(remote)
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_file_says_where_to_place_it(server, tmp_path):
    remote = registry.RemoteFile(path="set/absent.th", sha256="00", size=None)
    with pytest.raises(DownloadError) as info:
        download.download_file(remote)
    message = str(info.value)
    assert "HTTP 404" in message and remote.url() in message
    assert str(tmp_path / "cache" / "absent.th") in message
    assert list((tmp_path / "cache").iterdir()) == [], "no empty partial file is left behind"


def test_connection_refused_says_where_to_place_it(tmp_path, monkeypatch, online):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(registry.REMOTE_ROOT_ENV, f"http://127.0.0.1:{port}/")
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    remote = registry.RemoteFile(path="x/955717e8-8726e21a.th", sha256="8726e21a", size=None)
    with pytest.raises(DownloadError, match="refused") as info:
        download.download_file(remote)
    assert f"place it at {tmp_path / 'cache' / '955717e8-8726e21a.th'}" in str(info.value)


def test_load_model_by_name_downloads_and_builds_the_bag(server, tmp_path, monkeypatch):
    files = [published(server, tmp_path, seed=s) for s in range(2)]
    weights = ((1.0, 1.0, 0.0, 0.0), (0.0, 1.0, 1.0, 1.0))
    entry = registry.CatalogEntry(name="pair", description="test", files=tuple(f[0] for f in files),
                                 sources=tuple(SOURCES), weights=weights)
    monkeypatch.setitem(registry.MODELS, "pair", entry)
    bag = resolve.load_model("pair")
    assert isinstance(bag, BagOfModels) and bag.weights == [list(w) for w in weights]
    assert torch.equal(run(bag.models[1]), run(files[1][2]))
    assert [info.cached for info in registry.list_models() if info.name == "pair"] == [True]


def test_single_file_entry_loads_as_the_model_with_its_segment(server, tmp_path, monkeypatch):
    remote, _, model = published(server, tmp_path)
    entry = registry.CatalogEntry(name="solo", description="test", files=(remote,), sources=tuple(SOURCES),
                                 segment=0.25)
    monkeypatch.setitem(registry.MODELS, "solo", entry)
    loaded = resolve.load_model("solo")
    assert isinstance(loaded, snn.HTDemucs) and loaded.segment == 0.25


def test_a_folder_named_like_a_model_does_not_hide_it(server, tmp_path, monkeypatch):
    """Running inside `separated/` after `-n solo` (which made separated/solo/) still finds the model."""
    remote, _, _ = published(server, tmp_path)
    monkeypatch.setitem(registry.MODELS, "solo", registry.CatalogEntry(
        name="solo", description="test", files=(remote,), sources=tuple(SOURCES)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "solo").mkdir()
    assert isinstance(resolve.load_model("solo"), snn.HTDemucs)


def test_a_cache_folder_that_cannot_be_created_is_a_download_error(server, tmp_path, monkeypatch):
    remote, _, _ = published(server, tmp_path)
    (tmp_path / "taken").write_text("a file where the cache folder should be")
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "taken" / "cache"))
    with pytest.raises(DownloadError, match="cannot create the model cache folder .*STEMSPLIT_CACHE"):
        download.download_file(remote)
    assert server.requests == []


def test_local_paths_and_repos_load_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.REMOTE_ROOT_ENV, "http://127.0.0.1:9/")
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    model = tiny()
    checkpoint.save_checkpoint(model, tmp_path / "mine.safetensors")
    assert torch.equal(run(resolve.load_model(tmp_path / "mine.safetensors")), run(model))
    assert torch.equal(run(resolve.load_model("mine", repo=tmp_path)), run(model))
    (tmp_path / "duo.yaml").write_text(yaml.safe_dump({"models": ["mine.safetensors", "mine"]}))
    assert isinstance(resolve.load_model("duo", repo=tmp_path), BagOfModels)
    with pytest.raises(ModelError, match="no model 'other'"):
        resolve.load_model("other", repo=tmp_path)
    with pytest.raises(ModelError, match="not a folder"):
        resolve.load_model("mine", repo=tmp_path / "nowhere")
    with pytest.raises(ModelError, match="is a checkpoint file, and --repo .* looks up model names"):
        resolve.load_model(tmp_path / "mine.safetensors", repo=tmp_path)  # not silently ignoring the repo
    with pytest.raises(ModelError, match="does not exist"):
        resolve.load_model(str(tmp_path / "missing.th"))
    with pytest.raises(ModelError, match="is a folder"):
        resolve.load_model(tmp_path)


def test_repo_names_stay_inside_the_repo_and_are_not_patterns(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    checkpoint.save_checkpoint(tiny(), tmp_path / "outside.safetensors")
    checkpoint.save_checkpoint(tiny(), repo / "inside.safetensors")
    (repo / "inside.safetensors").rename(repo / "abcd1234-00000000.th")  # any bytes: never loaded below
    for name in ("../outside", str(tmp_path / "outside"), "..", "sub\\x"):
        with pytest.raises(ModelError, match="must be a plain name"):
            resolve.load_model(name, repo=repo)
    for name in ("*", "abcd123?", "[a]bcd1234"):
        with pytest.raises(ModelError, match="no model"):
            resolve.load_model(name, repo=repo)
    (repo / "pat.yaml").write_text(yaml.safe_dump({"models": ["*"]}))
    with pytest.raises(CheckpointError, match="lists member '\\*'"):
        resolve.load_model("pat", repo=repo)


def test_repo_with_the_catalog_files_is_checked_and_assembled(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(tiny(), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    remote = registry.RemoteFile(path=f"x/abcd1234-{prefix}.safetensors", sha256=prefix, size=len(data))
    monkeypatch.setitem(registry.MODELS, "local", registry.CatalogEntry(
        name="local", description="test", files=(remote,), sources=tuple(SOURCES)))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / remote.name).write_bytes(data)
    assert isinstance(resolve.load_model("local", repo=repo), snn.HTDemucs)
    (repo / remote.name).write_bytes(data[:-1] + b"\x00")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        resolve.load_model("local", repo=repo)


def test_unknown_and_quantized_names_are_model_errors():
    with pytest.raises(ModelError, match="did you mean 'htdemucs_ft'"):
        registry.get_entry("htdemucs_fr")
    with pytest.raises(ModelError, match="diffq-quantized.*'mdx_extra'"):
        resolve.load_model("mdx_extra_q")


def test_default_model_missing_and_present(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "default_model_path", lambda: None)
    with pytest.raises(ModelError, match="default.safetensors"):
        resolve.load_model()
    info = registry.list_models()[0]  # (offline, htdemucs not cached: no default to mark)
    assert not info.default and info.name == registry.DEFAULT_MODEL and not info.cached
    path = tmp_path / "default.safetensors"
    checkpoint.save_checkpoint(tiny(), path)
    monkeypatch.setattr(registry, "default_model_path", lambda: path)
    assert isinstance(resolve.load_model(None), snn.HTDemucs)
    info = registry.list_models()[0]
    assert info.cached and info.size_bytes == path.stat().st_size and info.sources == SOURCES and info.default


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "here"))
    assert registry.cache_dir() == tmp_path / "here"
    monkeypatch.delenv(registry.CACHE_ENV)
    assert registry.cache_dir().name == "stemsplit"


def test_catalog_matches_the_official_release_lists(monkeypatch):
    """Names, files, bag weights and segments agree with the demucs package's own remote lists."""
    import demucs.pretrained

    monkeypatch.delenv(registry.REMOTE_ROOT_ENV, raising=False)
    remote = Path(demucs.pretrained.__file__).parent / "remote"
    urls = demucs.pretrained._parse_remote_files(remote / "files.txt")
    for name, entry in registry.MODELS.items():
        bag = yaml.safe_load((remote / f"{name}.yaml").read_text())
        assert [file.name.split("-")[0] for file in entry.files] == bag["models"], name
        assert [file.url() for file in entry.files] == [urls[sig] for sig in bag["models"]], name
        expected_weights = bag.get("weights")
        assert (None if entry.weights is None else [list(w) for w in entry.weights]) == expected_weights, name
        assert entry.segment == bag.get("segment"), name
        for file in entry.files:
            assert file.name.endswith(f"-{file.sha256}.th")
    assert set(registry.QUANTIZED) == {"mdx_q", "mdx_extra_q"}


def test_list_models_reports_every_entry_and_what_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    names = [info.name for info in registry.list_models()]
    assert names == [registry.DEFAULT_MODEL, *registry.MODELS]
    (tmp_path / "955717e8-8726e21a.th").write_bytes(b"x")
    cached = {info.name: info.cached for info in registry.list_models()}
    assert cached["htdemucs"] and not cached["htdemucs_ft"]


def test_local_checkpoint_errors_stay_checkpoint_errors(tmp_path):
    (tmp_path / "broken.th").write_bytes(b"\x80\x02 definitely not a model")
    with pytest.raises(CheckpointError, match="broken.th"):
        resolve.load_model(tmp_path / "broken.th")


def test_default_model_is_found_beside_a_source_checkout(monkeypatch):
    """Python started in the repository imports stemsplit from the source tree, where there is no
    stemsplit.weights package: the embedded model is then read from weights/ beside it."""
    import importlib.resources
    from pathlib import Path

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    assert registry.default_model_path() == Path(registry.__file__).resolve().parents[2] / "weights" / "default.safetensors"
