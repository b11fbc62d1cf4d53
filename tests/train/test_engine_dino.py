"""DINO in the loop on 2 real gloo ranks: exact resumption with its centre and teacher, the
hooks' effects in the checkpoint, and the teacher as the exported backbone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch

from ssit.backbones.extract import backbone_state_dict
from ssit.evaluate.export import export_backbone
from ssit.train import load_checkpoint
from tests.train.conftest import tiny_overrides
from tests.train.test_engine import _assert_same_tensors

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

# 48 demo samples, 2 ranks, 4 per rank and step: 6 steps per epoch, 12 in the 2-epoch run.
DINO_TINY = {"backbone.img_size": 32, "backbone.kwargs": "{depth: 1}", "method.out_dim": 64,
             "method.head_hidden_dim": 32, "method.head_bottleneck_dim": 16,
             "method.local_crops_size": 16}


def _run(run_dir: Path, shards: Path, stop_after: int | None = None) -> dict:
    return {"config": "dino_demo_cpu", "overrides": tiny_overrides(shards, **DINO_TINY),
            "run_dir": str(run_dir), "stop_after": stop_after}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_shards, run_ranks) -> dict[str, Path]:
    """An uninterrupted DINO run and the same run stopped mid-epoch and resumed."""
    base = tmp_path_factory.mktemp("dino_runs")
    full, split = base / "full", base / "split"
    run_ranks([_run(full, demo_shards), _run(split, demo_shards, stop_after=4)])
    run_ranks([_run(split, demo_shards)])
    return {"full": full, "split": split}


def _checkpoint(run: Path, step: int) -> dict:
    return load_checkpoint(run / "checkpoints" / f"checkpoint-{step:08d}.pt")


def test_resumed_dino_run_is_bit_identical_to_uninterrupted(runs):
    full, split = _checkpoint(runs["full"], 12), _checkpoint(runs["split"], 12)
    _assert_same_tensors(full["model"], split["model"], "model")
    _assert_same_tensors(full["optimizer"], split["optimizer"], "optimizer")
    assert full["pipeline_states"] == split["pipeline_states"]
    assert full["model"]["center"].abs().sum() > 0  # the centre moved and was saved


def test_hooks_act_in_the_loop(runs):
    first, last = _checkpoint(runs["full"], 6), _checkpoint(runs["full"], 12)
    key = "head.last_layer.weight_v"
    # epoch 0 (freeze_last_layer 1): the student's last layer keeps its start, which the
    # teacher's EMA then keeps too; once free it moves and the teacher lags behind
    assert torch.allclose(first["model"][f"student_{key}"], first["model"][f"teacher_{key}"],
                          atol=1e-6)
    assert not torch.allclose(last["model"][f"student_{key}"], last["model"][f"teacher_{key}"],
                              atol=1e-6)
    groups = last["optimizer"]["param_groups"]
    # the cosine weight decay of the last step (epoch 11/6 of 2) on the decayed group only
    expected = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * (11 / 6) / 2))
    assert groups[0]["weight_decay"] == pytest.approx(expected)
    assert groups[1]["weight_decay"] == 0.0
    assert last["export_branch"] == "momentum"


def test_export_and_grading_read_the_teacher_by_default(runs, tmp_path):
    path = runs["full"] / "checkpoints" / "checkpoint-00000012.pt"
    state = _checkpoint(runs["full"], 12)["model"]
    auto = backbone_state_dict(path, "auto")
    assert torch.equal(auto["pos_embed"], state["momentum_encoder.pos_embed"])
    assert not torch.equal(auto["pos_embed"], state["base_encoder.pos_embed"])
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = export_backbone(path, tmp_path / "teacher.safetensors")
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["branch"] == "momentum"
    assert torch.equal(load_file(str(out))["pos_embed"], state["momentum_encoder.pos_embed"])
    student = export_backbone(path, tmp_path / "student.safetensors", branch="query")
    assert torch.equal(load_file(str(student))["pos_embed"], state["base_encoder.pos_embed"])
    teacher = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay={"file": str(out)}, img_size=32, depth=1)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, state[f"momentum_encoder.{key}"]), key
