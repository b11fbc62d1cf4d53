"""The DALI index files of a shard set: parsing, sample counts and cheap sample validation.

`fn.readers.webdataset` reads samples through one index file per tar (written by `wds2idx`,
format ``v1.2 <n>`` then one line per sample of ``ext offset size name`` groups). Reading them up
front gives the exact sample count of every shard, so the epoch length is known before the
pipeline runs, and lets us drop samples the reader or decoder would fail on: samples without
an image or (when the views need maps) a saliency map, and components whose bytes are not a
complete JPEG or PNG.
Dropped samples are left out of a rewritten copy of the index (in a private temporary folder);
the tar files are never touched.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

from ssit.data.tar_members import member_at
from ssit.prepare.shard_format import PrepareError, list_shards, split_member_name

log = logging.getLogger(__name__)

IMAGE_EXT = "jpg"
SALIENCY_EXT = "sal.png"

_JPEG_START = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


class ShardError(ValueError):
    """The shards cannot feed the pre-training pipeline."""


class NoShardsError(ShardError):
    """No tar shard matched the given directory, glob or list."""


class MissingIndexError(ShardError):
    """A shard has no DALI index file next to it, or the index cannot be parsed."""


class IndexMismatchError(ShardError):
    """An index entry does not point at the tar member it names (or at another sample's)."""


class MissingSaliencyError(ShardError):
    """The shards hold no `sal.png` (or no `jpg`) component at all."""


class UndecodableShardError(ShardError):
    """Samples cannot be decoded and there is no decodable sample to stand in for them."""


class TooFewSamplesError(ShardError):
    """Too few valid samples for one full batch on every rank."""


@dataclass(frozen=True)
class IndexedSample:
    """One sample line of an index: its components as {ext: (offset, size)} and its key."""

    key: str
    components: dict[str, tuple[int, int]]
    line: str
    names: dict[str, str] = field(default_factory=dict)
    """The tar member name of each component (index format v1.2; empty for v1.1)."""


@dataclass
class Shard:
    """One tar shard with the samples of its index that the pipeline will read."""

    tar_path: Path
    index_version: str
    samples: list[IndexedSample]
    rewritten: bool = False


class ShardSet:
    """The usable samples of a set of shards and the index files to hand to DALI.

    Indices stay the shards' own files unless samples had to be left out or replaced; those
    shards get a rewritten index in a private temporary folder, removed with the object.
    `components` are the extensions the pipeline reads from every sample.
    """

    def __init__(
        self, shards: list[Shard], components: tuple[str, ...] = (IMAGE_EXT, SALIENCY_EXT)
    ) -> None:
        self.shards = [shard for shard in shards if shard.samples]
        self.components = components
        self._tmpdir: Path | None = None
        self._finalizer: weakref.finalize | None = None
        for number, shard in enumerate(self.shards):
            if shard.rewritten:
                self._write_index(number)

    @property
    def tar_paths(self) -> list[Path]:
        """The tar files, in reading order."""
        return [shard.tar_path for shard in self.shards]

    @property
    def index_paths(self) -> list[Path]:
        """One DALI index per tar (a cleaned copy where samples were left out)."""
        return [self._index_path(number) for number in range(len(self.shards))]

    @property
    def num_samples(self) -> int:
        """Samples the reader will see, over all shards."""
        return sum(len(shard.samples) for shard in self.shards)

    def replace_undecodable(self, num_workers: int = 4) -> list[str]:
        """Decode every component read; point each undecodable sample at a neighbour's data.

        The sample count stays the same, so epoch lengths and saved reader positions remain
        valid. Returns the names of the samples replaced (empty if all decode).
        """
        replaced = []
        for number, shard in enumerate(self.shards):
            with _mapped(shard.tar_path) as data, ThreadPoolExecutor(num_workers) as pool:
                check = partial(_decodes, data=data, components=self.components)
                decodes = list(pool.map(check, shard.samples))
            bad = [i for i, ok in enumerate(decodes) if not ok]
            if not bad:
                continue
            good = [i for i in range(len(shard.samples)) if i not in set(bad)]
            if not good:
                raise UndecodableShardError(f"no sample of {shard.tar_path.name} can be decoded")
            for i in bad:
                nearest = min(good, key=lambda g, i=i: abs(g - i))
                replaced.append(f"{shard.tar_path.name}:{shard.samples[i].key}")
                shard.samples[i] = shard.samples[nearest]
            shard.rewritten = True
            self._write_index(number)
        return replaced

    def cleanup(self) -> None:
        """Remove the rewritten index files, if any were written."""
        if self._finalizer is not None:
            self._finalizer()

    def _index_path(self, number: int) -> Path:
        shard = self.shards[number]
        if shard.rewritten and self._tmpdir is not None:
            return self._tmpdir / f"{number:06d}-{shard.tar_path.stem}.idx"
        return index_path_for(shard.tar_path)

    def _write_index(self, number: int) -> None:
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="ssit-dali-index-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        shard = self.shards[number]
        lines = [f"{shard.index_version} {len(shard.samples)}", *(s.line for s in shard.samples)]
        self._index_path(number).write_text("\n".join(lines) + "\n")


def resolve_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Tar paths from a directory, a glob or a list (`ssit.prepare.shard_format.list_shards`)."""
    try:
        return list_shards(spec)
    except PrepareError as exc:
        raise NoShardsError(str(exc)) from None


def index_path_for(tar_path: Path) -> Path:
    """The DALI index file that belongs to a tar shard: same name, `.idx` suffix."""
    return tar_path.with_suffix(".idx")


def parse_index(index_path: Path) -> list[IndexedSample]:
    """The samples listed in one DALI webdataset index file (format v1.1 or v1.2)."""
    try:
        lines = index_path.read_text().splitlines()
    except OSError as exc:
        raise MissingIndexError(f"cannot read index {index_path}: {exc.strerror}") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] not in ("v1.1", "v1.2") or not header[1].isdigit():
        raise MissingIndexError(f"{index_path} is not a DALI webdataset index (bad header)")
    group = 4 if header[0] == "v1.2" else 3
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens or len(tokens) % group:
            raise MissingIndexError(f"{index_path}:{number}: malformed index line")
        components: dict[str, tuple[int, int]] = {}
        names: dict[str, str] = {}
        key = f"{index_path.stem}#{number - 2}"
        for i in range(0, len(tokens), group):
            ext, offset, size = tokens[i], tokens[i + 1], tokens[i + 2]
            if not (offset.isdigit() and size.isdigit()):
                raise MissingIndexError(f"{index_path}:{number}: malformed index line")
            components[ext] = (int(offset), int(size))
            if group == 4:
                names[ext] = tokens[i + 3]
                key = split_member_name(tokens[i + 3])[0]
        samples.append(IndexedSample(key=key, components=components, line=line, names=names))
    if len(samples) != int(header[1]):
        raise MissingIndexError(
            f"{index_path} lists {len(samples)} samples but its header says {header[1]}"
        )
    return samples


def sample_defect(
    sample: IndexedSample,
    data: bytes | mmap.mmap,
    components: tuple[str, ...] = (IMAGE_EXT, SALIENCY_EXT),
) -> str | None:
    """Why a sample cannot be used (missing component, incomplete JPEG/PNG), or None."""
    missing = _missing(sample, components)
    if missing is not None:
        return missing
    checks = ((IMAGE_EXT, _JPEG_START, _JPEG_END), (SALIENCY_EXT, _PNG_START, _PNG_END))
    for ext, start, end in (check for check in checks if check[0] in components):
        offset, size = sample.components[ext]
        if size < len(start) + len(end) or offset + size > len(data):
            return f"{ext} truncated"
        if data[offset : offset + len(start)] != start:
            return f"{ext} is not a {'JPEG' if ext == IMAGE_EXT else 'PNG'}"
        if data[offset + size - len(end) : offset + size] != end:
            return f"{ext} truncated"
    return None


def load_shard_set(
    spec: str | Path | Sequence[str | Path], validate: bool = True, with_maps: bool = True
) -> ShardSet:
    """Resolve shards, read their indices and leave out unusable samples (with a warning).

    The pipeline reads each sample's image and, `with_maps`, its saliency map; other components
    are ignored. With `validate`, those bytes are checked for a complete JPEG/PNG (a few bytes
    per component, read through mmap). Raises a `ShardError` subclass when no shard is found,
    an index is missing or broken, or no sample has the components read.
    """
    components = (IMAGE_EXT, SALIENCY_EXT) if with_maps else (IMAGE_EXT,)
    tar_paths = resolve_shards(spec)
    per_shard: list[list[IndexedSample]] = []
    for tar_path in tar_paths:
        index_path = index_path_for(tar_path)
        if not index_path.is_file():
            raise MissingIndexError(
                f"{tar_path.name} has no index file {index_path.name} (rewrite the shards with "
                "`ssit shards` or run `wds2idx` on it)"
            )
        per_shard.append(parse_index(index_path))

    all_exts = {ext for samples in per_shard for s in samples for ext in s.components}
    for ext in components:
        if per_shard and any(per_shard) and ext not in all_exts:
            raise MissingSaliencyError(
                f"the shards {tar_paths[0].parent} hold no '{ext}' component (found: "
                f"{', '.join(sorted(all_exts)) or 'nothing'}); write them with `ssit shards`"
            )

    shards: list[Shard] = []
    skipped: list[tuple[str, str]] = []
    for tar_path, samples in zip(tar_paths, per_shard, strict=True):
        good = []
        with _mapped(tar_path) as data:
            check_index_members(tar_path, samples, data)
            for sample in samples:
                if validate:
                    reason = sample_defect(sample, data, components)
                else:
                    reason = _missing(sample, components)
                if reason is None:
                    good.append(sample)
                else:
                    skipped.append((f"{tar_path.name}:{sample.key}", reason))
        version = _index_version(index_path_for(tar_path))
        shards.append(Shard(tar_path, version, good, rewritten=len(good) != len(samples)))

    if skipped:
        shown = "; ".join(f"{name} ({why})" for name, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("skipping %d unusable sample(s): %s%s", len(skipped), shown, more)
    return ShardSet(shards, components)


def check_index_members(
    tar_path: Path, samples: Sequence[IndexedSample], data: bytes | mmap.mmap
) -> None:
    """Refuse an index whose entries do not point at the tar members they stand for.

    Every entry must point at the data of a regular member whose header (read just before the
    offset) gives the entry's name (format v1.2), extension and size; all members of one sample
    must share a key, and no two entries may point at the same member (entries past the end of
    a truncated tar are left to :func:`sample_defect`). Raises
    :class:`IndexMismatchError` naming the shard and the index line, and how to rebuild it.
    """
    used: dict[int, int] = {}
    for number, sample in enumerate(samples, start=2):
        problem = None
        keys = set()
        for ext, (offset, size) in sample.components.items():
            if offset > len(data):
                continue  # a truncated tar: the sample is left out as truncated
            member = member_at(data, offset, sample.names.get(ext))
            if member is None:
                problem = f"points its {ext} at offset {offset}, where no member's data starts"
            elif ext in sample.names and member.name != sample.names[ext]:
                problem = f"names {sample.names[ext]} but points at member {member.name}"
            elif split_member_name(member.name)[1] != ext:
                problem = f"lists {ext} but points at member {member.name}"
            elif member.size != size:
                problem = f"gives {member.name} {size} bytes, the tar {member.size}"
            elif offset in used:
                problem = f"points at {member.name}, which line {used[offset]} already uses"
            if problem:
                break
            used[offset] = number
            keys.add(split_member_name(member.name)[0])
        if problem is None and len(keys) > 1:
            problem = f"pairs members of different samples ({', '.join(sorted(keys))})"
        if problem:
            index_path = index_path_for(tar_path)
            raise IndexMismatchError(
                f"shard {tar_path.name}: index {index_path.name} line {number} {problem}; "
                f"rebuild it with `wds2idx {tar_path} {index_path}` (or delete it and re-run "
                "`ssit shards`)"
            )


def _missing(sample: IndexedSample, components: tuple[str, ...]) -> str | None:
    for ext in components:
        if ext not in sample.components:
            return f"no {ext}"
    return None


def _index_version(index_path: Path) -> str:
    with index_path.open() as handle:
        return handle.readline().split()[0]


@contextmanager
def _mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """Read-only mmap of a file (empty bytes for an empty file)."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def _decodes(sample: IndexedSample, data: bytes | mmap.mmap, components: tuple[str, ...]) -> bool:
    """Whether the sample's components decode completely."""
    for ext in components:
        offset, size = sample.components[ext]
        try:
            with Image.open(io.BytesIO(data[offset : offset + size])) as image:
                image.load()
        except (OSError, SyntaxError, ValueError):
            return False
    return True
