"""`stemsplit models ...` run as a real subprocess."""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from stemsplit.models import registry


def stemsplit(*args, env=None):
    """Online (the session is offline, see conftest): these runs download from local servers."""
    return subprocess.run([sys.executable, "-m", "stemsplit", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", "STEMSPLIT_OFFLINE": "0", **(env or {})}, timeout=120)


@pytest.fixture
def cache(tmp_path):
    return {registry.CACHE_ENV: str(tmp_path / "cache")}


def test_models_list_json_names_every_model_and_marks_the_default(cache, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "955717e8-8726e21a.th").write_bytes(b"placed by hand")
    result = stemsplit("models", "list", "--json", env=cache)
    assert result.returncode == 0, result.stderr
    infos = {info["name"]: info for info in json.loads(result.stdout)}
    assert list(infos) == [registry.DEFAULT_MODEL, *registry.MODELS]
    assert infos["htdemucs"]["default"] and not infos[registry.DEFAULT_MODEL]["default"], "the cached htdemucs"
    assert infos["htdemucs"]["default_reason"] == "htdemucs is in the model cache"
    assert infos["htdemucs"]["cached"] and not infos["htdemucs_ft"]["cached"]
    assert infos["htdemucs_6s"]["sources"][-2:] == ["guitar", "piano"]


def test_models_table_is_the_default_action(cache):
    result = stemsplit("models", env=cache)
    assert result.returncode == 0, result.stderr
    for name in registry.MODELS:
        assert name in result.stdout
    assert "htdemucs (default, downloaded on first use)" in result.stdout
    assert "default: htdemucs (htdemucs is not in the model cache yet: downloaded on first use" in result.stdout


def test_models_info_shows_files_and_urls(cache):
    result = stemsplit("models", "info", "htdemucs_ft", "--json", env=cache)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert [f["file"] for f in info["files"]][0] == "f7e0c4bc-ba3fe64a.th"
    assert info["files"][0]["url"].startswith(registry.OFFICIAL_ROOT) and info["sdr"] == 9.0
    table = stemsplit("models", "info", "hdemucs_mmi", env=cache)
    assert table.returncode == 0 and "75fc33f5-1941ce65.th" in table.stdout


def test_models_path_prints_the_cache_folder_and_file_places(cache, tmp_path):
    assert stemsplit("models", "path", env=cache).stdout.strip() == str(tmp_path / "cache")
    lines = stemsplit("models", "path", "mdx_extra", env=cache).stdout.split()
    assert lines[0] == str(tmp_path / "cache" / "e51eebcc-c1b80bdd.th") and len(lines) == 4


@pytest.mark.parametrize("args, code, message", [
    (["models", "info", "nope"], 1, "unknown model 'nope'"),
    (["models", "download", "mdx_q"], 1, "diffq-quantized"),
    (["models", "info"], 2, "needs a model name"),
    (["models", "explode"], 2, "unknown action 'explode'"),
])
def test_models_errors_are_one_red_line_and_an_exit_code(cache, args, code, message):
    result = stemsplit(*args, env=cache)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_models_download_from_an_unreachable_server_is_exactly_one_line(cache, tmp_path):
    """On a pipe no progress bar is drawn, so none leaves a blank line in front of the error."""
    result = stemsplit("models", "download", "htdemucs", env={**cache, registry.REMOTE_ROOT_ENV: "http://127.0.0.1:9/"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot download 955717e8-8726e21a.th from http://127.0.0.1:9/")
    assert result.stderr.count("\n") == 1, result.stderr


def test_models_download_into_an_impossible_cache_folder_is_one_red_line(tmp_path):
    (tmp_path / "taken").write_text("a file where the cache folder should be")
    env = {registry.CACHE_ENV: str(tmp_path / "taken" / "cache"), registry.REMOTE_ROOT_ENV: "http://127.0.0.1:9/"}
    result = stemsplit("models", "download", "htdemucs", env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot create the model cache folder {tmp_path / 'taken' / 'cache'}")


class _Bytes(http.server.BaseHTTPRequestHandler):
    body = b"these are not the bytes you are looking for"

    def do_GET(self):  # noqa: N802 (http.server API)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_models_download_checks_the_hash_and_cleans_up(cache, tmp_path):
    """The real htdemucs entry, served wrong bytes by a local server: refused, nothing left behind."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Bytes)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        env = {**cache, registry.REMOTE_ROOT_ENV: f"http://127.0.0.1:{httpd.server_address[1]}/"}
        result = stemsplit("models", "download", "htdemucs", env=env)
    finally:
        httpd.shutdown()
        httpd.server_close()
    actual = hashlib.sha256(_Bytes.body).hexdigest()[:8]
    assert result.returncode == 1
    assert f"checksum mismatch (sha256 {actual}, expected 8726e21a)" in result.stderr
    assert list((tmp_path / "cache").iterdir()) == []
