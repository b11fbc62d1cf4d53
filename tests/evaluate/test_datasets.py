from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest

from ssit.evaluate.datasets import (
    GradingDataset,
    allocate_split_sizes,
    apply_split_file,
    class_counts,
    load_grading_data,
    split_items,
)
from ssit.evaluate.layouts import SPLITS, DatasetError, GradedImage
from ssit.prepare.shards import write_shards
from tests.evaluate.conftest import LAYOUT_MAKERS, PER_GRADE, write_csv


@pytest.fixture(scope="module")
def labelled_shards(layouts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "eyepacs"
    write_shards(layouts["eyepacs"] / "train", out, labels=layouts["eyepacs"] / "trainLabels.csv",
                 dataset="eyepacs", shard_size=20, jobs=2, progress=False)
    return out


def fresh_layout(name: str, tmp_path: Path) -> Path:
    return LAYOUT_MAKERS[name](tmp_path / name)


def check_splits(splits, total: int) -> None:
    assert set(splits) == set(SPLITS)
    keys = [item.key for name in SPLITS for item in splits[name]]
    assert len(keys) == len(set(keys)) == total
    for name in SPLITS:
        assert splits[name], name
        for item in splits[name]:
            assert item.load().size == (512, 512)


@pytest.mark.parametrize("dataset", ["eyepacs", "aptos2019", "messidor2"])
def test_seeded_layouts_load_split_and_crop(dataset, layouts, data_config, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ssit")
    splits = load_grading_data(data_config(dataset, layouts[dataset]), tmp_path)
    check_splits(splits, 5 * PER_GRADE)
    assert [len(splits[name]) for name in SPLITS] == [35, 5, 10]
    assert class_counts(splits["test"]) == [2, 2, 2, 2, 2]
    assert f"{dataset} train: 35 images (grades 0: 7, 1: 7" in caplog.text
    with open(tmp_path / "split.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 50 and {row["split"] for row in rows} == set(SPLITS)


def test_split_is_reused_and_seed_dependent(layouts, data_config, tmp_path):
    config = data_config("aptos2019", layouts["aptos2019"])
    first = load_grading_data(config, tmp_path / "a")
    again = load_grading_data(data_config("aptos2019", layouts["aptos2019"], split_seed=1),
                              tmp_path / "a")
    other = load_grading_data(data_config("aptos2019", layouts["aptos2019"], split_seed=1),
                              tmp_path / "b")

    def split_keys(splits):
        return sorted(item.key for item in splits["test"])

    assert split_keys(again) == split_keys(first)  # reused from a/split.csv despite the new seed
    assert split_keys(other) != split_keys(first)
    reused = load_grading_data(
        data_config("aptos2019", layouts["aptos2019"], split_file=str(tmp_path / "b/split.csv")),
        tmp_path / "c")
    assert split_keys(reused) == split_keys(other)


def test_messidor_keeps_extension_case_and_drops_ungradable(layouts, data_config, caplog):
    caplog.set_level(logging.INFO, logger="ssit")
    splits = load_grading_data(data_config("messidor2", layouts["messidor2"]))
    keys = {item.key for name in SPLITS for item in splits[name]}
    assert "IM000000" in keys and "20051020_43801_0100_PP" in keys
    assert "20051020_49999_0100_PP" not in keys
    assert "dropped 1 ungradable" in caplog.text


def test_ddr_uses_official_split_and_drops_grade_5(layouts, data_config):
    splits = load_grading_data(data_config("ddr", layouts["ddr"]))
    assert [len(splits[name]) for name in SPLITS] == [20, 10, 10]
    assert class_counts(splits["val"]) == [2, 2, 2, 2, 2]
    # also accepted: the DR_grading folder itself
    inner = load_grading_data(data_config("ddr", layouts["ddr"] / "DR_grading"))
    assert [len(inner[name]) for name in SPLITS] == [20, 10, 10]


def test_folder_tree_with_and_without_val(layouts, data_config, tmp_path):
    splits = load_grading_data(data_config("folder", layouts["folder"]))
    assert [len(splits[name]) for name in SPLITS] == [20, 10, 10]
    tree = shutil.copytree(layouts["folder"], tmp_path / "tree")
    shutil.rmtree(tree / "val")
    carved = load_grading_data(data_config("folder", tree))
    assert len(carved["train"]) + len(carved["val"]) == 20 and carved["val"]
    assert len(carved["test"]) == 10


def test_shards_single_directory_is_split(labelled_shards, data_config, tmp_path):
    splits = load_grading_data(data_config("shards", labelled_shards), tmp_path)
    check_splits(splits, 5 * PER_GRADE)
    item = splits["test"][0]
    assert item.offset is not None and item.path.suffix == ".tar"
    assert item.load().size == (512, 512)
    assert item.load(min_side=128).size == (128, 128)  # reduced-scale JPEG decoding


def test_shards_per_split_directories(layouts, data_config, tmp_path):
    images = sorted((layouts["eyepacs"] / "train").glob("*.jpeg"))
    for name, part in zip(SPLITS, (images[:30], images[30:40], images[40:]), strict=True):
        source = tmp_path / "raw" / name
        source.mkdir(parents=True)
        for path in part:
            shutil.copy(path, source / path.name)
        write_shards(source, tmp_path / "sets" / name, dataset=name, shard_size=20, jobs=1,
                     labels=layouts["eyepacs"] / "trainLabels.csv", progress=False)
    splits = load_grading_data(data_config("shards", tmp_path / "sets"))
    assert [len(splits[name]) for name in SPLITS] == [30, 10, 10]


def test_grading_dataset_yields_tensors(layouts, data_config):
    splits = load_grading_data(data_config("folder", layouts["folder"]))
    dataset = GradingDataset(splits["val"], lambda image: image.size)
    assert len(dataset) == 10
    assert dataset[0] == ((512, 512), splits["val"][0].grade)


def test_stratified_split_is_deterministic():
    items = [GradedImage(f"k{i:03d}", i % 5, Path(f"{i}.png")) for i in range(100)]
    first = split_items(items, [0.7, 0.1, 0.2], seed=3)
    again = split_items(list(reversed(items)), [0.7, 0.1, 0.2], seed=3)
    assert {n: [i.key for i in first[n]] for n in SPLITS} == {
        n: [i.key for i in again[n]] for n in SPLITS}
    assert [class_counts(first[n]) for n in SPLITS] == [[14] * 5, [2] * 5, [4] * 5]


# ---------------------------------------------------------------- broken layouts


def rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


def break_eyepacs_image(root: Path) -> None:
    (root / "train" / "10_left.jpeg").unlink()


def break_eyepacs_csv(root: Path) -> None:
    (root / "trainLabels.csv").unlink()


def break_eyepacs_columns(root: Path) -> None:
    rewrite(root / "trainLabels.csv", "image,level", "image,grade")


def break_aptos_grade(root: Path) -> None:
    rows = (root / "train.csv").read_text().splitlines()
    rows[3] = rows[3].split(",")[0] + ",7"
    (root / "train.csv").write_text("\n".join(rows) + "\n")


def break_aptos_folder(root: Path) -> None:
    shutil.rmtree(root / "train_images")


def break_messidor_image(root: Path) -> None:
    (root / "IMAGES" / "20051020_43801_0100_PP.png").unlink()


def break_messidor_csv(root: Path) -> None:
    rewrite(root / "messidor_data.csv", "adjudicated_dr_grade", "dr_grade")


def break_ddr_line(root: Path) -> None:
    rewrite(root / "DR_grading" / "valid.txt", " 1\n", "\n")


def break_ddr_listing(root: Path) -> None:
    (root / "DR_grading" / "test.txt").unlink()


def break_ddr_image(root: Path) -> None:
    first = (root / "DR_grading" / "test.txt").read_text().split()[0]  # a grade-0 image
    (root / "DR_grading" / "test" / first).unlink()


def break_folder_grade(root: Path) -> None:
    (root / "train" / "7").mkdir()


def break_folder_test(root: Path) -> None:
    shutil.rmtree(root / "test")


@pytest.mark.parametrize(
    ("dataset", "breaker", "message"),
    [
        ("eyepacs", break_eyepacs_image, r"1 image\(s\) listed in trainLabels.csv are missing"),
        ("eyepacs", break_eyepacs_csv, "trainLabels.csv not found"),
        ("eyepacs", break_eyepacs_columns, "lacks column"),
        ("aptos2019", break_aptos_grade, "grade 7 is not one of 0, 1, 2, 3, 4"),
        ("aptos2019", break_aptos_folder, "train_images not found"),
        ("messidor2", break_messidor_image, r"1 image\(s\) listed in messidor_data.csv"),
        ("messidor2", break_messidor_csv, "no CSV with columns"),
        ("ddr", break_ddr_line, "is not 'name grade'"),
        ("ddr", break_ddr_listing, "test.txt not found"),
        ("ddr", break_ddr_image, "missing"),
        ("folder", break_folder_grade, "is not a grade folder"),
        ("folder", break_folder_test, "not found"),
    ],
)
def test_broken_layouts_raise_one_clear_line(dataset, breaker, message, data_config, tmp_path):
    root = fresh_layout(dataset, tmp_path)
    breaker(root)
    with pytest.raises(DatasetError, match=message) as error:
        load_grading_data(data_config(dataset, root))
    assert "\n" not in str(error.value)


def test_missing_root_and_empty_path(data_config, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_grading_data(data_config("aptos2019", tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"data\.path is empty"):
        load_grading_data(data_config("aptos2019", ""))


def test_unlabelled_shards_are_rejected(layouts, data_config, tmp_path):
    out = tmp_path / "unlabelled"
    source = tmp_path / "few"
    for path in sorted((layouts["eyepacs"] / "train").glob("*.jpeg"))[:3]:
        source.mkdir(exist_ok=True)
        shutil.copy(path, source / path.name)
    write_shards(source, out, dataset="few", shard_size=8, jobs=1, progress=False)
    with pytest.raises(DatasetError, match="carries no grades"):
        load_grading_data(data_config("shards", out))
    with pytest.raises(DatasetError, match="manifest"):
        load_grading_data(data_config("shards", source))


def test_split_file_must_match_the_dataset(tmp_path):
    items = [GradedImage(f"k{i}", i % 5, Path("x.png")) for i in range(10)]
    path = write_csv(tmp_path / "split.csv", ["key", "grade", "split"], [["k1", 1, "train"],
                                                                         ["zz", 0, "test"]])
    with pytest.raises(DatasetError, match="lists 1 image"):
        apply_split_file(items, path)
    write_csv(path, ["key", "grade", "split"], [["k1", 3, "train"]])
    with pytest.raises(DatasetError, match="has grade 3 but the dataset says 1"):
        apply_split_file(items, path)
    write_csv(path, ["key", "grade", "split"], [["k1", 1, "holdout"]])
    with pytest.raises(DatasetError, match="not train, val or test"):
        apply_split_file(items, path)


def test_unreadable_raw_image_is_named(data_config, tmp_path):
    root = fresh_layout("aptos2019", tmp_path)
    victim = sorted((root / "train_images").glob("*.png"))[4]
    victim.write_bytes(b"not an image")
    with pytest.raises(Exception, match=victim.name) as error:
        load_grading_data(data_config("aptos2019", root))
    assert "could not be cropped" in str(error.value)


def test_split_sizes_by_hand():
    # 4 images per grade at 7/8 : 0 : 1/8 -> whole parts 3/0/0, overall targets 18/0/2 (17.5 and
    # 2.5 rounded by largest remainder, ties to the earlier split)
    sizes = allocate_split_sizes([4] * 5, [0.875, 0.0, 0.125])
    assert [sum(col) for col in zip(*sizes, strict=True)] == [18, 0, 2]
    assert all(sum(row) == 4 for row in sizes)
    assert allocate_split_sizes([10, 3], [0.7, 0.1, 0.2]) == [[7, 1, 2], [2, 0, 1]]


def _append_rows(path: Path, rows: list[str]) -> None:
    path.write_text(path.read_text() + "".join(f"{row}\n" for row in rows))


def test_image_listed_with_two_grades_is_refused(data_config, tmp_path):
    root = fresh_layout("eyepacs", tmp_path)
    _append_rows(root / "trainLabels.csv", ["10_left,4"])  # 10_left is grade 0
    with pytest.raises(DatasetError) as error:
        load_grading_data(data_config("eyepacs", root), tmp_path / "job")
    assert str(error.value) == ("eyepacs: conflicting grades for 10_left (0 and 4); fix the "
                                "labels so that each image has one grade")
    assert not (tmp_path / "job" / "split.csv").exists()


def test_repeated_rows_with_one_grade_count_once(data_config, tmp_path, caplog):
    root = fresh_layout("aptos2019", tmp_path)
    rows = (root / "train.csv").read_text().splitlines()
    _append_rows(root / "train.csv", [rows[1], rows[2], rows[1]])
    caplog.set_level(logging.WARNING, logger="ssit")
    splits = load_grading_data(data_config("aptos2019", root), tmp_path / "job")
    check_splits(splits, 5 * PER_GRADE)
    warnings = [r.getMessage() for r in caplog.records if "repeated" in r.getMessage()]
    assert warnings == [f"aptos2019: 3 repeated row(s) of an image with the same grade, each "
                        f"image kept once (e.g. {rows[1].split(',')[0]})"]


def test_ddr_image_in_two_splits_with_two_grades_is_refused(data_config, tmp_path):
    root = fresh_layout("ddr", tmp_path)
    base = root / "DR_grading" if (root / "DR_grading").is_dir() else root
    name, grade = (base / "train.txt").read_text().split()[:2]
    shutil.copy(base / "train" / name, base / "test" / name)
    _append_rows(base / "test.txt", [f"{name} {(int(grade) + 2) % 5}"])
    with pytest.raises(DatasetError, match=f"conflicting grades for {Path(name).stem} "):
        load_grading_data(data_config("ddr", root))


def _write_graded_tar(folder: Path, name: str, members: list[tuple[str, bytes]]) -> Path:
    import io
    import json
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / name, "w") as tar:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = folder / "manifest.json"
    shards = json.loads(manifest.read_text())["shards"] if manifest.exists() else []
    manifest.write_text(json.dumps({"format": 1, "has_labels": True,
                                    "shards": [*shards, {"name": name}]}))
    return folder


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    import numpy as np

    from tests.data.conftest import encode_jpeg

    return encode_jpeg(np.full((16, 16, 3), 90, np.uint8))


def test_shard_samples_are_keyed_by_their_full_name(tmp_path, jpeg_bytes):
    from ssit.evaluate.layouts import read_shard_dir

    folder = _write_graded_tar(tmp_path / "s", "g-000000.tar", [
        ("a/x.cls", b"1"), ("a/x.jpg", jpeg_bytes), ("b/x.cls", b"3\n"), ("b/x.jpg", jpeg_bytes),
    ])
    items = read_shard_dir(folder)
    assert [(item.key, item.grade) for item in items] == [("a/x", 1), ("b/x", 3)]
    assert items[1].load().size == (16, 16)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        ("٣".encode(), "cls '٣' is not a grade"),
        (b"+2", "cls '+2' is not a grade"),
        (b" 3 ", "cls ' 3 ' is not a grade"),
        (b"1e0", "cls '1e0' is not a grade"),
        (b"3.0", "cls '3.0' is not a grade"),
        (b"3\n\n", "is not a grade"),
        (b"", "cls '' is not a grade"),
        (b"7", "grade 7 is not one of 0-4"),
        (b"\xff\xfe3", "its cls member is not UTF-8 text"),
    ],
)
def test_shard_grades_must_be_plain_digits(tmp_path, jpeg_bytes, cls, message):
    from ssit.evaluate.layouts import read_shard_dir

    folder = _write_graded_tar(tmp_path / "s", "g-000000.tar", [
        ("ok.cls", b"2"), ("ok.jpg", jpeg_bytes), ("bad.cls", cls), ("bad.jpg", jpeg_bytes),
    ])
    with pytest.raises(DatasetError) as error:
        read_shard_dir(folder)
    assert "\n" not in str(error.value)
    assert "g-000000.tar:bad" in str(error.value) and message in str(error.value)


def test_shard_sample_in_two_tars_with_two_grades_is_refused(tmp_path, jpeg_bytes):
    from ssit.evaluate.datasets import drop_repeated_images
    from ssit.evaluate.layouts import read_shards

    folder = tmp_path / "s"
    _write_graded_tar(folder, "g-000000.tar", [("x.cls", b"0"), ("x.jpg", jpeg_bytes)])
    _write_graded_tar(folder, "g-000001.tar", [("x.cls", b"4"), ("x.jpg", jpeg_bytes)])
    with pytest.raises(DatasetError, match=r"conflicting grades for x \(0 and 4\)"):
        drop_repeated_images(read_shards(folder), "shards")


def test_raw_image_over_the_pixel_bound_is_not_decoded(data_config, tmp_path):
    from tests.prepare.test_image_size import hdr

    root = fresh_layout("aptos2019", tmp_path)
    victim = hdr(sorted((root / "train_images").glob("*.png"))[3])
    victim.write_bytes(victim.read_bytes().replace(b"-Y 80 +X 96", b"-Y 9000 +X 12000", 1))
    with pytest.raises(Exception, match=victim.name) as error:
        load_grading_data(data_config("aptos2019", root))
    assert "image too large to decode (12000x9000 = 108 megapixels" in str(error.value)
