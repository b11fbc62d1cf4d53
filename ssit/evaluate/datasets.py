"""Labelled DR-grading datasets, read in the layouts they are distributed in.

Every layout yields :class:`GradedImage` records (key, grade 0-4, where the image is) split into
train/val/test:

- ``eyepacs``: ``trainLabels.csv`` (``image,level``) and ``train/<image>.jpeg`` (or the images
  beside the CSV). With Kaggle's ``retinopathy_solution.csv`` and ``test/`` present, those form
  the test split; otherwise the test split is drawn from the training labels.
- ``aptos2019``: ``train.csv`` (``id_code,diagnosis``) and ``train_images/<id_code>.png``.
- ``messidor2``: the adjudicated grades CSV (``image_id,adjudicated_dr_grade,adjudicated_dme,
  adjudicated_gradable``; ``image_id`` includes the extension) and the images anywhere below the
  folder; ungradable images are dropped.
- ``ddr``: ``DR_grading/{train,valid,test}/`` with ``train.txt``/``valid.txt``/``test.txt``
  (lines ``name grade``); grade 5 (ungradable) is dropped.
- ``folder``: ``train/``, ``val/`` (or ``valid/``, optional) and ``test/``, each holding one
  sub-folder per grade ``0``-``4`` of ``.jpg``/``.jpeg``/``.png`` images.
- ``shards``: a shard directory written by ``ssit shards --labels``; either one directory
  (split with the seed) or a directory holding ``train/``, ``val/`` and ``test/`` shard
  directories (used as given).

Datasets without an official split are split per grade with a fixed seed; the split is written
to ``split.csv`` in the output folder and reused from there (or from ``data.split_file``). Raw
photographs are replaced by their cached 512x512 fundus crops.
"""

from __future__ import annotations

import csv
import io
import logging
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssit.atomic_write import replacing
from ssit.evaluate.config import DataConfig
from ssit.evaluate.crops import cached_crops, default_cache_dir
from ssit.evaluate.metrics import NUM_GRADES

LOGGER = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_FILE = "split.csv"


class DatasetError(ValueError):
    """A dataset folder that does not match its expected layout; one line for the user."""


@dataclass(frozen=True)
class GradedImage:
    """One labelled image: a file, or a byte range (offset, length) inside a tar shard."""

    key: str
    grade: int
    path: Path
    offset: int | None = None
    length: int | None = None

    def load(self, min_side: int | None = None) -> Image.Image:
        """Decode the image as RGB; JPEGs at a reduced scale that keeps ``min_side`` pixels."""
        if self.offset is None:
            source: Path | io.BytesIO = self.path
        else:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                source = io.BytesIO(handle.read(self.length))
        with Image.open(source) as image:
            if min_side is not None and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            return image.convert("RGB")


Splits = dict[str, list[GradedImage]]


class GradingDataset(torch.utils.data.Dataset):
    """(image tensor, grade) pairs of a list of graded images under a transform.

    ``min_side`` lets JPEGs decode at a reduced scale when the model input is much smaller.
    """

    def __init__(
        self, items: Sequence[GradedImage], transform: Callable, min_side: int | None = None
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        return self.transform(item.load(self.min_side)), item.grade


def load_grading_data(cfg: DataConfig, out_dir: Path | None = None) -> Splits:
    """Read ``cfg.dataset`` from ``cfg.path``, split it, crop raw images, log class counts.

    The split is written to ``out_dir/split.csv`` (and reused from there when present).
    """
    root = Path(cfg.path).expanduser()
    if not cfg.path:
        raise DatasetError(f"data.path is empty: give the {cfg.dataset} folder")
    if not root.exists():
        raise DatasetError(f"{cfg.dataset}: {root} does not exist")
    layout = LAYOUTS[cfg.dataset](root)
    splits = split_layout(layout, cfg, _split_file_to_reuse(cfg, out_dir))
    for name in SPLITS:
        if not splits[name]:
            raise DatasetError(f"{cfg.dataset}: the {name} split is empty")
        log_class_counts(cfg.dataset, name, splits[name])
    if out_dir is not None:
        write_split_file(splits, Path(out_dir) / SPLIT_FILE)
    if cfg.dataset != "shards":
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        splits = {name: crop_items(items, cache_dir, cfg.num_workers)
                  for name, items in splits.items()}
    return splits


def split_layout(layout: Splits, cfg: DataConfig, split_file: Path | None = None) -> Splits:
    """The train/val/test split of a dataset's ``layout``: from ``split_file`` when given, else
    the dataset's own parts completed by a seeded split with ``cfg.split_fractions``."""
    if split_file is not None:
        return apply_split_file(_all_items(layout), split_file)
    if "all" in layout:
        return split_items(layout["all"], cfg.split_fractions, cfg.split_seed)
    if not layout.get("val"):
        train_share = cfg.split_fractions[0] / (cfg.split_fractions[0] + cfg.split_fractions[1])
        parts = split_items(layout["train"], [train_share, 0.0, 1 - train_share], cfg.split_seed)
        return {"train": parts["train"], "val": parts["test"], "test": layout["test"]}
    return {name: layout[name] for name in SPLITS}


def crop_items(
    items: Sequence[GradedImage], cache_dir: Path, num_workers: int
) -> list[GradedImage]:
    """Point each raw image at its cached 512x512 fundus crop (cropping it if needed)."""
    crops = cached_crops([item.path for item in items], cache_dir, num_workers)
    return [replace(item, path=crop) for item, crop in zip(items, crops, strict=True)]


def class_counts(items: Iterable[GradedImage]) -> list[int]:
    """Number of images of each grade 0-4."""
    counts = Counter(item.grade for item in items)
    return [counts.get(grade, 0) for grade in range(NUM_GRADES)]


def log_class_counts(dataset: str, split: str, items: Sequence[GradedImage]) -> None:
    """Log how many images of each grade a split holds."""
    counts = ", ".join(f"{g}: {n}" for g, n in enumerate(class_counts(items)))
    LOGGER.info("%s %s: %d images (grades %s)", dataset, split, len(items), counts)


def split_items(
    items: Sequence[GradedImage], fractions: Sequence[float], seed: int
) -> Splits:
    """Split per grade into train/val/test by ``fractions`` with a seeded shuffle.

    Each grade's images are sorted by key and shuffled with ``seed``; the split sizes follow
    ``fractions`` per grade, the fractional parts being handed out so that the overall sizes
    are the rounded overall shares. The result depends only on keys, grades, fractions and seed.
    """
    rng = np.random.default_rng(seed)
    by_grade: dict[int, list[GradedImage]] = {}
    for item in sorted(items, key=lambda it: it.key):
        by_grade.setdefault(item.grade, []).append(item)
    grades = sorted(by_grade)
    sizes = allocate_split_sizes([len(by_grade[g]) for g in grades], fractions)
    splits: Splits = {name: [] for name in SPLITS}
    for grade, counts in zip(grades, sizes, strict=True):
        group = by_grade[grade]
        order = iter(rng.permutation(len(group)))
        for name, count in zip(SPLITS, counts, strict=True):
            splits[name].extend(group[next(order)] for _ in range(count))
    return splits


def _largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    counts = [int(np.floor(share)) for share in shares]
    order = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i], i))
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


def allocate_split_sizes(
    group_sizes: Sequence[int], fractions: Sequence[float]
) -> list[list[int]]:
    """Per-group split sizes close to ``size * fraction`` whose totals match the overall shares.

    Each group first gets the whole part of its shares; the leftover images go, largest
    fractional part first, to splits still short of their overall target.
    """
    total = sum(group_sizes)
    targets = _largest_remainder([total * f for f in fractions], total)
    sizes = [[int(np.floor(n * f)) for f in fractions] for n in group_sizes]
    short = [t - sum(row[s] for row in sizes) for s, t in enumerate(targets)]
    left = [n - sum(row) for n, row in zip(group_sizes, sizes, strict=True)]
    candidates = sorted(
        ((g, s) for g in range(len(group_sizes)) for s in range(len(fractions))),
        key=lambda gs: (-(group_sizes[gs[0]] * fractions[gs[1]] % 1), gs[0], gs[1]),
    )
    for g, s in candidates:
        if left[g] > 0 and short[s] > 0:
            sizes[g][s] += 1
            left[g] -= 1
            short[s] -= 1
    for g in range(len(group_sizes)):  # anything still left goes where it is most missed
        while left[g] > 0:
            s = max(range(len(fractions)), key=lambda i: (short[i], fractions[i]))
            sizes[g][s] += 1
            left[g] -= 1
            short[s] -= 1
    return sizes


def write_split_file(splits: Splits, path: Path) -> None:
    """Write ``key,grade,split`` rows (atomically)."""
    with replacing(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "grade", "split"])
        for name in SPLITS:
            for item in splits.get(name, []):
                writer.writerow([item.key, item.grade, name])


def apply_split_file(items: Sequence[GradedImage], path: Path) -> Splits:
    """Split ``items`` as recorded in a ``split.csv``; every listed key must exist."""
    by_key = {item.key: item for item in items}
    splits: Splits = {name: [] for name in SPLITS}
    missing: list[str] = []
    rows = _read_table(path, ("key", "grade", "split"), "split file")
    for line, row in rows:
        name = row["split"]
        if name not in SPLITS:
            raise DatasetError(f"{path} line {line}: split {name!r} is not train, val or test")
        item = by_key.pop(row["key"], None)
        if item is None:
            missing.append(row["key"])
            continue
        if str(item.grade) != row["grade"].strip():
            raise DatasetError(f"{path} line {line}: {row['key']} has grade {row['grade']} "
                               f"but the dataset says {item.grade}")
        splits[name].append(item)
    if missing:
        raise DatasetError(f"split file {path} lists {len(missing)} image(s) the dataset lacks "
                           f"(e.g. {', '.join(missing[:3])})")
    if by_key:
        LOGGER.warning("%d image(s) are not in split file %s and are left out",
                       len(by_key), path)
    LOGGER.info("split read from %s", path)
    return splits


def _split_file_to_reuse(cfg: DataConfig, out_dir: Path | None) -> Path | None:
    if cfg.split_file:
        path = Path(cfg.split_file).expanduser()
        if not path.is_file():
            raise DatasetError(f"data.split_file {path} does not exist")
        return path
    if out_dir is not None and (Path(out_dir) / SPLIT_FILE).is_file():
        return Path(out_dir) / SPLIT_FILE
    return None


def _all_items(layout: Splits) -> list[GradedImage]:
    return [item for items in layout.values() for item in items]


def _read_table(
    path: Path, columns: Sequence[str], dataset: str
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with the given columns, each with its 1-based line number."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            absent = [name for name in columns if name not in header]
            if absent:
                raise DatasetError(f"{dataset}: {path} lacks column(s) {', '.join(absent)} "
                                   f"(found {', '.join(header) or 'no header'})")
            reader.fieldnames = header
            return [(index + 2, {k: (v or "").strip() for k, v in row.items() if k})
                    for index, row in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{dataset}: cannot read {path}: {error}") from None


def _parse_grade(text: str, where: str, allowed: Iterable[int] = range(NUM_GRADES)) -> int:
    try:
        grade = int(float(text))
        if grade != float(text):
            raise ValueError
    except ValueError:
        raise DatasetError(f"{where}: grade {text!r} is not an integer") from None
    allowed = sorted(allowed)
    if grade not in allowed:
        expected = ", ".join(map(str, allowed))
        raise DatasetError(f"{where}: grade {grade} is not one of {expected}")
    return grade


def _require_file(path: Path, dataset: str, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{dataset}: {what} not found at {path}")
    return path


def _check_images_exist(items: Sequence[GradedImage], dataset: str, listing: Path) -> None:
    missing = [item.path for item in items if not item.path.is_file()]
    if missing:
        examples = ", ".join(str(path) for path in missing[:3])
        raise DatasetError(f"{dataset}: {len(missing)} image(s) listed in {listing.name} are "
                           f"missing (e.g. {examples})")
    if not items:
        raise DatasetError(f"{dataset}: {listing} lists no usable images")


def read_eyepacs(root: Path) -> Splits:
    """EyePACS (Kaggle 2015): trainLabels.csv + train/*.jpeg, optional test solution."""
    labels = _require_file(root / "trainLabels.csv", "eyepacs", "trainLabels.csv")
    train_dir = root / "train" if (root / "train").is_dir() else root
    train = _eyepacs_table(labels, train_dir)
    solution = root / "retinopathy_solution.csv"
    if solution.is_file():
        test_dir = root / "test"
        if not test_dir.is_dir():
            raise DatasetError(f"eyepacs: {solution.name} is present but {test_dir} is not")
        return {"train": train, "test": _eyepacs_table(solution, test_dir)}
    return {"all": train}


def _eyepacs_table(labels: Path, image_dir: Path) -> list[GradedImage]:
    items = [
        GradedImage(row["image"], _parse_grade(row["level"], f"{labels} line {line}"),
                    image_dir / f"{row['image']}.jpeg")
        for line, row in _read_table(labels, ("image", "level"), "eyepacs")
    ]
    _check_images_exist(items, "eyepacs", labels)
    return items


def read_aptos2019(root: Path) -> Splits:
    """APTOS 2019 blindness detection: train.csv + train_images/<id_code>.png."""
    labels = _require_file(root / "train.csv", "aptos2019", "train.csv")
    image_dir = root / "train_images"
    if not image_dir.is_dir():
        raise DatasetError(f"aptos2019: image folder {image_dir} not found")
    items = [
        GradedImage(row["id_code"], _parse_grade(row["diagnosis"], f"{labels} line {line}"),
                    image_dir / f"{row['id_code']}.png")
        for line, row in _read_table(labels, ("id_code", "diagnosis"), "aptos2019")
    ]
    _check_images_exist(items, "aptos2019", labels)
    return {"all": items}


MESSIDOR_COLUMNS = ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable")


def read_messidor2(root: Path) -> Splits:
    """Messidor-2 with adjudicated grades; ungradable images are dropped."""
    labels = _find_messidor_csv(root)
    images = {path.name: path for path in root.rglob("*")
              if path.suffix.lower() in (*IMAGE_SUFFIXES, ".tif")}
    folded = {name.lower(): path for name, path in images.items()}
    items: list[GradedImage] = []
    missing: list[str] = []
    dropped = 0
    for line, row in _read_table(labels, MESSIDOR_COLUMNS, "messidor2"):
        where = f"{labels} line {line}"
        if _parse_grade(row["adjudicated_gradable"], where, (0, 1)) == 0:
            dropped += 1
            continue
        name = row["image_id"]
        path = images.get(name) or folded.get(name.lower())
        if path is None:
            missing.append(name)
            continue
        items.append(GradedImage(Path(name).stem, _parse_grade(row["adjudicated_dr_grade"], where),
                                 path))
    if missing:
        raise DatasetError(f"messidor2: {len(missing)} image(s) listed in {labels.name} are "
                           f"missing under {root} (e.g. {', '.join(missing[:3])})")
    if not items:
        raise DatasetError(f"messidor2: {labels} lists no gradable images")
    LOGGER.info("messidor2: dropped %d ungradable image(s)", dropped)
    return {"all": items}


def _find_messidor_csv(root: Path) -> Path:
    candidates = [root / "messidor_data.csv", *sorted(root.glob("*.csv"))]
    for path in candidates:
        if path.is_file():
            with open(path, encoding="utf-8-sig") as handle:
                header = [name.strip() for name in handle.readline().split(",")]
            if all(name in header for name in MESSIDOR_COLUMNS):
                return path
    raise DatasetError(f"messidor2: no CSV with columns {','.join(MESSIDOR_COLUMNS)} in {root}")


DDR_SPLITS = {"train": "train", "val": "valid", "test": "test"}
DDR_UNGRADABLE = 5


def read_ddr(root: Path) -> Splits:
    """DDR: DR_grading/{train,valid,test}/ with train.txt/valid.txt/test.txt; grade 5 dropped."""
    base = root / "DR_grading" if (root / "DR_grading").is_dir() else root
    splits: Splits = {}
    for name, folder in DDR_SPLITS.items():
        listing = _require_file(base / f"{folder}.txt", "ddr", f"{folder}.txt")
        image_dir = base / folder
        if not image_dir.is_dir():
            raise DatasetError(f"ddr: image folder {image_dir} not found")
        items: list[GradedImage] = []
        for line, text in enumerate(listing.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            fields = text.split()
            if len(fields) != 2:
                raise DatasetError(f"ddr: {listing} line {line} is not 'name grade': {text!r}")
            grade = _parse_grade(fields[1], f"{listing} line {line}", range(DDR_UNGRADABLE + 1))
            if grade == DDR_UNGRADABLE:
                continue
            items.append(GradedImage(Path(fields[0]).stem, grade, image_dir / fields[0]))
        _check_images_exist(items, "ddr", listing)
        splits[name] = items
    return splits


def read_folder(root: Path) -> Splits:
    """A train/val/test tree with one sub-folder per grade; val may be absent."""
    splits: Splits = {}
    for name, folders in (("train", ("train",)), ("val", ("val", "valid")), ("test", ("test",))):
        found = next((root / f for f in folders if (root / f).is_dir()), None)
        if found is None:
            if name == "val":
                continue
            raise DatasetError(f"folder: {root / name} not found (expected train/, val/, test/ "
                               f"with grade sub-folders 0-4)")
        items: list[GradedImage] = []
        for grade_dir in sorted(p for p in found.iterdir() if p.is_dir()):
            if grade_dir.name not in {str(g) for g in range(NUM_GRADES)}:
                raise DatasetError(f"folder: {grade_dir} is not a grade folder (expected 0-4)")
            items.extend(
                GradedImage(f"{name}/{grade_dir.name}/{path.stem}", int(grade_dir.name), path)
                for path in sorted(grade_dir.iterdir())
                if path.suffix.lower() in IMAGE_SUFFIXES
            )
        if not items:
            raise DatasetError(f"folder: no images in {found}/<grade>/")
        splits[name] = items
    return splits


def read_shards(root: Path) -> Splits:
    """Labelled shards: one shard directory, or train/val/test shard directories."""
    subdirs = [root / name for name in SPLITS]
    if all(path.is_dir() for path in subdirs):
        return {name: read_shard_dir(path) for name, path in zip(SPLITS, subdirs, strict=True)}
    return {"all": read_shard_dir(root)}


def read_shard_dir(shard_dir: Path) -> list[GradedImage]:
    """Index the ``jpg`` and ``cls`` of every sample of a labelled shard directory."""
    from ssit.prepare.shard_format import list_shards, read_manifest

    try:
        manifest = read_manifest(shard_dir)
    except (OSError, ValueError) as error:
        raise DatasetError(f"shards: {error}") from None
    if not manifest.get("has_labels", False):
        raise DatasetError(f"shards: {shard_dir} carries no grades (write it with --labels)")
    try:
        tars = list_shards(shard_dir)
    except (OSError, ValueError) as error:
        raise DatasetError(f"shards: {error}") from None
    items: list[GradedImage] = []
    for tar_path in tars:
        items.extend(_index_tar(tar_path))
    return items


def _index_tar(tar_path: Path) -> list[GradedImage]:
    images: dict[str, tuple[int, int]] = {}
    grades: dict[str, int] = {}
    try:
        with tarfile.open(tar_path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.rpartition("/")[2].partition(".")
                if suffix == "jpg":
                    images[key] = (member.offset_data, member.size)
                elif suffix == "cls":
                    data = archive.extractfile(member).read().decode().strip()
                    grades[key] = _parse_grade(data, f"{tar_path.name}:{member.name}")
    except (OSError, tarfile.TarError) as error:
        raise DatasetError(f"shards: cannot read {tar_path}: {error}") from None
    unlabelled = sorted(set(images) - set(grades))
    if unlabelled:
        raise DatasetError(f"shards: {len(unlabelled)} sample(s) in {tar_path.name} have no grade "
                           f"(e.g. {unlabelled[0]}); write the shards with --labels")
    return [GradedImage(key, grades[key], tar_path, offset, size)
            for key, (offset, size) in images.items()]


LAYOUTS: dict[str, Callable[[Path], Splits]] = {
    "eyepacs": read_eyepacs,
    "aptos2019": read_aptos2019,
    "messidor2": read_messidor2,
    "ddr": read_ddr,
    "folder": read_folder,
    "shards": read_shards,
}
