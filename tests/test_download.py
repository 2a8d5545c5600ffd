"""`vgg-jax convert --download`, against a real HTTP server on 127.0.0.1 serving real files."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from vgg_jax.convert import download
from vgg_jax import cli
from vgg_jax.models import params_io
from vgg_jax.fileio import TEMP_PREFIX

pytestmark = pytest.mark.slow  # `vgg-jax convert --download` in a child process; Keras' full-size VGG16 no-top files

NOTOP = download.OFFICIAL["vgg16-notop"]


class Server:
    """Serves `root` on a free port and counts the requests it answered. With `cut_at`, it announces the whole
    file's Content-Length but sends only `cut_at` bytes, then closes (or, with `reset`, aborts) the connection."""

    def __init__(self, root: Path):
        self.requests = 0
        self.cut_at: int | None = None
        self.reset = False
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                outer.requests += 1
                if outer.cut_at is None:
                    return super().do_GET()
                body = (root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: outer.cut_at])
                self.wfile.flush()
                if outer.reset:  # RST instead of FIN: the client sees "connection reset by peer"
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

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


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "VGG_JAX_FAULT"} | env
    return subprocess.run(
        [sys.executable, "-m", "vgg_jax", *args], capture_output=True, text=True, timeout=120, env=full_env, check=False
    )


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
    _, server = mirror
    keras_copy = tmp_path / "keras_home" / "models" / NOTOP.filename
    keras_copy.parent.mkdir(parents=True)
    vgg16.notop.save(str(keras_copy))
    release = download.Release(NOTOP.path, download.md5(keras_copy))
    assert download.fetch("vgg16-notop", release=release) == keras_copy and server.requests == 0


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_truncated_download_says_so_before_any_md5(mirror, tmp_path, reset):
    """The server promises 3 MiB and stops after 1 MiB + 5 bytes: "truncated (got N of M bytes)", no md5 talk."""
    root, server = mirror
    payload = np.random.default_rng(6).bytes(3 << 20)
    (root / NOTOP.path).write_bytes(payload)
    server.cut_at, server.reset = (1 << 20) + 5, reset
    line = error_line(run_cli("convert", "--download", "vgg16-notop"))
    assert "download truncated (got " in line and f" of {len(payload):,} bytes" in line and "md5" not in line, line
    if not reset:  # a clean close delivers every byte sent; a reset may drop some in flight
        assert f"(got {(1 << 20) + 5:,} of {len(payload):,} bytes)" in line, line
    assert not any((tmp_path / "cache").rglob("*.h5*")) and not temps(tmp_path / "cache" / "keras")


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)] if folder.exists() else []


def test_killed_download_leaves_nothing_after_the_next_run(mirror, tmp_path):
    """A download killed mid-transfer leaves only a temp name of ours; the next fetch removes it and completes."""
    root, _ = mirror
    payload = np.random.default_rng(7).bytes(3 << 20)
    (root / NOTOP.path).write_bytes(payload)
    killed = run_cli("convert", "--download", "vgg16-notop", VGG_JAX_FAULT="download-write")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    keras_cache = tmp_path / "cache" / "keras"
    left = temps(keras_cache)
    assert len(left) == 1 and left[0].stat().st_size == 1 << 20, left  # one block written, then the kill
    release = download.Release(NOTOP.path, hashlib.md5(payload).hexdigest())
    assert download.fetch("vgg16-notop", release=release).read_bytes() == payload
    assert sorted(p.name for p in keras_cache.iterdir()) == [NOTOP.filename]
