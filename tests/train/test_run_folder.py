"""A run folder that trained before never starts again from step 0 unless asked to."""

from __future__ import annotations

import pytest
import torch

from ssit.train.checkpoint import checkpoint_path, save_checkpoint
from ssit.train.run_folder import RestartRefusedError, check_run_folder, training_traces


def test_new_or_empty_folder_may_start(tmp_path):
    check_run_folder(tmp_path / "absent", restart=False)
    check_run_folder(tmp_path, restart=False)
    (tmp_path / "log.txt").write_text("a job that failed before training\n")
    check_run_folder(tmp_path, restart=False)


@pytest.mark.parametrize("traces", [
    ["config.yaml"],
    ["summary.json"],
    ["checkpoints/checkpoint-00000270.pt.unreadable"],
    ["config.yaml", "checkpoints/checkpoint-00000135.pt.unreadable",
     "checkpoints/checkpoint-00000270.pt.unreadable"],
])
def test_folder_that_trained_before_without_checkpoints_is_refused(tmp_path, traces):
    for name in traces:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert training_traces(tmp_path) == traces
    with pytest.raises(RestartRefusedError) as info:
        check_run_folder(tmp_path, restart=False)
    assert str(info.value) == (
        f"{tmp_path} has trained before (it holds {', '.join(traces)}) but has no checkpoint to "
        "resume from; resubmit with --restart to train again from step 0, or use another --output"
    )
    check_run_folder(tmp_path, restart=True)


def test_folder_with_a_checkpoint_resumes(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    save_checkpoint({"step": 5, "model": {"w": torch.zeros(2)}}, tmp_path / "checkpoints", keep=2)
    assert checkpoint_path(tmp_path / "checkpoints", 5).is_file()
    check_run_folder(tmp_path, restart=False)
