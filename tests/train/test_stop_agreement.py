"""Stopping by agreement: flags reduced on the host, every rank stops after the same step.

The flags never touch the training device: the reduction runs on CPU tensors over a gloo group,
so a GPU job's host process does not wait for the GPU at every step. A context whose device is
``meta`` (where no tensor can be reduced) proves it on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssit.train import list_checkpoints, load_checkpoint
from ssit.train.distributed import DistributedContext, any_rank
from tests.gloo_ranks import run_on_ranks
from tests.train.conftest import tiny_overrides

WORLD = 2
STOP_CALL = 3  # rank 1 raises its flag from this call on


def flag_work(rank: int) -> list[list[bool]]:
    """The agreed flags of five step boundaries; rank 1 asks to stop from ``STOP_CALL`` on."""
    ctx = DistributedContext(rank, WORLD, rank, torch.device("meta"))
    seen = []
    for call in range(1, 6):
        stop = rank == 1 and call >= STOP_CALL
        clock = rank == 0 and call == 2  # only rank 0 keeps the checkpoint clock
        seen.append(any_rank([stop, clock], ctx))
    return seen


def test_single_process_flags_are_its_own() -> None:
    ctx = DistributedContext(0, 1, 0, torch.device("meta"))
    assert any_rank([True, False, 1], ctx) == [True, False, True]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_ranks_agree_on_host_flags_at_the_same_call(tmp_path: Path) -> None:
    seen = run_on_ranks(flag_work, tmp_path, WORLD)
    expected = [[False, False], [False, True], [True, False], [True, False], [True, False]]
    assert seen == [expected, expected]


# 48 demo samples, 2 ranks, 4 per rank and step: 6 steps in the one epoch.
STEPS = 6
STOP_AFTER = 4


def _run(run_dir: Path, shards: Path, **settings: object) -> dict:
    overrides = tiny_overrides(shards, **{"optim.epochs": 1, "optim.warmup_epochs": 0.5,
                                          **settings.pop("overrides", {})})
    return {"config": "demo_tiny_cpu", "overrides": overrides, "run_dir": str(run_dir),
            **settings}


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory, demo_shards, run_ranks) -> dict[str, object]:
    """An uninterrupted run; the same run stopped on rank 0's request, then resumed.

    The resumed part runs with a checkpoint clock that is due at every step on rank 0 only, so
    every step also tests the agreement on rank 0's clock.
    """
    base = tmp_path_factory.mktemp("stop")
    full, split = base / "full", base / "split"
    first = run_ranks([
        _run(full, demo_shards),
        _run(split, demo_shards, stop_after=STOP_AFTER, stop_ranks=[0]),
    ])
    second = run_ranks([
        _run(split, demo_shards, overrides={"checkpoint.every_minutes": 1e-9,
                                            "checkpoint.keep": 3}),
    ])
    return {"full": full, "split": split, "results": first + second}


@pytest.mark.slow
@pytest.mark.ddp
def test_a_stop_asked_by_one_rank_ends_every_rank_after_that_step(stopped_runs) -> None:
    _, stopped, resumed = stopped_runs["results"]
    assert (stopped["status"], stopped["step"]) == ("interrupted", STOP_AFTER)
    checkpoint = load_checkpoint(Path(stopped["checkpoint"]))
    assert checkpoint["step"] == STOP_AFTER and len(checkpoint["pipeline_states"]) == WORLD
    assert (resumed["status"], resumed["step"]) == ("completed", STEPS)


@pytest.mark.slow
@pytest.mark.ddp
def test_rank_zero_clock_saves_on_every_rank_at_every_step(stopped_runs) -> None:
    names = [p.name for p in list_checkpoints(stopped_runs["split"] / "checkpoints")]
    assert names == [f"checkpoint-{step:08d}.pt" for step in (STOP_AFTER, 5, STEPS)]


@pytest.mark.slow
@pytest.mark.ddp
def test_the_stopped_and_resumed_run_ends_with_the_uninterrupted_weights(stopped_runs) -> None:
    full = load_checkpoint(stopped_runs["full"] / "checkpoints" / f"checkpoint-{STEPS:08d}.pt")
    split = load_checkpoint(stopped_runs["split"] / "checkpoints" / f"checkpoint-{STEPS:08d}.pt")
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, split["model"][name]), name
    assert full["pipeline_states"] == split["pipeline_states"]
    assert full["optimizer"]["state"].keys() == split["optimizer"]["state"].keys()
    for key, state in full["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(
                split["optimizer"]["state"][key][name])), (key, name)
