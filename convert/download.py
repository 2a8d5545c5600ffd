"""Fetch the official Keras ImageNet VGG weight files, check their md5, and cache them.

The files and md5s are those of keras.applications (REFERENCE.md section 1b). Mirrors can be
used with $VGG_JAX_WEIGHTS_BASE_URL. A file already in Keras' own cache (~/.keras/models) is reused.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vgg_jax.errors import UserError
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


def cached(name: str, release: Release | None = None) -> Path | None:
    """A verified local copy (ours or Keras'), or None. A cached copy with the wrong md5 is removed."""
    release = release or OFFICIAL[name]
    ours = cache_dir() / "keras" / release.filename
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    for path in (ours, keras_home / "models" / release.filename):
        if path.is_file():
            if md5(path) == release.md5:
                return path
            if path == ours:
                path.unlink()
    return None


def fetch(
    name: str, base_url: str | None = None, timeout: float = 30, release: Release | None = None, quiet: bool = False
) -> Path:
    """The official file for `name` ("vgg16", "vgg16-notop", "vgg19", "vgg19-notop"), downloaded once.

    Raises UserError when offline, on an HTTP error, or when the md5 does not match (nothing is kept).
    """
    if release is None:
        if name not in OFFICIAL:
            raise UserError(f"unknown download {name!r}; choose one of {', '.join(OFFICIAL)}")
        release = OFFICIAL[name]
    if found := cached(name, release):
        return found
    base = base_url or os.environ.get("VGG_JAX_WEIGHTS_BASE_URL") or BASE_URL
    url = base.rstrip("/") + "/" + release.path
    target = cache_dir() / "keras" / release.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    if not quiet:
        print(f"downloading {url}", file=sys.stderr)
    live = not quiet and sys.stderr.isatty()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, -1
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                done += len(block)
                if live and total and (pct := done * 100 // total) // 5 != shown:
                    shown = pct // 5
                    print(f"\r  {pct}% of {total / 1e6:.0f} MB", end="", file=sys.stderr)
        if live and total:
            print(file=sys.stderr)
    except urllib.error.HTTPError as e:
        partial.unlink(missing_ok=True)
        raise UserError(f"{url}: download failed (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        partial.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise UserError(
            f"{url}: download failed ({reason}); offline? Fetch it on a connected machine and put it at {target}, "
            "or pass the file itself to `vgg-jax convert FILE`"
        ) from None
    if digest.hexdigest() != release.md5:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"{url}: md5 mismatch (got {digest.hexdigest()}, expected {release.md5}); corrupt or not the official file, removed"
        )
    os.replace(partial, target)
    return target
