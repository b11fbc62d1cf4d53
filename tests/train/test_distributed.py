"""Process-group setup from the environment, and a dead rank failing the job quickly."""

from __future__ import annotations

import pytest
import torch

from ssit.train.distributed import (
    DistributedContext,
    DistributedSetupError,
    all_gather_objects,
    any_rank,
    broadcast_object,
    init_distributed,
    mean_over_ranks,
)
from tests.train.conftest import tiny_overrides


def test_no_environment_means_one_process_without_a_group():
    ctx = init_distributed(device="cpu", env={})
    assert ctx == DistributedContext(0, 1, 0, torch.device("cpu"))
    assert ctx.is_main and not ctx.is_distributed
    assert not torch.distributed.is_initialized()


def test_world_size_one_needs_no_rendezvous():
    ctx = init_distributed(device="auto", env={"RANK": "0", "WORLD_SIZE": "1"})
    assert ctx.world_size == 1
    assert ctx.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not torch.distributed.is_initialized()


def test_single_process_collectives_are_identities():
    ctx = init_distributed(device="cpu", env={})
    assert any_rank([False, True], ctx) == [False, True]
    assert all_gather_objects({"a": 1}, ctx) == [{"a": 1}]
    assert broadcast_object("x", ctx) == "x"
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(mean_over_ranks(values, ctx), values)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' in the environment is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not within WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK=-1 is not within WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h"}, "but MASTER_PORT not set"),
    ],
)
def test_bad_environment_is_refused(env, message):
    with pytest.raises(DistributedSetupError, match=message.replace("(", r"\(")):
        init_distributed(device="cpu", env=env)


def test_unknown_device_is_refused():
    with pytest.raises(DistributedSetupError, match="device must be auto, cuda or cpu"):
        init_distributed(device="tpu", env={})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_refused():
    with pytest.raises(DistributedSetupError, match="no GPU is visible"):
        init_distributed(device="cuda", env={})


@pytest.mark.slow
@pytest.mark.ddp
def test_a_dead_rank_fails_the_other_quickly(run_ranks, demo_shards, tmp_path):
    run = {"config": "demo_tiny_cpu", "overrides": tiny_overrides(demo_shards),
           "run_dir": str(tmp_path / "run"), "die_after": 3, "die_rank": 1}
    (survivor, log, ended), (dead, _, died) = run_ranks(
        [run], expect_failure=True, timeout=180, collective_timeout=60)
    assert dead == 17
    assert survivor != 0, "the surviving rank must fail, not finish or hang"
    assert ended - died < 60, f"rank 0 took {ended - died:.0f}s to notice the dead rank"
    assert "PeerFailureError: rank 0 of 2: agreeing on the stop flags failed" in log
