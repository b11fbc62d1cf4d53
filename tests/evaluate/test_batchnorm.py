"""BatchNorm statistics refreshed on the grading images (the fair floor of BatchNorm backbones)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from ssit.evaluate.batchnorm import batchnorm_layers, refresh_batchnorm
from tests.evaluate.test_job import load_launcher, tiny_config


def test_statistics_become_the_average_over_batches_of_each_batch():
    layer = nn.BatchNorm1d(2)
    layer.running_mean.fill_(100.0)
    layer.running_var.fill_(50.0)
    layer.num_batches_tracked.fill_(7)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.5, 0.25]))
    model = nn.Sequential(layer).eval()
    batches = [torch.tensor([[1.0, 0.0], [3.0, 4.0]]),
               torch.tensor([[5.0, 1.0], [7.0, 1.0], [9.0, 1.0]])]
    assert refresh_batchnorm(model, batches) == 2
    # batch means (2, 2) and (7, 1); unbiased variances (2, 8) and (4, 0): averaged per batch
    assert torch.allclose(layer.running_mean, torch.tensor([4.5, 1.5]))
    assert torch.allclose(layer.running_var, torch.tensor([3.0, 4.0]))
    assert int(layer.num_batches_tracked) == 2
    assert layer.momentum == 0.1 and not model.training and not layer.training
    assert torch.equal(layer.weight, torch.tensor([2.0, -1.0]))
    assert torch.equal(layer.bias, torch.tensor([0.5, 0.25]))


def test_only_batchnorm_runs_in_train_mode_and_nothing_else_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.9), nn.BatchNorm2d(4, momentum=0.3),
                          nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    images = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    assert refresh_batchnorm(model, images) == 3
    after = model.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == {f"{i}.{name}" for i in (2, 5)
                       for name in ("running_mean", "running_var", "num_batches_tracked")}
    # dropout stayed off: the first layer's statistics are those of the convolution's output
    convolved = [model[0](batch) for batch in images]
    expected = torch.stack([c.mean(dim=(0, 2, 3)) for c in convolved]).mean(0)
    assert torch.allclose(model[2].running_mean, expected, atol=1e-5)
    assert all(module.training for module in model.modules())
    assert model[2].momentum == 0.3 and model[5].momentum == 0.1


def test_no_batch_is_refused_and_a_model_without_batchnorm_has_no_layers():
    with pytest.raises(ValueError, match="no batch to refresh"):
        refresh_batchnorm(nn.Sequential(nn.BatchNorm1d(3)), [])
    assert batchnorm_layers(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))) == []
    assert batchnorm_layers(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False))) == []


def test_a_vit_encoder_is_graded_without_a_refresh(layouts, crop_cache, tmp_path):
    from ssit.evaluate.job import run_grading

    config = tiny_config("folder", layouts["folder"], "knn", f"data.cache_dir={crop_cache}",
                         "encoder.refresh_batchnorm=true")
    result = run_grading(config, tmp_path)
    assert result["batchnorm_refreshed"] == 0
    assert "the vit encoder has no BatchNorm layer" in (tmp_path / "grade.log").read_text()


@pytest.fixture
def grade(capsys, monkeypatch):
    """launch/grade.py's main in this process: (exit status, stderr)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main = load_launcher().main

    def run(*args: str) -> tuple[int, str]:
        status = main(list(args))
        return status, capsys.readouterr().err

    return run


def test_a_random_cnn_is_graded_with_its_statistics_refreshed(demo_shards, tmp_path, grade):
    from ssit.config import load_config
    from ssit.evaluate.config import GradeConfig
    from ssit.evaluate.encoder import create_encoder

    run = tmp_path / "run"
    status, err = grade(
        "--checkpoint", "random", "--dataset", "shards", "--data", str(demo_shards),
        "--protocol", "knn", "linear", "--cpu", "--local", "--config", "grade_tiny_cpu",
        "--output", str(run), "encoder.backbone=cnn", "encoder.arch=resnet18",
        "encoder.model_kwargs={}", "encoder.refresh_batchnorm=true", "train.epochs=1")
    assert status == 0, err[-2000:]
    for name in ("shards-knn", "shards-linear"):
        assert json.loads((run / name / "results.json").read_text())["batchnorm_refreshed"] == 20
    log = (run / "shards-linear" / "grade.log").read_text()
    batches = int(re.search(r"statistics of 20 BatchNorm layers re-estimated on (\d+) ", log)[1])
    trained = torch.load(run / "shards-linear" / "best.pt", weights_only=True)
    torch.manual_seed(0)
    config = load_config(GradeConfig, str(run / "shards-linear" / "config.yaml"))
    initial = create_encoder(config.encoder).model.state_dict()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in initial.items():
        if key.endswith(statistics):
            assert not torch.equal(trained[f"backbone.{key}"], value), key
        else:
            assert torch.equal(trained[f"backbone.{key}"], value), key
    assert batches >= 1 and int(trained["backbone.bn1.num_batches_tracked"]) == batches


def test_a_refresh_that_is_not_a_bool_is_refused_in_one_line(demo_shards, grade):
    status, err = grade("--checkpoint", "random", "--dataset", "shards", "--data",
                            str(demo_shards), "--protocol", "knn", "--dry-run",
                            "encoder.refresh_batchnorm=sometimes")
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("error: config key 'encoder.refresh_batchnorm' must be a bool")

