"""GPU check, parts 3 and 4: whole jobs through the launchers, preempted and graded.

Part 3 runs ``launch/pretrain.py --local`` (one GPU, or one CPU rank in smoke mode) on the
check's shards, sends the running task the preemption signal (USR2, as SLURM does through
submitit) once the log shows ``signal_after_step`` steps, and lets submitit's local controller
requeue it: the job saves a checkpoint, exits for requeueing, resumes and completes. Then the
pipeline state saved at the interruption is checked against a pipeline run from the start: the
batches after the stop must be the very ones the uninterrupted pipeline gives.

Part 4 fine-tunes the completed run's final checkpoint through ``launch/grade.py --local``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"\bstep (\d+) epoch ")
STOP_LINE = re.compile(r"stopped at step (\d+) on request")
TASK_MODULE = "submitit.core._submit"


@dataclass(frozen=True)
class JobSizes:
    pretrain_config: str
    pretrain_overrides: tuple[str, ...]
    signal_after_step: int
    grade_config: str
    grade_overrides: tuple[str, ...]
    cpu: bool
    compared_batches: int = 2


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (name) state ppid ...": the name may hold spaces, so split after its ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def task_processes(launcher_pid: int) -> list[int]:
    """Pids of submitit's task processes below the launcher (launcher -> controller -> task)."""
    tasks, frontier = [], [launcher_pid]
    while frontier:
        pid = frontier.pop()
        for child in _children(pid):
            try:
                command = (Path("/proc") / str(child) / "cmdline").read_bytes()
            except OSError:
                continue
            if TASK_MODULE.encode() in command:
                tasks.append(child)
            frontier.append(child)
    return tasks


def _last_step(log_file: Path) -> int:
    try:
        steps = STEP_LINE.findall(log_file.read_text(errors="replace"))
    except FileNotFoundError:
        return 0
    return int(steps[-1]) if steps else 0


def _launch(command: list[str], console: Path) -> subprocess.Popen:
    with open(console, "w") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _finish(proc: subprocess.Popen, deadline: float) -> int | None:
    """Wait for the launcher until ``deadline``; past it, end its whole process group."""
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def preempted_pretraining(shards: Path, root: Path, sizes: JobSizes, record: dict,
                          deadline: float) -> Path | None:
    """Part 3; returns the final checkpoint of the completed run (None if it did not complete)."""
    run_dir = root / "pretrain"
    command = [sys.executable, "launch/pretrain.py", "--local", "--time", "30",
               "--config", sizes.pretrain_config, "--output", str(run_dir)]
    command += ["--cpu", "--tasks-per-node", "1"] if sizes.cpu else ["--gpus-per-node", "1"]
    command += [f"data.shards={shards}", *sizes.pretrain_overrides]
    record["command"] = " ".join(command)
    console = root / "pretrain-console.txt"
    started = time.monotonic()
    proc = _launch(command, console)
    signalled_at = None
    while proc.poll() is None and time.monotonic() < deadline and signalled_at is None:
        step = _last_step(run_dir / "log.txt")
        tasks = task_processes(proc.pid)
        if step >= sizes.signal_after_step and tasks:
            for pid in tasks:
                os.kill(pid, signal.SIGUSR2)
            signalled_at = step
        time.sleep(0.2)
    code = _finish(proc, deadline)
    record.update({"launcher_exit": code, "signal_sent_after_step": signalled_at,
                   "seconds": time.monotonic() - started,
                   "console_tail": console.read_text(errors="replace")[-1500:]})
    log_text = (run_dir / "log.txt").read_text(errors="replace") if run_dir.exists() else ""
    stops = [int(s) for s in STOP_LINE.findall(log_text)]
    record["stopped_at_step"] = stops[0] if stops else None
    record["resumed"] = "resuming from" in log_text
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        record["passed"] = False
        return None
    summary = json.loads(summary_path.read_text())
    losses = [*summary["first_losses"].values(), *summary["last_losses"].values()]
    record.update({
        "steps": summary["steps"],
        "total_steps": summary["total_steps"],
        "training_s": summary["elapsed_s"],
        "first_losses": summary["first_losses"],
        "last_losses": summary["last_losses"],
        "losses_finite": all(math.isfinite(v) for v in losses),
    })
    if stops:
        record["pipeline_resume"] = resumed_batches_match(
            run_dir, shards, stops[0], sizes.compared_batches)
    record["passed"] = bool(
        code == 0 and stops and record["resumed"] and record["losses_finite"]
        and summary["steps"] == summary["total_steps"]
        and record.get("pipeline_resume", {}).get("passed")
    )
    return Path(summary["final_checkpoint"])


def _take(pipe: object, skip: int, count: int) -> list[list[torch.Tensor]]:
    """Batches ``skip`` .. ``skip + count - 1`` of a pipeline, across epochs, cloned."""
    taken: list[list[torch.Tensor]] = []
    seen = 0
    while len(taken) < count:
        for batch in pipe:  # type: ignore[attr-defined]
            if seen >= skip:
                taken.append([t.clone() for t in (*batch.images, *batch.maps) if t is not None])
            seen += 1
            if len(taken) == count:
                break
    return taken


def resumed_batches_match(run_dir: Path, shards: Path, stop_step: int, count: int) -> dict:
    """The pipeline restored from the stop's checkpoint against one run from the start."""
    from ssit.config import load_config
    from ssit.data import PretrainPipeline
    from ssit.train import PretrainConfig, load_checkpoint
    from ssit.train.checkpoint import checkpoint_path
    from ssit.train.engine import build_model

    cfg = load_config(PretrainConfig, run_dir / "config.yaml", [])
    state = load_checkpoint(checkpoint_path(run_dir / "checkpoints", stop_step))
    device = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    settings = dict(device=device, seed=cfg.seed, img_size=cfg.backbone.img_size,
                    views=build_model(cfg).views, num_threads=cfg.data.num_threads)
    batch = cfg.batch_size_per_rank(1)
    resumed = PretrainPipeline(shards, batch, state=state["pipeline_states"][0], **settings)
    fresh = PretrainPipeline(shards, batch, **settings)
    try:
        after_stop = _take(resumed, 0, count)
        reference = _take(fresh, stop_step, count)
    finally:
        resumed.close()
        fresh.close()
    differing = [
        (index, view) for index, (ours, theirs) in enumerate(zip(after_stop, reference,
                                                                 strict=True))
        for view, (a, b) in enumerate(zip(ours, theirs, strict=True)) if not torch.equal(a, b)
    ]
    return {"device": device, "stop_step": stop_step, "mid_epoch": stop_step % len(fresh) != 0,
            "batches_compared": count, "differing": differing, "passed": not differing}


def grading(checkpoint: Path | None, shards: Path, root: Path, sizes: JobSizes, record: dict,
            deadline: float) -> None:
    """Part 4: one fine-tuning job on the check's shards through the grading launcher."""
    out = root / "grade"
    source = str(checkpoint) if checkpoint is not None else "random"
    command = [sys.executable, "launch/grade.py", "--local", "--time", "30",
               "--checkpoint", source, "--dataset", "shards", "--data", str(shards),
               "--protocol", "finetune", "--config", sizes.grade_config, "--output", str(out)]
    command += ["--cpu"] if sizes.cpu else []
    command += list(sizes.grade_overrides)
    record.update({"command": " ".join(command), "checkpoint": source})
    console = root / "grade-console.txt"
    started = time.monotonic()
    code = _finish(_launch(command, console), deadline)
    record.update({"launcher_exit": code, "seconds": time.monotonic() - started,
                   "console_tail": console.read_text(errors="replace")[-1500:]})
    summary_path = out / "summary.json"
    results = json.loads(summary_path.read_text()) if summary_path.exists() else []
    record["results"] = results
    record["passed"] = code == 0 and bool(results)
