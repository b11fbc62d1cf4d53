from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssit.config import ConfigError, load_config
from ssit.evaluate.config import GradeConfig
from ssit.evaluate.job import run_grading
from ssit.evaluate.semisup import pseudo_labels, teacher_targets
from ssit.evaluate.summary import summary_table
from ssit.evaluate.validate import validate_grading_config

TINY = ["encoder.model_kwargs={depth: 1, embed_dim: 48, num_heads: 2}", "encoder.img_size=32",
        "semisup.labelled_size=8", "semisup.student_arch=test_resnet",
        "semisup.teacher.epochs=1", "semisup.student.epochs=1", "semisup.student_finetune.epochs=1"]


def semisup_config(layouts, crop_cache, *overrides: str) -> GradeConfig:
    return load_config(GradeConfig, "grade_tiny_cpu", [
        *TINY, "data.dataset=folder", f"data.path={layouts['folder']}", "train.protocol=semisup",
        f"data.cache_dir={crop_cache}", *overrides])


def test_hard_and_soft_pseudo_labels() -> None:
    probabilities = torch.tensor([0.1, 0.5, 0.51, 0.9])
    assert pseudo_labels(probabilities, "hard").tolist() == [0, 0, 1, 1]
    assert pseudo_labels(probabilities, "hard", 0.2).tolist() == [0, 1, 1, 1]
    assert torch.equal(pseudo_labels(probabilities, "soft"), probabilities)
    with pytest.raises(ValueError, match="hard or soft"):
        pseudo_labels(probabilities, "fuzzy")


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
def test_teacher_labels_the_batch_it_is_given(batchnorm: str) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(12),
                                  torch.nn.Linear(12, 1), torch.nn.Flatten(0))
    images = torch.randn(6, 3, 2, 2)
    before = teacher[1].running_mean.clone()
    soft = teacher_targets(teacher, "soft", 0.5, batchnorm)(images, torch.zeros(6))
    hard = teacher_targets(teacher, "hard", 0.5, batchnorm)(images, torch.zeros(6))
    assert torch.equal(hard, (soft > 0.5).float()) and soft.requires_grad is False
    assert torch.equal(teacher[1].running_mean, before) == (batchnorm == "eval")


def test_semisup_end_to_end_with_external_test_set_and_resume(layouts, crop_cache,
                                                              tmp_path: Path) -> None:
    config = semisup_config(layouts, crop_cache,
                            f"data.test_sets={{messidor2: {layouts['messidor2']}}}")
    result = run_grading(config, tmp_path)
    for name in ("labelled.csv", "teacher/final.pt", "student/final.pt",
                 "student_finetune/final.pt", "roc_test.png", "roc_messidor2.png",
                 "predictions_test.csv", "predictions_messidor2.csv", "results.json"):
        assert (tmp_path / name).is_file(), name
    assert result["labelled"]["size"] == 8 and result["labelled"]["referable"] == 4
    assert result["student_model"] == {"arch": "test_resnet", "weights": "random initialisation"}
    for role in ("teacher", "student"):
        for split in ("val", "test", "messidor2"):
            assert 0 <= result[role][split]["auc"] <= 1
        assert result[role]["messidor2"]["num_samples"] == 50
    table = summary_table([result])
    assert result["test_sets"] == ["messidor2"]
    assert len(table.splitlines()) == 2 + 4  # teacher and student on test and on messidor2
    assert table.count("messidor2") == 2 and table.count("| teacher") == 2

    # a finished stage is not run again: interrupt the student fine-tune after its epoch 1
    stamps = {stage: (tmp_path / stage / "final.pt").stat().st_mtime_ns
              for stage in ("teacher", "student")}
    (tmp_path / "results.json").unlink()
    (tmp_path / "student_finetune" / "final.pt").unlink()
    longer = semisup_config(layouts, crop_cache, "semisup.student_finetune.epochs=2",
                            f"data.test_sets={{messidor2: {layouts['messidor2']}}}")
    resumed = run_grading(longer, tmp_path)
    log = (tmp_path / "grade.log").read_text()
    assert "teacher: finished earlier" in log
    assert "student fine-tune: resuming from" in log and "after epoch 1" in log
    assert [h["epoch"] for h in resumed["history"]["student_finetune"]] == [1, 2]
    assert resumed["history"]["student_finetune"][0] == result["history"]["student_finetune"][0]
    assert stamps == {stage: (tmp_path / stage / "final.pt").stat().st_mtime_ns
                      for stage in ("teacher", "student")}
    assert json.loads((tmp_path / "results.json").read_text())["labelled"]["size"] == 8


def test_semisup_validation_before_submission(layouts, crop_cache, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="student_weights"):
        validate_grading_config(semisup_config(layouts, crop_cache,
                                               f"semisup.student_weights={tmp_path / 'w.pth'}"))
    with pytest.raises(ConfigError, match="test set messidor2"):
        validate_grading_config(semisup_config(
            layouts, crop_cache, f"data.test_sets={{messidor2: {tmp_path / 'none'}}}"))
    with pytest.raises(ConfigError, match="exactly one"):
        semisup_config(layouts, crop_cache, "semisup.labelled_fraction=0.1")
    with pytest.raises(ConfigError, match="test_sets"):
        semisup_config(layouts, crop_cache, "data.test_sets={kaggle: /x}")


def plan(*words: str):
    import argparse

    from ssit.cluster.grading import add_grade_arguments, plan_grading

    parser = argparse.ArgumentParser()
    add_grade_arguments(parser)
    return plan_grading(parser.parse_args(list(words)))


def test_launcher_plans_external_test_sets_for_every_protocol(layouts, tmp_path: Path) -> None:
    from ssit.cluster.executor import LaunchError

    common = ("--checkpoint", "random", "--dataset", "folder", "--data", str(layouts["folder"]),
              "--config", "grade_tiny_cpu", "--output", str(tmp_path / "run"))
    planned = plan(*common, "--protocol", "knn", "semisup", "--test-dataset", "messidor2", "ddr",
                   "--test-data", str(layouts["messidor2"]), str(layouts["ddr"]),
                   "semisup.labelled_size=8")
    assert [task.name for task in planned.tasks] == ["folder-knn", "folder-semisup"]
    for task in planned.tasks:
        assert task.config.data.test_sets == {"messidor2": str(layouts["messidor2"]),
                                              "ddr": str(layouts["ddr"])}
    assert planned.tasks[1].config.semisup.labelled_size == 8
    with pytest.raises(LaunchError, match="one --test-data per --test-dataset"):
        plan(*common, "--test-dataset", "messidor2")
    with pytest.raises(LaunchError, match="is not one of"):
        plan(*common, "--test-dataset", "kaggle", "--test-data", str(tmp_path))
    with pytest.raises(ConfigError, match="not found"):
        plan(*common, "--test-dataset", "ddr", "--test-data", str(layouts["folder"]))
