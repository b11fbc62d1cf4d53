"""Run a test function on several real gloo ranks and collect what each rank returns."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on the loopback that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(
    rank: int, function: Callable[[int], Any], world: int, port: int, out: Path, threads: int
) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.save(function(rank), out / f"rank{rank}.pt")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # The result is on disk and every rank got here. Leave without tearing the group down:
    # gloo's teardown at the end of a short run sometimes aborts the process ("terminate called
    # without an active exception"), which would fail a test whose work succeeded.
    os._exit(0)


def run_on_ranks(
    function: Callable[[int], Any], out: Path, world: int = 2, threads: int = 1
) -> list[Any]:
    """``function(rank)`` in ``world`` processes of one gloo group; the results by rank.

    ``function`` must be a module-level function (it is pickled by name) and its result
    picklable by ``torch.save``.
    """
    mp.spawn(_rank_main, args=(function, world, free_port(), out, threads), nprocs=world,
             join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]
