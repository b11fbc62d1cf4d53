"""Tiny copies of the grading datasets, laid out exactly like their downloads."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssit.evaluate.config import DataConfig

PER_GRADE = 10  # 7 train, 1 val, 2 test with the default 0.7/0.1/0.2 split


def fundus(grade: int, seed: int, height: int = 72) -> np.ndarray:
    """A wide black photograph with an orange disc and ``grade * 3`` dark spots."""
    rng = np.random.default_rng([grade, seed])
    width = int(height * 1.4)
    yy, xx = np.mgrid[:height, :width]
    centre_x, radius = width / 2, height * 0.48
    disc = (xx - centre_x) ** 2 + (yy - height / 2) ** 2 < radius**2
    image = np.zeros((height, width, 3), np.uint8)
    image[disc] = (200 + rng.integers(-20, 20), 100 + rng.integers(-20, 20), 40)
    for _ in range(grade * 3):
        x, y = int(centre_x + rng.uniform(-0.5, 0.5) * radius), int(height / 2 + rng.uniform(
            -0.5, 0.5) * radius)
        image[y - 1 : y + 2, x - 1 : x + 2] = (60, 10, 10)
    return image


def save(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def graded_names(prefix: str) -> list[tuple[str, int]]:
    return [(f"{prefix}{grade}{index:02d}", grade)
            for grade in range(5) for index in range(PER_GRADE)]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_eyepacs(root: Path) -> Path:
    rows = []
    for number, (_, grade) in enumerate(graded_names("")):
        name = f"{10 + number // 2}_{'left' if number % 2 == 0 else 'right'}"
        save(fundus(grade, number), root / "train" / f"{name}.jpeg")
        rows.append([name, grade])
    write_csv(root / "trainLabels.csv", ["image", "level"], rows)
    return root


def make_aptos(root: Path) -> Path:
    rows = []
    for number, (_, grade) in enumerate(graded_names("")):
        id_code = f"{number * 7919 + 4096:012x}"
        save(fundus(grade, number), root / "train_images" / f"{id_code}.png")
        rows.append([id_code, grade])
    write_csv(root / "train.csv", ["id_code", "diagnosis"], rows)
    return root


def make_messidor(root: Path) -> Path:
    rows = []
    for number, (_, grade) in enumerate(graded_names("")):
        if number % 5 == 0:
            name = f"IM{number:06d}.JPG"
        else:
            name = f"20051020_{43800 + number}_0100_PP.png"
        save(fundus(grade, number), root / "IMAGES" / name)
        rows.append([name, grade, int(grade >= 2), 1])
    rows.append(["20051020_49999_0100_PP.png", "", "", 0])  # ungradable, no image shipped
    write_csv(root / "messidor_data.csv", ["image_id", "adjudicated_dr_grade", "adjudicated_dme",
                                           "adjudicated_gradable"], rows)
    return root


def make_ddr(root: Path) -> Path:
    base = root / "DR_grading"
    number = 0
    for folder, per_grade in (("train", 4), ("valid", 2), ("test", 2)):
        lines = []
        for grade in range(6):
            for _ in range(per_grade):
                name = f"007-{number:04d}-100.jpg"
                number += 1
                save(fundus(min(grade, 4), number), base / folder / name)
                lines.append(f"{name} {grade}")
        (base / f"{folder}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_folder(root: Path) -> Path:
    for split, per_grade in (("train", 4), ("val", 2), ("test", 2)):
        for grade in range(5):
            for index in range(per_grade):
                suffix = ".png" if index % 2 else ".jpg"
                save(fundus(grade, index), root / split / str(grade) / f"img{index}{suffix}")
    return root


LAYOUT_MAKERS: dict[str, Callable[[Path], Path]] = {
    "eyepacs": make_eyepacs,
    "aptos2019": make_aptos,
    "messidor2": make_messidor,
    "ddr": make_ddr,
    "folder": make_folder,
}


@pytest.fixture(scope="session")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny copy of every raw dataset layout (read-only for the tests)."""
    base = tmp_path_factory.mktemp("layouts")
    return {name: maker(base / name) for name, maker in LAYOUT_MAKERS.items()}


@pytest.fixture(scope="session")
def crop_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crops")


@pytest.fixture
def data_config(crop_cache: Path) -> Callable[..., DataConfig]:
    def build(dataset: str, path: Path, **kwargs) -> DataConfig:
        return DataConfig(dataset=dataset, path=str(path), cache_dir=str(crop_cache),
                          num_workers=0, **kwargs)

    return build


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread when the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
