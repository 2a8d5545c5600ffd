"""Fetch the official Keras ImageNet VGG weight files, check their md5, and cache them.

The files and md5s are those of keras.applications (keras.applications.vgg16/vgg19's WEIGHTS_PATH and file_hash). Mirrors can be
used with $VGG_JAX_WEIGHTS_BASE_URL. A file already in Keras' own cache (~/.keras/models) is reused.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vgg_jax.errors import UserError
from vgg_jax.faults import maybe_kill
from vgg_jax.fileio import atomic_path, clean_stale_temps
from vgg_jax.paths import cache_dir, file_digest

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Release:
    path: str  # relative to the base URL
    md5: str

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


OFFICIAL = {
    "vgg16": Release("vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    "vgg16-notop": Release(
        "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"
    ),
    "vgg19": Release("vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
    "vgg19-notop": Release(
        "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"
    ),
}


def md5(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def digests(path: str | os.PathLike, with_md5: bool = True) -> tuple[str, str | None]:
    """(sha256, md5) of a file in one read: the sha256 names the source, the md5 recognises an official file.
    md5 is None without `with_md5` (it costs twice the sha256's time)."""
    sha, md = hashlib.sha256(), hashlib.md5() if with_md5 else None
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            sha.update(block)
            if md:
                md.update(block)
    return sha.hexdigest(), md.hexdigest() if md else None


def official_release(md5_hex: str | None) -> Release | None:
    """The official Keras release file with this md5 (keras.applications records md5s, not sha256s), else None."""
    return next((r for r in OFFICIAL.values() if md5_hex and r.md5 == md5_hex), None)


def folder() -> Path:
    """Where downloads are cached (and their temp files live while they arrive)."""
    return cache_dir() / "keras"


def cached(name: str, release: Release | None = None) -> Path | None:
    """A verified local copy (ours or Keras'), or None. A cached copy with the wrong md5 is removed."""
    release = release or OFFICIAL[name]
    ours = folder() / release.filename
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    for path in (ours, keras_home / "models" / release.filename):
        if path.is_file():
            if md5(path) == release.md5:
                return path
            if path == ours:
                path.unlink()
    return None


def fetch(name: str, base_url: str | None = None, timeout: float = 30, release: Release | None = None) -> Path:
    """The official file for `name` ("vgg16", "vgg16-notop", "vgg19", "vgg19-notop"), downloaded once.

    Raises UserError when offline, on an HTTP error, on a truncated transfer or when the md5 does not match
    (nothing is kept). The file arrives under a temp name of ours; a killed download's is removed next time.
    """
    if release is None:
        if name not in OFFICIAL:
            raise UserError(f"unknown download {name!r}; choose one of {', '.join(OFFICIAL)}")
        release = OFFICIAL[name]
    clean_stale_temps(folder())
    if found := cached(name, release):
        return found
    base = base_url or os.environ.get("VGG_JAX_WEIGHTS_BASE_URL") or BASE_URL
    url = base.rstrip("/") + "/" + release.path
    target = folder() / release.filename
    print(f"downloading {url}", file=sys.stderr)
    with atomic_path(target) as tmp:
        digest = _download(url, tmp, target, timeout)
        if digest != release.md5:
            raise UserError(
                f"{url}: md5 mismatch (got {digest}, expected {release.md5}); corrupt or not the official file, removed"
            )
    return target


def _download(url: str, tmp: Path, target: Path, timeout: float) -> str:
    """Streams `url` into `tmp` and returns its md5. Network failures are one-line UserErrors here; a failed
    write (full disk) is an OSError that atomic_path turns into one."""
    digest, done = hashlib.md5(), 0
    live = sys.stderr.isatty()
    with open(tmp, "wb") as out:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise UserError(f"{url}: download failed (HTTP {e.code} {e.reason})") from None
        except (OSError, http.client.HTTPException) as e:
            raise UserError(
                f"{url}: download failed ({_reason(e)}); offline? Fetch it on a connected machine and put it at "
                f"{target}, or pass the file itself to `vgg-jax convert FILE`"
            ) from None
        with response:
            total, shown = int(response.headers.get("Content-Length") or 0), -1
            while block := _read(response, url, done, total):
                out.write(block)
                digest.update(block)
                done += len(block)
                maybe_kill("download-write")
                if live and total and (pct := done * 100 // total) // 5 != shown:
                    shown = pct // 5
                    print(f"\r  {pct}% of {total / 1e6:.0f} MB", end="", file=sys.stderr)
    if live and total:
        print(file=sys.stderr)
    if total and done != total:
        raise UserError(f"{url}: download truncated ({_got(done, total)}); nothing kept, try again")
    return digest.hexdigest()


def _read(response, url: str, done: int, total: int) -> bytes:
    """The next block of the body; a dropped connection is a one-line 'truncated' error."""
    try:
        return response.read(1 << 20)
    except (OSError, http.client.HTTPException) as e:
        raise UserError(
            f"{url}: download truncated ({_got(done, total)}; {_reason(e)}); nothing kept, try again"
        ) from None


def _got(done: int, total: int) -> str:
    return f"got {done:,} of {total:,} bytes" if total else f"got {done:,} bytes"


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return str(reason) or type(reason).__name__


def imagenet_params(name: str = "vgg16") -> Path:
    """The official Keras ImageNet weights `name` as a vgg-jax params file: the converted file in the cache, else
    the Keras file fetched once (md5-checked) and converted. Offline with no cached file: a one-line UserError
    naming the URL and where to put the file."""
    from vgg_jax.convert import convert_file
    from vgg_jax.paths import imagenet_params_path

    out = imagenet_params_path(name)
    if out.is_file():
        return out
    print(convert_file(fetch(name), out), file=sys.stderr)
    return out
