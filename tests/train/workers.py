"""Child processes for the training tests: one rank of a real gloo job, or a checkpoint writer.

``python -m tests.train.workers train PLAN.json`` runs, in one rank (RANK/WORLD_SIZE/MASTER_*
from the environment), the pre-training runs listed in the plan one after another in the same
process group, and rank 0 writes what each returned to ``PLAN.json.result``. A run with
``stop_after: k`` asks to stop at the k-th step boundary of that call, on the ranks listed in
``stop_ranks`` only (the others learn of it through the all-reduce); one with ``die_after: k``
makes rank ``die_rank`` exit abruptly at its k-th step boundary, as a crashed process would.

``python -m tests.train.workers save DIR MODE`` writes checkpoint 1, then starts checkpoint 2:
``blocking`` stops inside the save after the temporary file is open, ``huge`` saves a large
tensor; the test kills the process meanwhile.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch


def run_plan(plan_path: Path) -> None:
    from ssit.config import load_config
    from ssit.train import PretrainConfig, destroy_distributed, init_distributed, pretrain

    plan = json.loads(plan_path.read_text())
    ctx = init_distributed(device="cpu", timeout_s=plan.get("timeout_s", 60))
    results = []
    for run in plan["runs"]:
        cfg = load_config(PretrainConfig, run["config"], run["overrides"])
        stop_after = run.get("stop_after")
        stop_ranks = run.get("stop_ranks", [ctx.world_size - 1])
        die_after, die_rank = run.get("die_after"), run.get("die_rank", ctx.world_size - 1)
        calls = 0

        def should_stop(stop_after=stop_after, stop_ranks=stop_ranks, die_after=die_after,
                        die_rank=die_rank) -> bool:
            nonlocal calls
            calls += 1
            if die_after is not None and ctx.rank == die_rank and calls >= die_after:
                os._exit(17)
            return stop_after is not None and ctx.rank in stop_ranks and calls >= stop_after

        outcome = pretrain(cfg, run["run_dir"], ctx=ctx, should_stop=should_stop)
        results.append({
            "status": outcome.status,
            "step": outcome.step,
            "epoch": outcome.epoch,
            "checkpoint": str(outcome.checkpoint),
        })
    if ctx.rank == 0:
        Path(f"{plan_path}.result").write_text(json.dumps(results))
    destroy_distributed()


class _BlockWhilePickled:
    """Pickling this signals the test through a marker file, then waits to be killed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        Path(self.marker).write_text("saving")
        time.sleep(120)
        return (str, ("unreachable",))


def save_then_die(directory: Path, mode: str) -> None:
    from ssit.train.checkpoint import save_checkpoint

    base = {"format": 1, "epoch": 0, "world_size": 1, "optimizer": {}, "pipeline_states": [""],
            "rng_states": [{}]}
    save_checkpoint({**base, "step": 1, "model": {"w": torch.arange(4.0)}}, directory, keep=3)
    print("first saved", flush=True)
    if mode == "blocking":
        blocker = _BlockWhilePickled(str(directory.parent / "marker"))
        state = {**base, "step": 2, "model": {"w": torch.zeros(4)}, "blocker": blocker}
    else:
        state = {**base, "step": 2, "model": {"w": torch.rand(64 * 2**20)}}
    save_checkpoint(state, directory, keep=3)
    print("second saved", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "train":
        run_plan(Path(sys.argv[2]))
    elif sys.argv[1] == "save":
        save_then_die(Path(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
