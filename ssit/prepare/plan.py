"""What ``ssit shards`` will do, fixed before any image is decoded: labels, listing, plan.

The input folder is listed without trusting it: broken symbolic links, link loops, folders that
cannot be listed and files that are not regular files (FIFOs, sockets, devices) are left out
with a reason instead of stopping the stage or blocking it. File names are kept as the
operating system gives them for opening, and shown with :func:`printable_name` everywhere they
are written (``skipped.csv``, sample keys, sample metadata), so that names which are not valid
UTF-8 are written as ``\\xe9``-style escapes.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ssit.prepare.crop import CROP_SIZE
from ssit.prepare.shard_format import MANIFEST_FORMAT, PrepareError, recipe_name

__all__ = [
    "GRADES",
    "IMAGE_SUFFIXES",
    "GradeTable",
    "Labels",
    "Plan",
    "PlannedImage",
    "make_plan",
    "printable_name",
    "read_labels",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
GRADES = range(5)
GRADE_TEXTS = frozenset(str(grade) for grade in GRADES)

_FILE_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "folder",
}


@dataclass(frozen=True)
class Labels:
    """Grades read from an EyePACS-style CSV (``image,level``)."""

    path: Path
    grades: dict[str, int]
    problems: dict[str, str]
    """Image id -> why its row could not be used (bad grade, conflicting rows)."""
    lines: dict[str, int]
    """Image id -> line number of its (first) row."""


class PlannedImage(NamedTuple):
    """One input file as the plan fixed it."""

    path: str
    """The name to open, exactly as listed (may hold undecodable bytes as surrogates)."""
    source: str
    """Path relative to the input folder, printable (see :func:`printable_name`)."""
    key: str
    grade: int | None
    dataset: str
    file_bytes: int
    mtime_ns: int
    fast: bool
    """The reduced-scale recipe instead of the SSiT authors' (``ssit shards --fast``)."""


@dataclass
class Plan:
    """Shards to write (lists of images), and what was left out before any decoding."""

    dataset: str
    shards: list[list[PlannedImage]]
    skipped: list[tuple[str, str]]
    label_notes: list[tuple[str, str]]
    fingerprints: list[str]

    def name(self, index: int) -> str:
        """The file name stem of shard ``index``."""
        return f"{self.dataset}-{index:06d}"


def printable_name(name: str) -> str:
    """``name`` with bytes that are not UTF-8 written as ``\\xNN`` escapes (valid UTF-8)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------- labels


class GradeTable:
    """Grades by image id, with the rule for an image listed twice: the same grade again is a
    repeat (the image counts once), another grade a conflict (the image cannot be used)."""

    def __init__(self) -> None:
        self.grades: dict[str, int] = {}
        self.repeated: list[str] = []
        """Images listed again with the grade they already had, once per repeat."""
        self.conflicts: dict[str, str] = {}
        """Image id -> one line naming it and its first two different grades."""

    def add(self, image: str, grade: int) -> bool:
        """Record one row; True when it is the first row of ``image``."""
        if image not in self.grades:
            self.grades[image] = grade
            return True
        first = self.grades[image]
        if first == grade:
            self.repeated.append(image)
        else:
            self.conflicts.setdefault(image,
                                      f"conflicting grades for {image} ({first} and {grade})")
        return False


def read_labels(path: str | Path) -> Labels:
    """Parse an EyePACS-style labels CSV (header ``image,level``, grades 0-4).

    Raises :class:`PrepareError` if the file cannot be read or the header is wrong; bad rows
    are kept as per-image problems so that only those images are skipped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PrepareError(f"labels file not found: {path}") from None
    except IsADirectoryError:
        raise PrepareError(f"labels path is a directory, not a CSV file: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PrepareError(f"cannot read labels file {path}: {error}") from error
    rows = csv.reader(text.splitlines())
    header = [cell.strip().lower() for cell in next(rows, [])]
    if header != ["image", "level"]:
        raise PrepareError(
            f"labels file {path} must start with the header 'image,level', got {','.join(header)!r}"
        )
    table = GradeTable()
    grades = table.grades
    problems: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        image = row[0].strip()
        if not image:
            continue
        lines.setdefault(image, line)
        if len(row) != 2:
            problems[image] = f"labels line {line} has {len(row)} columns, expected 2"
            continue
        value = row[1].strip()
        grade = int(value) if value in GRADE_TEXTS else -1
        if grade not in GRADES:
            problems[image] = f"labels line {line}: grade {value!r} is not an integer 0-4"
        elif not table.add(image, grade) and image in table.conflicts:
            problems[image] = table.conflicts[image]
    for image in problems:
        grades.pop(image, None)
    return Labels(path, grades, problems, lines)


# ---------------------------------------------------------------- listing


class _Listing(NamedTuple):
    files: list[tuple[str, os.stat_result]]
    """(relative path, stat of the file it names) of every regular image file."""
    skipped: list[tuple[str, str]]


def _stat_problem(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    if error.errno == errno.ENOENT:
        return "broken symbolic link"
    return f"cannot read file information: {error.strerror or error}"


def _list_images(input_dir: Path, exclude: Path) -> _Listing:
    """Regular image files under ``input_dir``, recursively, following links to folders.

    Hidden entries and the folder ``exclude`` are left out; every folder is listed once (a link
    back to a folder already listed, i.e. a loop, is reported, not followed).
    """
    try:
        excluded = os.stat(exclude)
        exclude_id = (excluded.st_dev, excluded.st_ino)
    except OSError:
        exclude_id = None
    files: list[tuple[str, os.stat_result]] = []
    skipped: list[tuple[str, str]] = []
    listed: set[tuple[int, int]] = set()
    pending = deque([""])  # breadth first, in name order: the first link to a folder wins
    while pending:
        relative = pending.popleft()
        shown = printable_name(relative) or "."
        folder = os.path.join(input_dir, relative)
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in listed:
                skipped.append((shown, "folder already listed (a symbolic link loop or a "
                                       "second link to the same folder)"))
                continue
            listed.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as error:
            skipped.append((shown, f"cannot list folder: {error.strerror or error}"))
            continue
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(relative, name)
            try:
                info = os.stat(os.path.join(input_dir, path))
            except OSError as error:
                suffix = Path(name).suffix.lower()
                if suffix in IMAGE_SUFFIXES or not suffix:  # an image, or maybe a folder
                    skipped.append((printable_name(path), _stat_problem(error)))
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) != exclude_id:
                    pending.append(path + os.sep)
            elif Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            elif stat.S_ISREG(info.st_mode):
                files.append((path, info))
            else:
                kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "special file")
                skipped.append((printable_name(path), f"not a regular file ({kind})"))
    files.sort(key=lambda item: printable_name(item[0]))
    return _Listing(files, skipped)


# ---------------------------------------------------------------- planning


def make_plan(
    input_dir: Path,
    out_dir: Path,
    labels: Labels | None,
    dataset: str,
    shard_size: int,
    seed: int,
    fast: bool = False,
) -> Plan:
    """List ``input_dir``, match labels and fix the shards (seeded shuffle, ``shard_size`` each).

    Raises :class:`PrepareError` when no usable image is found.
    """
    listing = _list_images(input_dir, out_dir)
    if not listing.files:
        hint = ""
        if listing.skipped:
            first, reason = listing.skipped[0]
            hint = f"; {len(listing.skipped)} left out, first {first}: {reason}"
        raise PrepareError(
            f"no images found in {input_dir} (looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}){hint}"
        )
    tasks: list[PlannedImage] = []
    skipped = list(listing.skipped)
    owner: dict[str, str] = {}
    used_ids: set[str] = set()
    for relative, info in listing.files:
        source = printable_name(relative.replace(os.sep, "/"))
        name = source.rpartition("/")[2]
        image_id = Path(name).stem
        # Dots would split the key from its extensions; whitespace would break the DALI index;
        # backslashes come from escaped bytes.
        key = re.sub(r"[.\s\\]", "_", image_id)
        if key in owner:
            skipped.append((source, f"duplicate image id {key!r} (already used by {owner[key]})"))
            continue
        owner[key] = source
        grade = None
        if labels is not None:
            label_id = next((i for i in (image_id, name) if i in labels.lines), None)
            if label_id is None:
                skipped.append((source, f"no label row in {labels.path.name}"))
                continue
            used_ids.add(label_id)
            if label_id in labels.problems:
                skipped.append((source, labels.problems[label_id]))
                continue
            grade = labels.grades[label_id]
        tasks.append(PlannedImage(os.path.join(input_dir, relative), source, key, grade, dataset,
                                  info.st_size, info.st_mtime_ns, fast))
    if not tasks:
        reason = skipped[0][1] if skipped else "no usable image"
        raise PrepareError(
            f"none of the {len(listing.files)} images in {input_dir} can be used "
            f"(first: {reason})"
        )
    label_notes = []
    if labels is not None:
        for image_id, line in sorted(labels.lines.items(), key=lambda item: item[1]):
            if image_id not in used_ids:
                label_notes.append(
                    (f"{labels.path.name}:{line}", f"label row for {image_id!r} has no image")
                )
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(tasks))]
    shuffled = [tasks[i] for i in order]
    shards = [shuffled[i : i + shard_size] for i in range(0, len(shuffled), shard_size)]
    fingerprints = [_fingerprint(shard) for shard in shards]
    return Plan(dataset, shards, skipped, label_notes, fingerprints)


def _fingerprint(tasks: Sequence[PlannedImage]) -> str:
    """Identity of a planned shard: its inputs (with size and mtime) and the processing format."""
    entries = [[t.source, t.key, t.grade, t.dataset, t.file_bytes, t.mtime_ns] for t in tasks]
    recipe = recipe_name(bool(tasks) and tasks[0].fast)
    payload = json.dumps({"format": MANIFEST_FORMAT, "crop": CROP_SIZE, "recipe": recipe,
                          "samples": entries})
    return hashlib.sha256(payload.encode()).hexdigest()
