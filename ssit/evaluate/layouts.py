"""The layouts in which labelled DR-grading datasets are distributed, read as graded images.

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
"""

from __future__ import annotations

import csv
import io
import logging
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ssit.evaluate.metrics import NUM_GRADES

LOGGER = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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


def read_table(
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
        for line, row in read_table(labels, ("image", "level"), "eyepacs")
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
        for line, row in read_table(labels, ("id_code", "diagnosis"), "aptos2019")
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
    for line, row in read_table(labels, MESSIDOR_COLUMNS, "messidor2"):
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
    """The graded images of one tar: consecutive members sharing a key (the full member name
    up to the first dot of its file name, as pre-training reads it) make one sample."""
    from ssit.prepare.shard_format import PrepareError, read_grade_member, split_member_name

    samples: list[dict[str, object]] = []
    try:
        with tarfile.open(tar_path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, suffix = split_member_name(member.name)
                if not samples or samples[-1]["key"] != key:
                    samples.append({"key": key})
                if suffix == "jpg":
                    samples[-1]["jpg"] = (member.offset_data, member.size)
                elif suffix == "cls":
                    where = f"{tar_path.name}:{key}"
                    grade = read_grade_member(archive.extractfile(member).read(), where)
                    if grade >= NUM_GRADES:
                        raise DatasetError(f"shards: sample {where}: grade {grade} is not one "
                                           f"of 0-{NUM_GRADES - 1}")
                    samples[-1]["cls"] = grade
    except PrepareError as error:
        raise DatasetError(f"shards: {error}") from None
    except (OSError, tarfile.TarError) as error:
        raise DatasetError(f"shards: cannot read {tar_path}: {error}") from None
    images = [sample for sample in samples if "jpg" in sample]
    unlabelled = [str(sample["key"]) for sample in images if "cls" not in sample]
    if unlabelled:
        raise DatasetError(f"shards: {len(unlabelled)} sample(s) in {tar_path.name} have no grade "
                           f"(e.g. {unlabelled[0]}); write the shards with --labels")
    return [GradedImage(str(sample["key"]), int(sample["cls"]), tar_path, *sample["jpg"])
            for sample in images]


LAYOUTS: dict[str, Callable[[Path], Splits]] = {
    "eyepacs": read_eyepacs,
    "aptos2019": read_aptos2019,
    "messidor2": read_messidor2,
    "ddr": read_ddr,
    "folder": read_folder,
    "shards": read_shards,
}
