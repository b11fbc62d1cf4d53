"""Grading foreign (``timm:<name>=<file>``) weights: they fill the model, or a partial load is
asked for and logged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from ssit.config import load_config
from ssit.evaluate.config import GradeConfig
from ssit.evaluate.job import run_grading

REPO = Path(__file__).resolve().parents[2]
ARCH = "vit_tiny_patch16_224"
SMALL = "embed_dim: 48, num_heads: 2"


@pytest.fixture(scope="module")
def four_blocks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm weight file of a 4-block, 48-wide vit_tiny_patch16_224 with a classifier."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=3, depth=4, embed_dim=48, num_heads=2)
    path = tmp_path_factory.mktemp("timm") / "vit4.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def launch(*args: str) -> int:
    spec = importlib.util.spec_from_file_location("grade_launcher", REPO / "launch" / "grade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def dry_run(demo_shards: Path, file: Path, *overrides: str) -> list[str]:
    return ["--checkpoint", f"timm:{ARCH}={file}", "--dataset", "shards", "--data",
            str(demo_shards), "--protocol", "knn", "--dry-run", "--config", "grade_tiny_cpu",
            *overrides]


def test_launcher_refuses_foreign_weights_that_do_not_fill_the_model(four_blocks, demo_shards,
                                                                    capsys) -> None:
    assert launch(*dry_run(demo_shards, four_blocks)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and four_blocks.name in err
    assert "missing" in err and "encoder.allow_partial_load=true" in err
    assert launch(*dry_run(demo_shards, four_blocks, "encoder.model_kwargs={depth: 2, "
                           f"{SMALL}}}")) == 2
    assert "24 left over (e.g. blocks.2." in capsys.readouterr().err


def test_launcher_takes_the_files_architecture_from_model_kwargs(four_blocks, demo_shards,
                                                                 capsys) -> None:
    depth4 = f"encoder.model_kwargs={{depth: 4, {SMALL}}}"
    status = launch(*dry_run(demo_shards, four_blocks, depth4))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "#SBATCH" in captured.out


def test_a_deliberate_partial_load_grades_and_says_so_in_grade_log(four_blocks, layouts,
                                                                   crop_cache, tmp_path) -> None:
    config = load_config(GradeConfig, "grade_tiny_cpu", [
        f"encoder.checkpoint=timm:{ARCH}={four_blocks}", "encoder.backbone=vit",
        f"encoder.model_kwargs={{depth: 5, {SMALL}}}", "encoder.allow_partial_load=true",
        "data.dataset=folder", f"data.path={layouts['folder']}", "train.protocol=knn",
        f"data.cache_dir={crop_cache}"])
    result = run_grading(config, tmp_path)
    assert result["protocol"] == "knn"
    log = (tmp_path / "grade.log").read_text()
    assert "stay randomly initialised" in log and "blocks.4.attn.qkv.weight" in log
    assert "blocks.3.attn.qkv.weight" not in log.split("stay randomly initialised")[1]
