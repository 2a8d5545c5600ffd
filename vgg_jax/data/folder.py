"""Folder sources: ROOT/{train,valid}/{class}/*, a bare ROOT/{class}/*, Kaggle's flat train/<label>.<id>.jpg, or an
unlabelled folder such as test1/."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vgg_jax.data.checks import IMAGE_EXTENSIONS, UNSUPPORTED_EXTENSIONS, check_image_file, unreadable_reason
from vgg_jax.data.source import UNLABELLED, Source, fingerprint, is_utf8, printable
from vgg_jax.errors import UserError
from vgg_jax.paths import natural_key

# Split name -> folder names tried in order (fast.ai dogscats uses train/, valid/ and test1/).
SPLIT_DIRS = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test1", "test")}


def open_folder(
    root: str | os.PathLike,
    split: str,
    valid_fraction: float | None = None,
    seed: int = 0,
    labels_from_filename: str | None = None,
    valid_fraction_default: float | None = None,
) -> Source:
    """List and check one split of an image folder; every user mistake is a one-line UserError naming the folder.

    Without a valid/ folder, train and valid are carved from train by `valid_fraction`, or else by
    `valid_fraction_default` (the trainer's 0.1; None: train is the whole folder, valid an error). A folder of
    images named <label>.<id>.jpg (Kaggle Dogs vs Cats) takes its labels from the names, or from the first group
    of the regular expression `labels_from_filename`.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"{root}: no such data folder")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected ROOT/train/<class>/*.jpg or a folder of images)")
    if valid_fraction is not None and not 0.0 < valid_fraction < 1.0:
        raise UserError(
            f"valid_fraction must be between 0 and 1 (exclusive). Received: valid_fraction={valid_fraction}"
        )
    found = {name: _first_dir(root, dirs) for name, dirs in SPLIT_DIRS.items()}
    if split == "test":
        if found["test"] is None and found["train"] is not None:
            raise UserError(f"{root}: no test1/ or test/ folder")
        return _open_split(found["test"] or root, allow_unlabelled=True)
    if split not in ("train", "valid"):
        raise UserError(f"split must be 'train', 'valid' or 'test'. Received: split={split!r}")
    if valid_fraction is not None and found["valid"] is not None:
        raise UserError(
            f"{root}: has a {found['valid'].name}/ folder, so valid_fraction={valid_fraction} is ambiguous; drop it to use that folder"
        )
    fraction = valid_fraction if valid_fraction is not None or found["valid"] else valid_fraction_default
    if found["train"] is None and (found["valid"] or found["test"]) and (split == "train" or fraction is not None):
        raise UserError(f"{root}: no train/ folder (found {(found['valid'] or found['test']).name}/)")
    train_dir = found["train"] or root  # ROOT/{class}/* and ROOT/<label>.<id>.jpg are a single labelled split
    if fraction is not None:
        source = _carve(_open_split(train_dir, False, labels_from_filename), split, fraction, seed)
        if valid_fraction is None and split == "valid":
            source.notes.append(
                f"no valid/ folder: holding out {fraction:.0%} of train (`valid_fraction={fraction}`, seed {seed})"
            )
        return source
    if split == "train":
        return _open_split(train_dir, False, labels_from_filename)
    if found["valid"] is None:
        raise UserError(
            f"{root}: no valid/ folder; pass a valid fraction (e.g. `valid_fraction=0.1`) to hold out part of {train_dir}"
        )
    source = _open_split(found["valid"], False, labels_from_filename)
    train_classes = _class_dirs(found["train"])[0] if found["train"] is not None else []
    if train_classes and train_classes != source.class_names:
        raise UserError(
            f"{found['valid']}: classes ({', '.join(source.class_names)}) differ from {found['train']} ({', '.join(train_classes)})"
        )
    return source


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


Passed = list[tuple[str, str]]  # (path, reason) of entries passed over while listing: they join Source.skipped


def _class_dirs(folder: Path) -> tuple[list[str], Passed]:
    """Sorted class subfolder names, and the entries passed over (a symlink loop, a link to nowhere)."""
    above = _ancestor_keys(folder)
    names, passed = [], []
    for entry in _scandir(folder, passed):
        if entry.name.startswith("."):
            continue
        kind, detail = _entry_kind(entry)
        if kind == "dir" and detail in above:
            passed.append((entry.path, "symlink loop"))
        elif kind == "dir":
            if not is_utf8(entry.name):
                raise UserError(
                    f"{printable(entry.path)}: class folder name is not valid UTF-8; rename it (class names are labels)"
                )
            names.append(entry.name)
        elif kind == "skip" and entry.is_symlink():  # loose files beside the class folders are not listed
            passed.append((entry.path, detail))
    return sorted(names), passed


def _open_split(folder: Path, allow_unlabelled: bool, label_pattern: str | None = None) -> Source:
    """Class subfolders -> labelled split; images directly inside (or in a single subfolder, Keras' test/unknown/) ->
    unlabelled, or labelled by their names when not `allow_unlabelled`."""
    classes, passed = _class_dirs(folder)
    direct, direct_passed = _list_images(folder, recursive=False)
    if allow_unlabelled and (direct or len(classes) == 1 or (direct_passed and not classes)):
        base = folder if direct or not classes else folder / classes[0]
        files, more = (direct, direct_passed) if base == folder else _list_images(base, recursive=True)
        passed = list(dict(passed + direct_passed + more).items())  # a loop beside the images is seen twice
        if not files:
            raise UserError(_no_images(base, "", passed))
        return _checked(str(folder), base, files, np.full(len(files), UNLABELLED, np.int32), [], passed)
    if direct and (label_pattern is not None or not classes):
        return _open_flat(folder, direct, passed + direct_passed, label_pattern)
    if label_pattern is not None:
        raise UserError(
            f"{folder}: no images directly inside for `labels_from_filename` to label; drop it to use the class folders"
        )
    if not classes:
        raise UserError(
            f"{folder}: no class subfolders and no images; expected {folder}/<class>/*.jpg with one subfolder per class"
        )
    if len(classes) == 1:
        raise UserError(f"{folder}: found only 1 class folder ({classes[0]}); need at least 2, one subfolder per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_files, more = _list_images(folder / name, recursive=True)
        if not class_files:
            raise UserError(_no_images(folder / name, " in this class folder", more))
        files += [f"{name}/{f}" for f in class_files]
        labels += [label] * len(class_files)
        passed += more
    return _checked(str(folder), folder, files, np.asarray(labels, np.int32), classes, passed)


def _open_flat(folder: Path, files: list[str], passed: Passed, pattern: str | None) -> Source:
    """Images directly in `folder` labelled by their names: <label>.<rest> (Kaggle's cat.123.jpg) or a regex group."""
    found = _flat_labels(folder, files, pattern)
    classes = sorted(set(found))
    if len(classes) < 2:
        how = f"`labels_from_filename={pattern!r}`" if pattern is not None else "file names"
        raise UserError(
            f"{printable(str(folder))}: {how} give{'s' if pattern else ''} one label ({printable(classes[0])});"
            " need at least 2 (e.g. cat.1.jpg and dog.1.jpg), or put the images in one subfolder per class"
        )
    index = {c: i for i, c in enumerate(classes)}
    source = _checked(str(folder), folder, files, np.asarray([index[c] for c in found], np.int32), classes, passed)
    counts = np.bincount(source.labels, minlength=len(classes))
    how = "" if pattern is None else f" (`labels_from_filename={pattern!r}`)"
    source.notes.append(f"labels from file names{how}: " + ", ".join(f"{c} {n:,}" for c, n in zip(classes, counts)))
    return source


def _flat_labels(folder: Path, files: list[str], pattern: str | None) -> list[str]:
    """The label of each file name, or a one-line UserError listing the names that give none."""
    rx = filename_pattern(pattern) if pattern is not None else None
    found = [_regex_label(rx, f) if rx is not None else _dot_label(f) for f in files]
    missing = [f for f, label in zip(files, found) if label is None]
    if missing and rx is None and len(missing) == len(files):
        raise UserError(
            f"{printable(str(folder))}: images but no class subfolders; expected {folder}/<class>/*.jpg with one"
            " subfolder per class, images named <label>.<id>.jpg (cat.1.jpg), or `labels_from_filename=REGEX`"
        )
    if missing:
        more = f", +{len(missing) - 3} more" if len(missing) > 3 else ""
        listed = ", ".join(printable(f) for f in missing[:3]) + more
        problem = (
            f"`labels_from_filename={pattern!r}` does not match {len(missing):,} of {len(files):,} images ({listed});"
            " fix the pattern or move those files out"
            if rx is not None
            else f"{len(missing):,} of {len(files):,} images are not named <label>.<id>.<ext> ({listed}); rename or"
            " move them, or pass `labels_from_filename=REGEX`"
        )
        raise UserError(f"{printable(str(folder))}: {problem}")
    bad = next((f for f, label in zip(files, found) if not is_utf8(label)), None)
    if bad is not None:
        raise UserError(f"{printable(os.path.join(folder, bad))}: label in the file name is not valid UTF-8; rename it")
    return found


def _dot_label(name: str) -> str | None:
    """'cat.123.jpg' -> 'cat'; None for a name without a <label>. prefix before its id ('123.jpg', '.jpg')."""
    label, dot, rest = name.rpartition(".")[0].partition(".")
    return label if label and dot and rest else None


def _regex_label(rx: re.Pattern, name: str) -> str | None:
    match = rx.search(name)
    return match.group(1) or None if match else None


def filename_pattern(pattern: str) -> re.Pattern:
    """`pattern` compiled, or a one-line UserError when it does not compile or has no group for the label."""
    try:
        rx = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise UserError(f"`labels_from_filename={pattern!r}`: not a regular expression ({e})") from None
    if rx.groups < 1:
        raise UserError(
            f"`labels_from_filename={pattern!r}`: has no group; put the label in parentheses, e.g. '^(cat|dog)\\.'"
        )
    return rx


def _no_images(folder: Path, where: str, passed: Passed) -> str:
    listed = "; ".join(f"{printable(os.path.relpath(p, folder))} ({why})" for p, why in passed[:3])
    return f"{printable(str(folder))}: no images ({', '.join(IMAGE_EXTENSIONS)}) found{where}" + (
        f"; passed over {len(passed)}: {listed}" if passed else ""
    )


def _list_images(folder: Path, recursive: bool) -> tuple[list[str], Passed]:
    """Image files under `folder` as paths relative to it, in natural order, and the entries passed over with why.

    Folder symlinks are followed, each real folder once, so the walk always ends: a link back to a
    folder above is a "symlink loop". Plain strings, not Paths: 25k Paths cost ~0.5 s.
    """
    top = _ancestor_keys(folder)
    out, passed, seen = [], [], set(top)
    stack = [("", top)]
    while stack:
        sub, above = stack.pop()
        for entry in _scandir(os.path.join(folder, sub), passed):
            if entry.name.startswith("."):
                continue
            rel = f"{sub}/{entry.name}" if sub else entry.name
            kind, detail = _entry_kind(entry)
            if kind == "dir" and recursive:
                if detail in above:
                    passed.append((entry.path, "symlink loop"))
                elif detail in seen:  # listing it again would count its files twice
                    passed.append((entry.path, "a second link to a folder listed already"))
                else:
                    seen.add(detail)
                    stack.append((rel, above | {detail}))
            elif kind == "image":  # also dangling links: the check names them "unreadable"
                out.append(rel)
            elif kind == "skip":
                passed.append((entry.path, detail))
    return sorted(out, key=natural_key), passed


def _scandir(folder: str | Path, passed: Passed) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as e:
        passed.append((str(folder), f"unreadable folder ({e.strerror or type(e).__name__})"))
        return []


def _entry_kind(entry: os.DirEntry) -> tuple[str, object]:
    """("dir", its (dev, inode)), ("image", None), ("skip", reason) or ("ignore", None) for one folder entry."""
    ext = os.path.splitext(entry.name)[1].lower()
    image = ext in IMAGE_EXTENSIONS or ext in UNSUPPORTED_EXTENSIONS  # a .tif is listed, then skipped with its reason
    try:
        if entry.is_dir():
            st = entry.stat()
            return "dir", (st.st_dev, st.st_ino)
    except OSError as e:  # a symlink loop: the stat behind is_dir fails with ELOOP
        return ("image", None) if image else ("skip", unreadable_reason(e))  # an image's check says "symlink loop"
    if image:
        return "image", None
    if entry.is_symlink():  # a link to nowhere may have been a class folder or an image: worth a line
        try:
            os.stat(entry.path)
        except OSError as e:
            return "skip", unreadable_reason(e)
    return "ignore", None  # Thumbs.db, .DS_Store, README.txt: the furniture of image folders, not data


def _ancestor_keys(folder: Path) -> frozenset:
    """(dev, inode) of `folder` and of every folder above it, both as written and as resolved through links."""
    keys = set()
    for path in {Path(os.path.abspath(folder)), Path(folder).resolve()}:
        for p in (path, *path.parents):
            with contextlib.suppress(OSError):
                st = os.stat(p)
                keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)


def _inspect(paths: list[str]) -> list[tuple[int, int, str | None]]:
    out = []
    for path in paths:
        reason = _name_problem(path) or _format_problem(path) or check_image_file(path)
        try:
            st = os.stat(path)
            out.append((st.st_size, st.st_mtime_ns, reason))
        except OSError as e:
            out.append((-1, -1, reason or unreadable_reason(e)))
    return out


def _name_problem(path: str) -> str | None:
    """A path a CSV cannot hold (and tf.data could not take): bytes that are not UTF-8 in the name."""
    if is_utf8(path):
        return None
    return "file name is not valid UTF-8" if not is_utf8(os.path.basename(path)) else "folder name is not valid UTF-8"


def _format_problem(path: str) -> str | None:
    kind = UNSUPPORTED_EXTENSIONS.get(os.path.splitext(path)[1].lower())
    return f"unsupported format: {kind}" if kind else None


def _checked(name: str, base: Path, rel: list[str], labels: np.ndarray, classes: list[str], passed: Passed) -> Source:
    """Structural checks on every file (threads, in chunks: the cost is file-system latency), then the Source of the good ones."""
    paths = [os.path.join(base, r) for r in rel]
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    with ThreadPoolExecutor(min(16, 4 * (os.cpu_count() or 1))) as pool:
        stats = [s for chunk in pool.map(_inspect, chunks) for s in chunk]
    good = [i for i, (_, _, reason) in enumerate(stats) if reason is None]
    if not good:
        raise UserError(
            f"{printable(name)}: none of its {len(paths):,} image files can be read"
            f" (first: {printable(rel[0])}: {stats[0][2]})"
        )
    ids, with_extension = _unique_ids(rel)
    listed = set(paths)  # a looping link named like an image is both listed and passed over by the class scan
    skipped = [(paths[i], stats[i][2]) for i in range(len(paths)) if stats[i][2] is not None]
    skipped += [(p, why) for p, why in passed if p not in listed]
    return Source(
        name=name,
        class_names=classes,
        num_examples=len(good),
        skipped=sorted(skipped, key=lambda s: natural_key(s[0])),
        fingerprint=fingerprint("folder", classes, [(r, s[0], s[1]) for r, s in zip(rel, stats)], labels.tolist()),
        paths=[paths[i] for i in good],
        labels=labels[good],
        folder=str(base),
        notes=[_extension_note(with_extension)] if with_extension else [],
        _ids=[ids[i] for i in good],
        _path_ids=dict(zip(paths, ids)),
    )


def _unique_ids(rel: list[str]) -> tuple[list[str], list[str]]:
    """Each file's id (its relative path without extension, or with it where two would clash) and those kept whole."""
    shown = rel if is_utf8("".join(rel)) else [printable(r) for r in rel]  # one encode in the common case
    ids = [r.rpartition(".")[0] for r in shown]  # every listed file has an image extension
    while len(set(ids)) < len(ids):
        counts = Counter(ids)
        clash = [i for i, n in enumerate(ids) if counts[n] > 1 and n != shown[i]]
        if not clash:  # only whole names clash: two non-UTF-8 names shown alike
            break
        for i in clash:
            ids[i] = shown[i]
    return ids, [s for i, s in zip(ids, shown) if i == s]


def _extension_note(names: list[str]) -> str:
    listed = ", ".join(names[:4]) + (f", +{len(names) - 4} more" if len(names) > 4 else "")
    return f"{len(names)} ids keep their extension (names that differ only by extension): {listed}"


def _carve(source: Source, split: str, fraction: float, seed: int) -> Source:
    """Hold out each file whose seeded hash of its id falls below `fraction` as the valid part; the rest is train.

    Per-file hashing (not a permutation of the list) keeps every file on its side when files are
    added, removed or repaired, so a growing data set never leaks valid images into train.
    """
    u = np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little") / 2.0**64
            for i in source.ids
        ]
    )
    keep = np.flatnonzero(u < fraction if split == "valid" else u >= fraction)
    if keep.size == 0:
        raise UserError(
            f"{source.name}: valid_fraction={fraction} leaves no {split} examples out of {source.num_examples}"
        )
    return Source(
        name=f"{source.name} ({split} part of valid_fraction={fraction}, seed {seed})",
        class_names=source.class_names,
        num_examples=int(keep.size),
        skipped=source.skipped,
        fingerprint=fingerprint(source.fingerprint, split, fraction, seed),
        paths=[source.paths[i] for i in keep],
        labels=source.labels[keep],
        folder=source.folder,
        notes=source.notes,
        _ids=[source.ids[i] for i in keep],
        _path_ids=source._path_ids,
    )
