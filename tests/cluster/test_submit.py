"""The pre-training launcher: everything is checked before submission, one clear line on error."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ssit.cluster.executor import LaunchError
from ssit.cluster.submit import (
    add_pretrain_arguments,
    format_summary,
    launch_pretrain,
    plan_pretrain,
)
from ssit.config import ConfigError, load_config, save_config
from ssit.data.fingerprint import shard_fingerprint
from ssit.train.checkpoint import checkpoint_path, record_world_size
from ssit.train.config import PretrainConfig
from ssit.train.run_owner import RunOwner, local_owner, write_owner
from tests.cluster.conftest import LAUNCHER, checkout_import_path, run_launcher


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pretrain_arguments(parser)
    return parser.parse_args(argv)


def tiny(shards: Path, *argv: str) -> argparse.Namespace:
    return parse("--config", "demo_tiny_cpu", *argv, f"data.shards={shards}")


@pytest.fixture(scope="module")
def launcher_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("launch_pretrain", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_plan_on_two_nodes(demo_shards: Path, tmp_path: Path) -> None:
    plan = plan_pretrain(tiny(demo_shards, "--cpu", "--nodes", "2", "--output",
                              str(tmp_path / "run")))
    assert (plan.nodes, plan.tasks_per_node, plan.gpus_per_node) == (2, 1, 0)
    assert plan.world_size == 2
    assert plan.cpus_per_task == plan.config.data.num_threads
    assert plan.config.device == "cpu"
    assert plan.run_dir == tmp_path / "run" and not plan.resume
    assert plan.log_dir == tmp_path / "run" / "submitit"


def test_gpu_plan_runs_one_task_per_gpu(demo_shards: Path) -> None:
    plan = plan_pretrain(parse("--nodes", "2", "--gpus-per-node", "4", f"data.shards={demo_shards}",
                               "optim.batch_size=8"))
    assert (plan.tasks_per_node, plan.gpus_per_node, plan.world_size) == (4, 4, 8)
    assert plan.cpus_per_task == plan.config.data.num_threads + 2
    assert plan.config.backbone.arch == "vit_small_patch16_224"
    assert plan.run_dir.parent.name == "runs" and plan.run_dir.is_absolute()


def test_relative_shards_become_absolute(demo_shards: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.chdir(demo_shards.parent)
    plan = plan_pretrain(tiny(Path(demo_shards.name), "--cpu"))
    assert plan.config.data.shards == str(demo_shards)


@pytest.mark.parametrize("argv,message", [
    (("--tasks-per-node", "2", "device=cuda"), "--tasks-per-node applies to --cpu runs"),
    (("--gpus-per-node", "0", "device=cuda"), "--gpus-per-node must be at least 1"),
    (("--cpu", "--local", "--nodes", "2"), "--local runs on this machine only"),
    (("--cpu", "--nodes", "0"), "need at least one node"),
    (("--cpu", "--tasks-per-node", "0"), "need at least one node and one task per node, got "
     "--nodes 1 and 0 tasks per node"),
    (("--cpu", "--cpus-per-task", "0"), "--cpus-per-task must be at least 1"),
])
def test_impossible_launches_are_refused(demo_shards: Path, argv: tuple[str, ...], message: str
                                         ) -> None:
    with pytest.raises(LaunchError, match=message):
        plan_pretrain(tiny(demo_shards, *argv))


@pytest.mark.parametrize("argv,message", [
    (("optim.lrr=1e-3",), r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"),
    (("optim.epochs=many",), "config key 'optim.epochs' must be an int"),
    (("--nodes", "3"), "optim.batch_size=16 is not divisible by the 3 ranks"),
    (("optim.batch_size=0",), "'optim.batch_size' must be > 0"),
    (("data.shards=/nonexistent/shards",), "data.shards '/nonexistent/shards'"),
    (("backbone.arch=no_such_vit",), "'backbone.arch' must be a timm architecture name"),
])
def test_bad_configs_are_refused(demo_shards: Path, argv: tuple[str, ...], message: str) -> None:
    args = parse("--config", "demo_tiny_cpu", "--cpu", f"data.shards={demo_shards}")
    extra = parse("--config", "demo_tiny_cpu", *argv)
    args.nodes = extra.nodes
    args.overrides += extra.overrides
    with pytest.raises(ConfigError, match=message):
        plan_pretrain(args)


def test_unknown_config_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="config 'no_such_config' not found"):
        plan_pretrain(parse("--config", "no_such_config", "--cpu"))


def saved_run(demo_shards: Path, run_dir: Path, *overrides: str, checkpoint: bool = True
              ) -> None:
    """A run folder as a run leaves it: its config and (by name) a checkpoint."""
    config = load_config(PretrainConfig, "demo_tiny_cpu",
                         [f"data.shards={demo_shards}", *overrides])
    save_config(dataclasses.replace(config, device="cpu"), run_dir / "config.yaml")
    if checkpoint:
        checkpoint_path(run_dir / "checkpoints", 10).parent.mkdir(exist_ok=True)
        checkpoint_path(run_dir / "checkpoints", 10).write_bytes(b"")


def test_same_output_resumes(demo_shards: Path, tmp_path: Path) -> None:
    saved_run(demo_shards, tmp_path)
    assert plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path))).resume
    # Settings that do not change what the checkpoints hold may change on resume.
    assert plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path),
                              "optim.lr=5e-4")).resume


def test_resuming_with_other_model_settings_is_refused(demo_shards: Path, tmp_path: Path
                                                       ) -> None:
    saved_run(demo_shards, tmp_path, "seed=3")
    with pytest.raises(LaunchError, match=f"{tmp_path} holds a run with different seed"):
        plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path)))


def test_resuming_on_another_number_of_ranks_is_refused(demo_shards: Path, tmp_path: Path
                                                        ) -> None:
    saved_run(demo_shards, tmp_path)
    record_world_size(tmp_path / "checkpoints", 2)
    with pytest.raises(LaunchError, match="written by 2 ranks; resume with nodes x tasks per "
                       "node = 2, not 1"):
        plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path)))
    plan = plan_pretrain(tiny(demo_shards, "--cpu", "--nodes", "2", "--output", str(tmp_path)))
    assert plan.resume and plan.world_size == 2


def test_resuming_on_other_shards_is_refused_before_submission(demo_shards: Path,
                                                              tmp_path: Path) -> None:
    """The job's own check (same shard fingerprint as the checkpoints) is made by the launcher,
    so the refusal comes as one line before anything is submitted."""
    run = tmp_path / "run"
    saved_run(demo_shards, run)
    other = {"digest": "f" * 64, "source": "manifest.json of /data/other"}
    record_world_size(run / "checkpoints", 1, other)
    with pytest.raises(LaunchError, match=r"cannot resume .*checkpoint-00000010.pt: it was "
                       r"trained on shards with fingerprint "
                       r"ffffffffffff \(from manifest.json of /data/other\) but data.shards now "
                       r"has fingerprint [0-9a-f]{12}.*data.allow_other_shards=true") as refused:
        plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(run)))
    assert "\n" not in str(refused.value)
    # on purpose, or on the shards the checkpoints were trained on, it resumes
    assert plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(run),
                              "data.allow_other_shards=true")).resume
    record_world_size(run / "checkpoints", 1, shard_fingerprint(demo_shards))
    assert plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(run))).resume


def test_output_that_is_a_file_is_refused(demo_shards: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(LaunchError, match="exists and is not a folder"):
        plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(target)))


def test_dry_run_prints_the_sbatch_script_and_submits_nothing(demo_shards: Path, tmp_path: Path
                                                              ) -> None:
    out = io.StringIO()
    args = tiny(demo_shards, "--cpu", "--nodes", "2", "--dry-run", "--partition", "debug",
                "--output", str(tmp_path / "run"))
    assert launch_pretrain(args, out) == 0
    text = out.getvalue()
    assert text.startswith("# sbatch script for 2 node(s) x 1 task(s) (2 ranks)")
    assert "#SBATCH --nodes=2" in text and "#SBATCH --partition=debug" in text
    assert f"submitit.core._submit {tmp_path / 'run' / 'submitit'}" in text
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_bad_config_with_one_line(demo_shards: Path, tmp_path: Path) -> None:
    done = run_launcher(["--cpu", "--nodes", "2", "--config", "demo_tiny_cpu", "--output",
                         str(tmp_path / "run"), f"data.shards={demo_shards}",
                         "optim.batch_size=5"])
    assert done.returncode == 2
    assert done.stderr == "error: optim.batch_size=5 is not divisible by the 2 ranks\n"
    assert done.stdout == ""
    assert not (tmp_path / "run").exists()


def test_cli_main_turns_errors_into_exit_code_2(launcher_module: ModuleType,
                                                capsys: pytest.CaptureFixture) -> None:
    assert launcher_module.main(["--cpu", "--config", "demo_tiny_cpu", "optim.nope=1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: unknown config key 'optim.nope'\n"


def test_summary_reports_the_loss_trend(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({
        "steps": 40, "world_size": 2, "elapsed_s": 12.5,
        "first_losses": {"loss": 16.0, "loss_cl": 1.5, "loss_ss": 1.45},
        "last_losses": {"loss": 12.0, "loss_cl": 1.6, "loss_ss": 1.05},
        "final_checkpoint": "/r/checkpoints/checkpoint-00000040.pt",
        "log": "/r/log.txt", "tensorboard": "/r/tensorboard",
    }))
    assert format_summary(tmp_path).splitlines() == [
        "pre-training completed: 40 steps on 2 rank(s), 12.5 s of training",
        "  loss         16.0000 -> 12.0000 (falling)",
        "  contrastive  1.5000 -> 1.6000 (not falling)",
        "  saliency     1.4500 -> 1.0500 (falling)",
        "final checkpoint: /r/checkpoints/checkpoint-00000040.pt",
        "log: /r/log.txt",
        "tensorboard: tensorboard --logdir /r/tensorboard",
    ]


@pytest.mark.parametrize("value", ["nan", "inf", "0"])
def test_dist_timeout_must_be_a_finite_positive_number(
    launcher_module: ModuleType, capsys: pytest.CaptureFixture, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        launcher_module.main(["--cpu", "--config", "demo_tiny_cpu", "--dist-timeout", value])
    assert exit_info.value.code == 2
    assert f"argument --dist-timeout: must be a finite positive number, got '{value}'" in \
        capsys.readouterr().err


def test_dist_timeout_given_programmatically_is_checked(demo_shards: Path) -> None:
    args = tiny(demo_shards, "--cpu")
    args.dist_timeout = float("nan")
    with pytest.raises(LaunchError, match="--dist-timeout must be a finite positive number"):
        plan_pretrain(args)


def launch_main(module: ModuleType, capsys: pytest.CaptureFixture, *argv: str
                ) -> tuple[int, str, str]:
    status = module.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_overrides_are_taken_anywhere_on_the_command_line(
    launcher_module: ModuleType, capsys: pytest.CaptureFixture, demo_shards: Path,
    tmp_path: Path
) -> None:
    status, out, err = launch_main(launcher_module, capsys, f"data.shards={demo_shards}",
                                   "--config", "demo_tiny_cpu", "seed=1", "--cpu", "--dry-run",
                                   "--output", str(tmp_path / "run"), "optim.epochs=2")
    assert status == 0, err
    assert out.startswith("# sbatch script for 1 node(s) x 1 task(s)")
    # The override after the options is applied, not dropped: a bad one is refused.
    status, _, err = launch_main(launcher_module, capsys, f"data.shards={demo_shards}",
                                 "--config", "demo_tiny_cpu", "seed=-1", "--cpu", "--dry-run")
    assert status == 2
    assert err == "error: config key 'seed' must be in [0, 2**63), got -1\n"


def test_plain_sbatch_entry_point_takes_overrides_anywhere(demo_shards: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from ssit.cluster.job import run_without_submitit

    assert run_without_submitit([f"data.shards={demo_shards}", "--config", "demo_tiny_cpu",
                                 "--output", str(tmp_path), "method.pool=bogus"]) == 2
    assert "config key 'method.pool' must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "is not UTF-8 text (byte 0x89 at offset 0)"),
    (b"optim:\n  lr: 1.0\n  lr: 2.0\n", "key 'lr' is given twice at line 3, column 3"),
    (b"optim: {lr: [1.0}\n", "is not valid YAML: expected ',' or ']', but got '}' at line 1"),
])
def test_unusable_config_files_are_one_line_and_exit_status_2(
    launcher_module: ModuleType, capsys: pytest.CaptureFixture, tmp_path: Path, content: bytes,
    message: str
) -> None:
    config = tmp_path / "mine.yaml"
    config.write_bytes(content)
    status, out, err = launch_main(launcher_module, capsys, "--cpu", "--config", str(config),
                                   "--dry-run")
    assert status == 2 and out == ""
    assert err.startswith(f"error: config {config} ") and message in err
    assert err.count("\n") == 1


def test_signal_delay_beyond_half_the_time_limit_is_refused(
    launcher_module: ModuleType, capsys: pytest.CaptureFixture, demo_shards: Path
) -> None:
    status, _, err = launch_main(launcher_module, capsys, "--cpu", "--config", "demo_tiny_cpu",
                                 f"data.shards={demo_shards}", "--time", "1", "--dry-run")
    assert status == 2
    assert err == ("error: --signal-delay 120 s is more than half of --time 1 min: the job would "
                   "be told to stop 120 s into a 60 s allocation; raise --time or lower "
                   "--signal-delay\n")
    status, _, err = launch_main(launcher_module, capsys, "--cpu", "--config", "demo_tiny_cpu",
                                 f"data.shards={demo_shards}", "--time", "4", "--dry-run")
    assert status == 0, err


def test_folder_that_lost_its_checkpoints_is_refused_unless_restart(
    demo_shards: Path, tmp_path: Path, launcher_module: ModuleType,
    capsys: pytest.CaptureFixture
) -> None:
    saved_run(demo_shards, tmp_path, "seed=3", checkpoint=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint-00000270.pt.unreadable").write_bytes(b"x")
    argv = ["--cpu", "--config", "demo_tiny_cpu", f"data.shards={demo_shards}", "--output",
            str(tmp_path), "--dry-run"]
    status, out, err = launch_main(launcher_module, capsys, *argv)
    assert status == 2 and out == ""
    assert err == (f"error: {tmp_path} has trained before (it holds config.yaml, "
                   "checkpoints/checkpoint-00000270.pt.unreadable) but has no checkpoint to "
                   "resume from; resubmit with --restart to train again from step 0, or use "
                   "another --output\n")
    # On purpose: a fresh start, which need not keep the earlier run's seed.
    plan = plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path), "--restart"))
    assert plan.restart and not plan.resume


def test_restart_is_refused_where_checkpoints_would_be_resumed(demo_shards: Path, tmp_path: Path
                                                               ) -> None:
    saved_run(demo_shards, tmp_path)
    with pytest.raises(LaunchError, match=r"--restart: .* holds 1 checkpoint\(s\) \(newest "
                       r"checkpoint-00000010\.pt\), which the run would resume from"):
        plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path), "--restart"))


def test_broken_run_config_shows_the_yaml_problem_and_position(demo_shards: Path, tmp_path: Path
                                                               ) -> None:
    (tmp_path / "config.yaml").write_text("seed: 0\nbackbone:\n  arch: [vit\n  name: vit\n")
    checkpoint_path(tmp_path / "checkpoints", 10).parent.mkdir()
    checkpoint_path(tmp_path / "checkpoints", 10).write_bytes(b"")
    with pytest.raises(LaunchError) as info:
        plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path)))
    message = str(info.value)
    assert message.startswith(f"the config of the run {tmp_path / 'config.yaml'} is not valid "
                              "YAML: expected ',' or ']', but got ':' at line 4, column 7")

@pytest.mark.slow
def test_a_failing_local_job_shows_its_exception(demo_shards: Path, tmp_path: Path) -> None:
    """The job raises inside (where it saves its config there is a folder): the launcher's
    output ends with the task's traceback and exception, not only the path of its error log."""
    run = tmp_path / "run"
    (run / "config.yaml").mkdir(parents=True)
    out = io.StringIO()
    status = launch_pretrain(tiny(demo_shards, "--cpu", "--local", "--output", str(run),
                                  "optim.epochs=1", "log.progress_bar=false",
                                  "log.image_every_steps=null"), out)
    assert status == 1
    text = out.getvalue()
    assert "the job failed" in text
    excerpt = text[text.index("_0_log.err ends with:\n"):].splitlines()
    assert 4 <= len(excerpt) <= 13 and all(line.startswith("  ") for line in excerpt[1:])
    assert "save_config" in text
    assert "IsADirectoryError" in excerpt[-1] and str(run / "config.yaml") in excerpt[-1]


def test_output_held_by_a_live_process_is_refused_before_anything_else(
    demo_shards: Path, tmp_path: Path, launcher_module: ModuleType,
    capsys: pytest.CaptureFixture
) -> None:
    """A run that trains into the folder right now (no checkpoint yet, config.yaml written):
    the launcher names its process, not the missing checkpoint; once it died (kill -9) its
    record is stale and the folder is taken over."""
    saved_run(demo_shards, tmp_path, checkpoint=False)
    holder = hold_in_another_process(tmp_path)
    argv = ["--cpu", "--config", "demo_tiny_cpu", f"data.shards={demo_shards}", "--output",
            str(tmp_path), "--dry-run"]
    try:
        status, out, err = launch_main(launcher_module, capsys, *argv)
        assert status == 2 and out == ""
        assert err == (f"error: {tmp_path} is in use by process {holder.pid} on host "
                       f"{socket.gethostname()}; wait for that run to end or stop it, or use "
                       "another --output\n")
    finally:
        holder.kill()
        holder.wait()
    status, out, err = launch_main(launcher_module, capsys, *argv, "--restart")
    assert status == 0, err


def test_stale_owner_records_are_taken_over(demo_shards: Path, tmp_path: Path) -> None:
    """A record of a dead local process, or of a SLURM job squeue does not know (finished long
    ago, or no SLURM here), does not stop a resubmission."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for owner in (local_owner(ended.pid), RunOwner("login1", 4, ("999999999",))):
        write_owner(tmp_path, owner)
        plan = plan_pretrain(tiny(demo_shards, "--cpu", "--output", str(tmp_path)))
        assert plan.run_dir == tmp_path


def hold_in_another_process(run_dir: Path) -> subprocess.Popen[str]:
    """A process that holds ``run_dir`` as a job's rank 0 does, until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ssit.train.run_owner import "
         "hold_run_folder\nwith hold_run_folder(sys.argv[1], wait_s=0):\n"
         "    print('holding', flush=True)\n    time.sleep(600)\n", str(run_dir)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **checkout_import_path()})
    assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
    return holder
