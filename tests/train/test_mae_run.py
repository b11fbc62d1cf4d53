"""MAE through the loop in real 2-rank gloo jobs: exact resumption, its optimiser, the fixed
position embedding, then export to timm and grading of the checkpoint with the launcher."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch

from ssit.backbones import extract_backbone, read_checkpoint, saved_backbone_config
from ssit.backbones.pos_embed import sincos_pos_embed_2d
from ssit.evaluate.export import export_backbone
from ssit.train import load_checkpoint
from tests.train.conftest import REPO_ROOT, tiny_overrides
from tests.train.test_engine import _assert_same_tensors

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

# 48 demo samples, 2 ranks, 4 per rank and step: 6 steps per epoch, 12 in the 2-epoch run.
TOTAL_STEPS = 12
# The demo's ViT at 64 px (a 4x4 grid, 4 patches seen), its rate unscaled so the weights move.
MAE_OVERRIDES = {"backbone.img_size": 64, "optim.scale_lr": "false"}


def _run(run_dir: Path, shards: Path, stop_after: int | None = None) -> dict:
    return {"config": "mae_demo_cpu", "overrides": tiny_overrides(shards, **MAE_OVERRIDES),
            "run_dir": str(run_dir), "stop_after": stop_after}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_shards, run_ranks) -> dict[str, Path]:
    """An uninterrupted MAE run and the same run stopped after step 4, resumed in a new job."""
    base = tmp_path_factory.mktemp("mae-runs")
    full, split = base / "full", base / "split"
    run_ranks([_run(full, demo_shards), _run(split, demo_shards, stop_after=4)])
    run_ranks([_run(split, demo_shards)])
    return {"full": full, "split": split}


def _final(run: Path) -> Path:
    return run / "checkpoints" / f"checkpoint-{TOTAL_STEPS:08d}.pt"


def test_resumed_mae_run_is_bit_identical_to_uninterrupted(runs):
    full, split = load_checkpoint(_final(runs["full"])), load_checkpoint(_final(runs["split"]))
    assert "resuming from" in (runs["split"] / "log.txt").read_text()
    _assert_same_tensors(full["model"], split["model"], "model")
    _assert_same_tensors(full["optimizer"], split["optimizer"], "optimizer")
    assert full["pipeline_states"] == split["pipeline_states"]
    summary_full = json.loads((runs["full"] / "summary.json").read_text())
    summary_split = json.loads((runs["split"] / "summary.json").read_text())
    assert summary_full["last_losses"] == summary_split["last_losses"]
    assert set(summary_full["last_losses"]) == {"loss", "loss_rec"}
    assert summary_full["method"] == "mae"


def test_mae_trains_with_its_optimiser_and_fixed_position_embeddings(runs):
    state = load_checkpoint(_final(runs["full"]))
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all(tuple(g["betas"]) == (0.9, 0.95) for g in groups)
    model = state["model"]
    # the fixed tables are untouched by 12 steps; the trained tokens have moved from 0
    torch.testing.assert_close(model["base_encoder.pos_embed"][0],
                               sincos_pos_embed_2d(192, 4, cls_token=True), rtol=0, atol=0)
    torch.testing.assert_close(model["decoder_pos_embed"][0],
                               sincos_pos_embed_2d(128, 4, cls_token=True), rtol=0, atol=0)
    first = load_checkpoint(runs["full"] / "checkpoints" / "checkpoint-00000006.pt")["model"]
    assert not torch.equal(first["mask_token"], model["mask_token"])


def test_mae_checkpoint_exports_to_a_file_timm_loads(runs, tmp_path):
    checkpoint = _final(runs["full"])
    out = export_backbone(checkpoint, tmp_path / "mae.safetensors")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay={"file": str(out)}, img_size=64, depth=4)
    trained = load_checkpoint(checkpoint)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[f"base_encoder.{key}"]), key
    # For fine-tuning the position embedding is an ordinary, trainable parameter again.
    assert model.pos_embed.requires_grad
    loaded = read_checkpoint(checkpoint)
    grading = extract_backbone(loaded, saved_backbone_config(loaded))
    assert grading.pos_embed.requires_grad
    torch.testing.assert_close(grading.pos_embed, trained["base_encoder.pos_embed"])


def test_mae_checkpoint_grades_with_the_launcher(runs, tmp_path, demo_shards, capsys,
                                                 monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = importlib.util.spec_from_file_location("grade_launcher",
                                                  REPO_ROOT / "launch" / "grade.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    status = launcher.main([
        "--checkpoint", str(_final(runs["full"])), "--dataset", "shards", "--data",
        str(demo_shards), "--protocol", "knn", "linear", "finetune", "--cpu", "--local",
        "--config", "grade_tiny_cpu", "--output", str(tmp_path / "grade"), "train.epochs=1",
        "linear.feature_norm=true",
    ])
    assert status == 0, capsys.readouterr().err[-2000:]
    summary = json.loads((tmp_path / "grade" / "summary.json").read_text())
    assert [r["protocol"] for r in summary] == ["knn", "linear", "finetune"]
    assert all((r["arch"], r["img_size"]) == ("vit_tiny_patch16_224", 64) for r in summary)
