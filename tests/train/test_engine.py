"""The pre-training loop in real 2-rank gloo jobs: completion, outputs, exact resumption."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ssit.config import load_config
from ssit.train import PretrainConfig, list_checkpoints, load_checkpoint, pretrain
from ssit.train.checkpoint import recorded_world_size
from ssit.train.distributed import init_distributed
from tests.train.conftest import tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

# 48 demo samples, 2 ranks, 4 per rank and step: 6 steps per epoch, 12 in the 2-epoch run.
STEPS_PER_EPOCH = 6
TOTAL_STEPS = 12


def _run(run_dir: Path, shards: Path, stop_after: int | None = None, **extra: object) -> dict:
    return {"config": "demo_tiny_cpu", "overrides": tiny_overrides(shards, **extra),
            "run_dir": str(run_dir), "stop_after": stop_after}


def _assert_same_tensors(left: object, right: object, where: str = "") -> None:
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor), where
        assert left.dtype == right.dtype and left.shape == right.shape, where
        assert torch.equal(left, right), f"tensors differ at {where}"
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            _assert_same_tensors(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_same_tensors(a, b, f"{where}[{index}]")
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_shards, run_ranks) -> dict[str, object]:
    """An uninterrupted run and the same run stopped twice (mid-epoch, then at an epoch end).

    The first job runs ``full`` to the end and ``split`` until rank 1 asks to stop after step 4;
    a second job (fresh processes) resumes ``split``, stops it again after step 6 (an epoch
    boundary) and resumes it to the end within the same process group.
    """
    base = tmp_path_factory.mktemp("runs")
    full, split = base / "full", base / "split"
    first = run_ranks([_run(full, demo_shards), _run(split, demo_shards, stop_after=4)])
    second = run_ranks([_run(split, demo_shards, stop_after=2), _run(split, demo_shards)])
    return {"full": full, "split": split, "results": first + second}


def test_two_rank_run_completes_with_all_outputs(runs):
    full = runs["full"]
    result = runs["results"][0]
    assert result["status"] == "completed" and result["step"] == TOTAL_STEPS
    assert result["epoch"] == 2.0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["steps"] == TOTAL_STEPS and summary["world_size"] == 2
    assert summary["final_checkpoint"] == str(full / "checkpoints" / "checkpoint-00000012.pt")
    for losses in (summary["first_losses"], summary["last_losses"]):
        assert set(losses) == {"loss", "loss_cl", "loss_ss"}
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert summary["last_losses"]["loss"] < summary["first_losses"]["loss"]
    assert summary["last_losses"]["loss_ss"] < summary["first_losses"]["loss_ss"]
    saved = yaml.safe_load((full / "config.yaml").read_text())
    assert saved["optim"]["batch_size"] == 8 and saved["backbone"]["arch"] == "vit_tiny_patch16_224"
    assert saved["method"]["name"] == "ssit" and summary["method"] == "ssit"
    log_text = (full / "log.txt").read_text()
    assert "step 12 epoch 2.00 loss" in log_text and "saved checkpoint" in log_text
    assert list((full / "tensorboard").glob("events.out.tfevents.*"))
    # keep=2: the epoch-1 and final checkpoints remain.
    assert [p.name for p in list_checkpoints(full / "checkpoints")] == [
        "checkpoint-00000006.pt", "checkpoint-00000012.pt"]


def test_tensorboard_holds_scalars_and_pictures(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["full"] / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_cl", "train/loss_ss", "train/lr", "train/momentum",
            "train/weight_cl", "train/weight_ss", "train/samples_per_s"} <= scalars
    assert [event.step for event in events.Scalars("train/loss")] == list(range(1, 13))
    pictures = events.Images("train/view_target_prediction")
    assert [picture.step for picture in pictures] == [5, 10]
    # The run stopped twice and resumed: still one loss per step, equal to the full run's.
    split = EventAccumulator(str(runs["split"] / "tensorboard"))
    split.Reload()
    assert [event.step for event in split.Scalars("train/loss")] == list(range(1, 13))
    assert [e.value for e in split.Scalars("train/loss")] == [
        e.value for e in events.Scalars("train/loss")]


def test_checkpoint_holds_every_rank_state(runs):
    state = load_checkpoint(runs["full"] / "checkpoints" / "checkpoint-00000012.pt")
    assert state["step"] == TOTAL_STEPS and state["epoch"] == 2 and state["world_size"] == 2
    assert recorded_world_size(runs["full"] / "checkpoints") == 2
    assert len(state["pipeline_states"]) == 2 and len(state["rng_states"]) == 2
    assert state["pipeline_states"][0] != state["pipeline_states"][1]
    assert not any(key.startswith("module.") for key in state["model"])
    assert any(key.startswith("momentum_encoder.") for key in state["model"])
    assert state["config"]["optim"]["batch_size"] == 8
    assert state["optimizer"]["state"], "AdamW moments are saved"


def test_interrupted_runs_stop_where_asked(runs):
    _, stopped_mid_epoch, stopped_at_boundary, resumed = runs["results"]
    assert stopped_mid_epoch["status"] == "interrupted" and stopped_mid_epoch["step"] == 4
    assert stopped_mid_epoch["checkpoint"].endswith("checkpoint-00000004.pt")
    assert stopped_at_boundary["status"] == "interrupted"
    assert stopped_at_boundary["step"] == STEPS_PER_EPOCH
    assert resumed["status"] == "completed" and resumed["step"] == TOTAL_STEPS
    log_text = (runs["split"] / "log.txt").read_text()
    assert "resuming from" in log_text and "checkpoint-00000004.pt" in log_text


def test_resumed_run_is_bit_identical_to_uninterrupted(runs):
    full = load_checkpoint(runs["full"] / "checkpoints" / "checkpoint-00000012.pt")
    split = load_checkpoint(runs["split"] / "checkpoints" / "checkpoint-00000012.pt")
    _assert_same_tensors(full["model"], split["model"], "model")
    _assert_same_tensors(full["optimizer"], split["optimizer"], "optimizer")
    assert full["pipeline_states"] == split["pipeline_states"]
    summary_full = json.loads((runs["full"] / "summary.json").read_text())
    summary_split = json.loads((runs["split"] / "summary.json").read_text())
    assert summary_full["first_losses"] == summary_split["first_losses"]
    assert summary_full["last_losses"] == summary_split["last_losses"]


def test_resume_with_other_world_size_is_refused(runs, tmp_path, demo_shards):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(runs["full"], run_dir)
    cfg = load_config(PretrainConfig, "demo_tiny_cpu", tiny_overrides(demo_shards))
    ctx = init_distributed(device="cpu", env={})
    from ssit.train import CheckpointError

    with pytest.raises(CheckpointError, match="written by 2 ranks; resume it with 2 ranks, not 1"):
        pretrain(cfg, run_dir, ctx=ctx)


def test_resume_with_other_model_is_refused(runs, tmp_path, demo_shards):
    import shutil

    from ssit.train import CheckpointError

    run_dir = tmp_path / "copy"
    shutil.copytree(runs["full"], run_dir)
    # Rewrite the newest checkpoint as if written by one rank, to reach the config check.
    newest = run_dir / "checkpoints" / "checkpoint-00000012.pt"
    state = load_checkpoint(newest)
    state["world_size"] = 1
    torch.save(state, newest)
    cfg = load_config(PretrainConfig, "demo_tiny_cpu",
                      tiny_overrides(demo_shards, **{"method.proj_dim": 32}))
    ctx = init_distributed(device="cpu", env={})
    saved_config = (run_dir / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"method\.proj_dim differ"):
        pretrain(cfg, run_dir, ctx=ctx)
    assert (run_dir / "config.yaml").read_text() == saved_config


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_single_process_run_falls_back_from_a_corrupt_newest_checkpoint(
    demo_shards, tmp_path, one_thread, monkeypatch
):
    from ssit.train import pretrain_main

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    # One process takes all 8 samples of a step: 6 steps per epoch, checkpoints at 6 and 12.
    cfg = load_config(PretrainConfig, "demo_tiny_cpu",
                      tiny_overrides(demo_shards, **{"log.every_steps": 3}))
    run_dir = tmp_path / "run"
    outcome = pretrain_main(cfg, run_dir)
    assert (outcome.status, outcome.step) == ("completed", TOTAL_STEPS)
    final = run_dir / "checkpoints" / "checkpoint-00000012.pt"
    reference = load_checkpoint(final)

    final.write_bytes(final.read_bytes()[:4096])
    outcome = pretrain_main(cfg, run_dir)
    assert (outcome.status, outcome.step) == ("completed", TOTAL_STEPS)
    log_text = (run_dir / "log.txt").read_text()
    assert "checkpoint-00000012.pt is unreadable" in log_text
    assert "resuming from" in log_text and "checkpoint-00000006.pt (step 6)" in log_text
    assert (run_dir / "checkpoints" / "checkpoint-00000012.pt.unreadable").exists()
    # Training the last epoch again from step 6 gives the very same weights.
    _assert_same_tensors(reference["model"], load_checkpoint(final)["model"], "model")

    # A finished run started again does no further step.
    outcome = pretrain_main(cfg, run_dir)
    assert (outcome.status, outcome.step) == ("completed", TOTAL_STEPS)
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == TOTAL_STEPS


def test_a_checkpoint_of_the_old_layout_resumes(demo_shards, tmp_path, one_thread, monkeypatch):
    """Checkpoints that record the old ``model``/``loss`` config resume to the same weights."""
    from ssit.train import pretrain_main

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    cfg = load_config(PretrainConfig, "demo_tiny_cpu",
                      tiny_overrides(demo_shards, **{"log.every_steps": 3}))
    run_dir = tmp_path / "run"
    pretrain_main(cfg, run_dir)
    final = run_dir / "checkpoints" / "checkpoint-00000012.pt"
    reference = load_checkpoint(final)["model"]
    final.unlink()
    (run_dir / "summary.json").unlink()
    middle = run_dir / "checkpoints" / "checkpoint-00000006.pt"
    state = load_checkpoint(middle)
    config = state["config"]
    backbone, method = config.pop("backbone"), config.pop("method")
    loss_keys = ("w_cl", "w_ss", "ss_decay")
    config["model"] = {"arch": backbone["arch"], "img_size": backbone["img_size"],
                       "encoder_kwargs": backbone["kwargs"],
                       **{k: v for k, v in method.items() if k != "name" and k not in loss_keys}}
    config["loss"] = {k: method[k] for k in loss_keys}
    del state["method"], state["backbone"]
    torch.save(state, middle)

    outcome = pretrain_main(cfg, run_dir)
    assert (outcome.status, outcome.step) == ("completed", TOTAL_STEPS)
    assert "resuming with changed settings" not in (run_dir / "log.txt").read_text()
    _assert_same_tensors(reference, load_checkpoint(final)["model"], "model")


@pytest.mark.parametrize("config", ["simclr_demo_cpu", "gravis_demo_cpu"])
def test_each_new_method_trains_with_its_demo_config(demo_shards, tmp_path, one_thread, config):
    from ssit.train import pretrain_main

    cfg = load_config(PretrainConfig, config, tiny_overrides(demo_shards, **{
        "optim.epochs": 1, "optim.warmup_epochs": 0, "checkpoint.every_epochs": 1}))
    outcome = pretrain_main(cfg, tmp_path / config)
    assert outcome.status == "completed" and outcome.step == 6
    summary = json.loads((tmp_path / config / "summary.json").read_text())
    name = cfg.method.name
    assert summary["method"] == name and summary["backbone"] == "resnet18"
    loss_name = {"simclr": "loss_cl", "gravis": "loss_ap"}[name]
    assert set(summary["last_losses"]) == {"loss", loss_name}
    assert all(math.isfinite(v) for v in summary["last_losses"].values())
    state = load_checkpoint(tmp_path / config / "checkpoints" / "checkpoint-00000006.pt")
    assert (state["method"], state["backbone"]) == (name, "cnn")
    assert any(key.startswith("base_encoder.") for key in state["model"])


def test_run_that_lost_every_checkpoint_never_restarts_silently(
    demo_shards, tmp_path, one_thread, monkeypatch
):
    from ssit.train import pretrain_main
    from ssit.train.checkpoint import CheckpointError
    from ssit.train.run_folder import RestartRefusedError

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    cfg = load_config(PretrainConfig, "demo_tiny_cpu",
                      tiny_overrides(demo_shards, **{"log.every_steps": 3}))
    run_dir = tmp_path / "run"
    pretrain_main(cfg, run_dir)
    reference = load_checkpoint(run_dir / "checkpoints" / "checkpoint-00000012.pt")["model"]
    for path in list_checkpoints(run_dir / "checkpoints"):
        path.write_bytes(path.read_bytes()[:1000])

    # First: the reason in words, and what to do.
    with pytest.raises(CheckpointError, match=r"no readable checkpoint .* checkpoint-00000012\.pt "
                       r"is truncated .*resubmit with --restart"):
        pretrain_main(cfg, run_dir)
    # Then: no silent start from step 0 in a folder that trained before.
    with pytest.raises(RestartRefusedError, match=r"has trained before \(it holds config\.yaml, "
                       r"summary\.json, checkpoints/checkpoint-00000006\.pt\.unreadable"):
        pretrain_main(cfg, run_dir)
    assert not list_checkpoints(run_dir / "checkpoints")
    # Unless asked to: then it trains again from step 0, to the same weights.
    outcome = pretrain_main(cfg, run_dir, restart=True)
    assert (outcome.status, outcome.step) == ("completed", TOTAL_STEPS)
    restarted = load_checkpoint(run_dir / "checkpoints" / "checkpoint-00000012.pt")["model"]
    _assert_same_tensors(reference, restarted, "model")
