"""Files vgg-jax writes: atomic (temp file beside the target, then rename), with the umask's mode, under
a recognisable temp name that a later run can clean up when its writer died. Pure Python."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from vgg_jax.errors import UserError

TEMP_PREFIX = ".vgg-jax-tmp-"  # + "<pid>-<random>-<target name>"


def umask_mode(base: int = 0o666) -> int:
    """`base` with the process umask applied, as open() would give a new file (0644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def temp_name(target: str | os.PathLike) -> Path:
    """A temp path beside `target` that names our process, so a stale one can be told from a live one."""
    target = Path(target)
    return target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{target.name}")


def clean_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Removes temp files and folders of our naming in `directory` whose writing process is gone."""
    import shutil

    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        pid = entry.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_path(path: str | os.PathLike) -> AbstractContextManager[Path]:
    """Yields a temp path beside `path`; on success fsyncs it, gives it the umask's mode and renames it over
    `path`. On failure the temp file is removed and `path` is untouched. OS errors become one-line UserErrors."""
    return _atomic(path, folder=False)


def atomic_folder(path: str | os.PathLike) -> AbstractContextManager[Path]:
    """atomic_path for a folder another library fills (a SavedModel): a temp folder beside `path`, renamed to it
    on success, removed on failure."""
    return _atomic(path, folder=True)


@contextmanager
def _atomic(path: str | os.PathLike, folder: bool) -> Iterator[Path]:
    import shutil

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path.parent}: cannot create this folder ({os_reason(e)})") from None
    clean_stale_temps(path.parent)
    tmp = temp_name(path)
    try:
        try:
            yield tmp
            if not folder:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, umask_mode())
            os.replace(tmp, path)
        except OSError as e:
            raise UserError(f"{path}: cannot write ({os_reason(e)})") from None
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True) if folder and tmp.is_dir() else os.unlink(tmp)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fails early, in one line, when `path` (a file to be written) cannot be created or replaced."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name for the {what}")
    parent = path.parent
    probe_dir = parent
    while not probe_dir.exists():  # the folder will be created: check the nearest existing ancestor
        if probe_dir == probe_dir.parent:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UserError(f"{path}: cannot write the {what} here ({probe_dir} is not a folder)")
    probe = temp_name(probe_dir / "probe")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"{path}: cannot write the {what} here ({os_reason(e)})") from None
    finally:
        if os.path.lexists(probe):
            os.unlink(probe)
    return path


def os_reason(e: OSError) -> str:
    """'No space left on device' etc., without Python's errno/filename decoration."""
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    return (e.strerror or str(e)).rstrip(".").lower() if e.strerror else str(e)
