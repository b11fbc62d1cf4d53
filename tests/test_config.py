from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from ssit.config import (
    ConfigError,
    config_to_dict,
    load_config,
    non_finite_values,
    parse_override,
    read_yaml,
    resolve_config_path,
    save_config,
)


@dataclass
class Optim:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.95)


@dataclass
class Model:
    arch: str = "vit_small_patch16_224"
    pool: Literal["max", "avg"] | None = "max"
    img_size: int = 224
    segmentation: bool = True


@dataclass
class Job:
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)
    shards: Path | None = None
    tags: list[str] = field(default_factory=list)


def write_yaml(tmp_path: Path, data: object, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_without_file() -> None:
    assert load_config(Job) == Job()


def test_file_then_overrides_win(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"model": {"img_size": 96, "pool": "avg"}, "optim": {"lr": 0.5}})
    job = load_config(Job, path, ["optim.lr=2e-4", "model.pool=null", "tags=[a, b]"])
    assert job.model.img_size == 96
    assert job.model.pool is None
    assert job.optim.lr == pytest.approx(2e-4)
    assert job.optim.weight_decay == 0.1
    assert job.tags == ["a", "b"]


def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("optim:\n  lr: 1e-3\n")
    assert load_config(Job, path).optim.lr == pytest.approx(1e-3)


def test_int_is_accepted_for_float_but_not_bool_for_int() -> None:
    assert load_config(Job, None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"'model.img_size' must be an int, got True"):
        load_config(Job, None, ["model.img_size=true"])


def test_tuple_and_path_fields() -> None:
    job = load_config(Job, None, ["optim.betas=[0.8, 0.9]", "shards=/data/shards"])
    assert job.optim.betas == (0.8, 0.9)
    assert job.shards == Path("/data/shards")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"),
        ("modle.arch=x", r"unknown config key 'modle' \(did you mean 'model'\?\)"),
        ("model.pool=min", r"'model.pool' must be one of 'max', 'avg', got 'min'"),
        ("model.img_size=big", r"'model.img_size' must be an int, got 'big'"),
        ("optim.lr=fast", r"'optim.lr' must be a float, got 'fast'"),
        ("model=3", r"'model' is a section"),
        ("tags=oops", r"'tags' must be a list"),
        ("noequals", r"not of the form key=value"),
        ("=3", r"not of the form key=value"),
        ("a..b=3", r"not of the form key=value"),
    ],
)
def test_bad_overrides_are_one_clear_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(Job, None, [override])
    assert "\n" not in str(caught.value)


def test_override_below_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'lr' is a value, not a section"):
        load_config(Job, None, ["optim.lr=1", "optim.lr.x=3"])
    with pytest.raises(ConfigError, match=r"'optim.lr' must be a float, got \{'x': 3\}"):
        load_config(Job, None, ["optim.lr.x=3"])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(Job, tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Job, broken)
    listing = write_yaml(tmp_path, [1, 2], "list.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Job, listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Job, empty) == Job()


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    job = load_config(Job, None, ["model.pool=avg", "shards=/x", "optim.betas=[0.5, 0.6]"])
    saved = save_config(job, tmp_path / "run" / "config.yaml")
    assert load_config(Job, saved) == job
    assert config_to_dict(job)["shards"] == "/x"


def test_parse_override_keeps_strings() -> None:
    assert parse_override("data.shards=shards/demo") == ("data.shards", "shards/demo")
    assert parse_override("model.pool=") == ("model.pool", None)


def test_packaged_configs_resolve_by_name() -> None:
    with pytest.raises(ConfigError, match="packaged configs"):
        resolve_config_path("no_such_config")


def test_file_that_is_not_utf8_text_is_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(b"\xff\xd8\xff\xe0 not yaml at all")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xff at offset 0\)") as info:
        load_config(Job, binary)
    assert "\n" not in str(info.value)


def test_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 0.1\n  weight_decay: 0.0\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice at line 4, column 3"):
        load_config(Job, twice)
    top = tmp_path / "top.yaml"
    top.write_text("model: {}\nmodel:\n  img_size: 96\n")
    with pytest.raises(ConfigError, match=r"key 'model' is given twice at line 2"):
        load_config(Job, top)
    # The same key in different sections is fine.
    fine = tmp_path / "fine.yaml"
    fine.write_text("model:\n  img_size: 96\noptim:\n  lr: 0.5\n")
    assert load_config(Job, fine).optim.lr == 0.5


def test_yaml_error_names_the_problem_and_position_not_the_caret(tmp_path: Path) -> None:
    broken = tmp_path / "config.yaml"
    broken.write_text("seed: 0\nmodel:\n  arch: [vit\n  pool: max\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(broken, "run config")
    message = str(info.value)
    assert message.startswith(f"run config {broken} is not valid YAML: ")
    assert "line 4, column" in message and "expected ',' or ']'" in message
    assert not message.endswith("^") and "\n" not in message


def test_non_finite_values_are_found_by_key() -> None:
    job = load_config(Job, None, ["optim.lr=.nan", "optim.betas=[0.9, .inf]"])
    found = non_finite_values(job)
    assert list(found) == ["optim.lr", "optim.betas[1]"]
    assert found["optim.betas[1]"] == float("inf")
    assert non_finite_values(Job()) == {}
