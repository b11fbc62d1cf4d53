"""Process-group setup from torchrun-style environment variables, and the few collectives we use.

A job with ``WORLD_SIZE`` > 1 joins a process group (NCCL on GPU, gloo on CPU) at
``MASTER_ADDR:MASTER_PORT``; without those variables it runs as a single process with no group.
The group's timeout is short (:data:`DEFAULT_TIMEOUT_S`) so that a dead rank makes every other
rank fail within a couple of minutes instead of hanging.

The per-step stop agreement (:func:`any_rank`) reduces a small CPU tensor over a gloo group (the
job's own group when it is gloo, a gloo group beside NCCL otherwise), so the training loop never
copies a flag to the GPU and waits for it to come back: the host keeps queueing work.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ssit.train.config import DEFAULT_TIMEOUT_S
from ssit.train.gpu_settings import enable_tf32

log = logging.getLogger(__name__)

# The group for the per-step flags: (the default group it was made for, the gloo group, or None
# when the default group is gloo itself).
_HOST_GROUP: tuple[Any, Any] | None = None


class DistributedSetupError(RuntimeError):
    """The environment does not describe a usable process group; the message is one line."""


class PeerFailureError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout or lost its connection."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job: global rank, job size, rank on its node, device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the rank that writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group with more than one rank is active."""
        return self.world_size > 1


@contextmanager
def _collective(ctx: DistributedContext, what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as error:
        text = str(error).strip().splitlines()
        raise PeerFailureError(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed (another rank has probably "
            f"died or hung): {text[0] if text else type(error).__name__}"
        ) from error


def init_distributed(
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: str = "auto",
    env: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Join the process group described by the environment and pick this rank's device.

    ``device`` is ``"auto"`` (the GPU numbered ``LOCAL_RANK`` if CUDA exists, else the CPU),
    ``"cuda"`` or ``"cpu"``. ``backend`` defaults to NCCL on GPU and gloo on CPU. A group that
    is already initialised is reused. On a GPU, float32 matmuls may use TF32 from here on.
    """
    env = os.environ if env is None else env
    world_size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} is not within WORLD_SIZE={world_size}")
    torch_device = _select_device(device, local_rank)
    if torch_device.type == "cuda":
        enable_tf32()
    if dist.is_available() and dist.is_initialized():
        _host_group(datetime.timedelta(seconds=timeout_s))
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, torch_device)
    if world_size == 1:
        return DistributedContext(0, 1, 0, torch_device)
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if not env.get(key)]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} but {' and '.join(missing)} not set in the environment"
        )
    backend = backend or ("nccl" if torch_device.type == "cuda" else "gloo")
    log.info(
        "rank %d/%d joins %s group at %s:%s on %s", rank, world_size, backend,
        env["MASTER_ADDR"], env["MASTER_PORT"], torch_device,
    )
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    _host_group(timeout)  # collective: every rank creates it now, with the job's timeout
    return DistributedContext(rank, world_size, local_rank, torch_device)


def destroy_distributed() -> None:
    """Leave the process group, if one is active."""
    global _HOST_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None


def _host_group(timeout: datetime.timedelta | None = None) -> Any:
    """The group that reduces CPU tensors: the job's group if it is gloo, else a gloo group.

    Creating a group is collective; every rank reaches the first call at the same point (in
    :func:`init_distributed`, or at the first :func:`any_rank` of a group made elsewhere).
    """
    global _HOST_GROUP
    default = dist.group.WORLD
    if _HOST_GROUP is not None and _HOST_GROUP[0] is default:
        return _HOST_GROUP[1]
    backend = dist.get_backend()
    if backend == "gloo" or "cpu:gloo" in backend.split(","):
        group = None
    else:
        group = dist.new_group(
            backend="gloo",
            timeout=timeout or datetime.timedelta(seconds=DEFAULT_TIMEOUT_S),
        )
        log.info("rank %d: gloo group created for the per-step flags", dist.get_rank())
    _HOST_GROUP = (default, group)
    return group


def any_rank(flags: Sequence[bool], ctx: DistributedContext) -> list[bool]:
    """For each flag, whether it is set on at least one rank (one MAX all-reduce for all).

    The flags travel as a CPU tensor over a gloo group: no device memory, no wait for the GPU's
    queue of work, only the ranks' host processes meeting at the same point.
    """
    if not ctx.is_distributed:
        return [bool(flag) for flag in flags]
    values = torch.tensor([int(bool(flag)) for flag in flags], dtype=torch.int32)
    with _collective(ctx, "agreeing on the stop flags"):
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=_host_group())
    return [bool(value) for value in values.tolist()]


def all_gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (picklable objects)."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    with _collective(ctx, "gathering per-rank state"):
        dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.is_distributed:
        return obj
    holder = [obj if ctx.is_main else None]
    with _collective(ctx, "broadcasting from rank 0"):
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


def mean_over_ranks(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The element-wise mean of ``values`` across ranks."""
    if not ctx.is_distributed:
        return values
    values = values.clone()
    with _collective(ctx, "averaging over ranks"):
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / ctx.world_size


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank gets here."""
    if not ctx.is_distributed:
        return
    with _collective(ctx, "waiting at a barrier"):
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def _select_device(device: str, local_rank: int) -> torch.device:
    if device not in ("auto", "cuda", "cpu"):
        raise DistributedSetupError(f"device must be auto, cuda or cpu, got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedSetupError("device=cuda was requested but no GPU is visible")
    if local_rank >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedSetupError(f"{key}={raw!r} in the environment is not an integer") from None


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedContext",
    "DistributedSetupError",
    "PeerFailureError",
    "all_gather_objects",
    "any_rank",
    "barrier",
    "broadcast_object",
    "destroy_distributed",
    "init_distributed",
    "mean_over_ranks",
]
