"""`vgg-jax convert --download`, against a real HTTP server on 127.0.0.1 serving real files."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from convert import download
from vgg_jax import cli, params_io

NOTOP = download.OFFICIAL["vgg16-notop"]


class Server:
    """Serves `root` on a free port and counts the requests it answered."""

    def __init__(self, root: Path):
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                outer.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "mirror"
    (root / "vgg16").mkdir(parents=True)
    server = Server(root)
    monkeypatch.setenv("VGG_JAX_WEIGHTS_BASE_URL", server.url)
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    yield root, server
    server.close()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgg_jax", *args], capture_output=True, text=True, timeout=120)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line, which must end the output (a "downloading URL" line may precede it)."""
    lines = result.stderr.strip().splitlines()
    errors = [l for l in lines if l.startswith("vgg-jax: error: ")]
    assert result.returncode == 2 and errors == lines[-1:], result.stderr
    return lines[-1]


def test_md5_mismatch_removes_the_download(mirror, tmp_path):
    root, server = mirror
    (root / NOTOP.path).write_bytes(b"not the official file" * 1000)
    line = error_line(run_cli("convert", "--download", "vgg16-notop"))
    assert server.requests == 1 and "md5 mismatch" in line and NOTOP.filename in line, line
    assert not any((tmp_path / "cache").rglob("*.h5*")), "corrupt download kept"
    assert not any((tmp_path / "cache").rglob("*.safetensors")), "output written"


def test_stale_cached_file_is_removed_then_fetched_again(mirror, tmp_path):
    root, server = mirror
    stale = tmp_path / "cache" / "keras" / NOTOP.filename
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a download")
    (root / NOTOP.path).write_bytes(b"also wrong")
    assert "md5 mismatch" in error_line(run_cli("convert", "--download", "vgg16-notop"))
    assert server.requests == 1 and not stale.exists()


def test_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("VGG_JAX_WEIGHTS_BASE_URL", "http://127.0.0.1:9/")  # discard port: connection refused
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    line = error_line(run_cli("convert", "--download", "vgg16"))
    assert "download failed" in line and "offline?" in line and "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in line


def test_download_checks_caches_and_converts(mirror, vgg16, tmp_path, monkeypatch, capsys):
    """A file served with the md5 the registry expects is fetched once, cached, and converted."""
    root, server = mirror
    vgg16.notop.save(str(root / NOTOP.path))
    served_md5 = hashlib.md5((root / NOTOP.path).read_bytes()).hexdigest()
    monkeypatch.setitem(download.OFFICIAL, "vgg16-notop", download.Release(NOTOP.path, served_md5))
    assert cli.main(["convert", "--download", "vgg16-notop"]) == 0
    assert cli.main(["convert", "--download", "vgg16-notop"]) == 0
    assert server.requests == 1, "the cached file must be reused"
    out = tmp_path / "cache" / "vgg16-notop.safetensors"
    assert params_io.read_metadata(out)["architecture"] == "vgg16" and "wrote" in capsys.readouterr().out


def test_keras_cache_is_reused(mirror, vgg16, tmp_path, monkeypatch):
    """A user coming from Keras already has the file in ~/.keras/models: no download."""
    root, server = mirror
    keras_copy = tmp_path / "keras_home" / "models" / NOTOP.filename
    keras_copy.parent.mkdir(parents=True)
    vgg16.notop.save(str(keras_copy))
    release = download.Release(NOTOP.path, download.md5(keras_copy))
    assert download.fetch("vgg16-notop", release=release) == keras_copy and server.requests == 0
