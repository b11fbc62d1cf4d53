from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ssit.config import ConfigError, load_config
from ssit.evaluate.config import GradeConfig
from ssit.evaluate.job import run_grading
from ssit.evaluate.validate import validate_grading_config

REPO = Path(__file__).resolve().parents[2]
TINY = ["encoder.model_kwargs={depth: 2, embed_dim: 48, num_heads: 2}", "train.epochs=1"]


def tiny_config(dataset: str, path: Path, protocol: str, *overrides: str) -> GradeConfig:
    return load_config(GradeConfig, "grade_tiny_cpu", [
        *TINY, f"data.dataset={dataset}", f"data.path={path}", f"train.protocol={protocol}",
        *overrides,
    ])


def test_finetune_writes_results_and_resumes(layouts, crop_cache, tmp_path):
    config = tiny_config("folder", layouts["folder"], "finetune", f"data.cache_dir={crop_cache}")
    result = run_grading(config, tmp_path)
    for name in ("results.json", "config.yaml", "split.csv", "grade.log", "predictions.csv",
                 "best.pt", "last.pt", "confusion.png"):
        assert (tmp_path / name).is_file(), name
    assert result["selected"] == "epoch 1" and len(result["history"]) == 1
    test = result["test"]["epoch 1"]
    assert test["num_samples"] == 10 and len(test["confusion_matrix"]) == 5
    assert Image.open(tmp_path / "confusion.png").size[0] > 300
    assert run_grading(config, tmp_path) == json.loads((tmp_path / "results.json").read_text())
    # one more epoch: the first is resumed from last.pt, not trained again
    (tmp_path / "results.json").unlink()
    longer = tiny_config("folder", layouts["folder"], "finetune", f"data.cache_dir={crop_cache}",
                         "train.epochs=2")
    resumed = run_grading(longer, tmp_path)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == result["history"][0]
    assert "resuming from" in (tmp_path / "grade.log").read_text()


def test_linear_probe_keeps_backbone_frozen(layouts, crop_cache, tmp_path):
    import torch

    from ssit.evaluate.encoder import create_encoder

    config = tiny_config("folder", layouts["folder"], "linear", f"data.cache_dir={crop_cache}")
    run_grading(config, tmp_path)
    trained = torch.load(tmp_path / "best.pt", weights_only=True)
    torch.manual_seed(config.train.seed)
    initial = create_encoder(config.encoder).model.state_dict()
    assert all(torch.equal(trained[f"backbone.{key}"], value) for key, value in initial.items())


def test_linear_probe_on_cached_features_encodes_each_image_once(layouts, crop_cache, tmp_path):
    import torch

    from ssit.evaluate.encoder import create_encoder

    config = tiny_config("folder", layouts["folder"], "linear", f"data.cache_dir={crop_cache}",
                         "linear.cache_features=true", "linear.feature_norm=true",
                         "train.epochs=2")
    result = run_grading(config, tmp_path)
    log = (tmp_path / "grade.log").read_text()
    split = {name: sum(1 for line in (tmp_path / "split.csv").read_text().splitlines()
                       if line.endswith(f",{name}")) for name in ("train", "val", "test")}
    for name, count in split.items():
        assert f"cached {count} {name} features of size 96" in log
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["test"][result["selected"]]["num_samples"] == split["test"] == 10
    assert (tmp_path / "predictions.csv").read_text().count("\n") == 11
    trained = torch.load(tmp_path / "best.pt", weights_only=True)
    torch.manual_seed(config.train.seed)
    initial = create_encoder(config.encoder).model.state_dict()
    assert all(torch.equal(trained[f"backbone.{key}"], value) for key, value in initial.items())
    assert trained["head.weight"].abs().max() > 0 and "feature_norm.running_mean" in trained
    # the stored features are what the probe resumes on: one more epoch continues from last.pt
    (tmp_path / "results.json").unlink()
    longer = tiny_config("folder", layouts["folder"], "linear", f"data.cache_dir={crop_cache}",
                         "linear.cache_features=true", "linear.feature_norm=true",
                         "train.epochs=3")
    resumed = run_grading(longer, tmp_path)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == result["history"]


def test_validation_before_submission(layouts, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        validate_grading_config(tiny_config("folder", tmp_path / "none", "knn"))
    with pytest.raises(ConfigError, match="not found"):
        validate_grading_config(tiny_config("ddr", layouts["folder"], "knn"))
    with pytest.raises(ConfigError, match=r"encoder\.checkpoint"):
        validate_grading_config(tiny_config("folder", layouts["folder"], "knn",
                                            f"encoder.checkpoint={tmp_path / 'x.pt'}"))
    with pytest.raises(ConfigError, match="not divisible"):
        validate_grading_config(tiny_config("folder", layouts["folder"], "knn",
                                            "encoder.img_size=70"))
    with pytest.raises(ConfigError, match="must be one of"):
        tiny_config("folder", layouts["folder"], "svm")
    with pytest.raises(ConfigError, match="split_fractions"):
        tiny_config("folder", layouts["folder"], "knn", "data.split_fractions=[0.5,0.5]")


def load_launcher():
    spec = importlib.util.spec_from_file_location("grade_launcher", REPO / "launch" / "grade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def launch(capsys, monkeypatch):
    """Run launch/grade.py's main in this process; return (exit status, stdout, stderr)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main = load_launcher().main

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@pytest.mark.slow
def test_launcher_local_cpu_end_to_end(demo_shards, tmp_path, launch):
    run = tmp_path / "run"
    status, out, err = launch("--checkpoint", "random", "--dataset", "shards", "--data",
                              str(demo_shards), "--protocol", "knn", "finetune", "--cpu",
                              "--local", "--config", "grade_tiny_cpu", "--output", str(run),
                              *TINY)
    assert status == 0, err[-2000:]
    assert "| shards  | knn      | random" in out
    assert "| shards  | finetune | random" in out
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["dataset"], r["protocol"]) for r in summary] == [("shards", "knn"),
                                                                ("shards", "finetune")]
    assert (run / "summary.md").read_text().startswith("| dataset")
    for name in ("shards-knn", "shards-finetune"):
        assert (run / name / "results.json").is_file()
    status, out, _ = launch("--summarize", str(run))
    assert status == 0 and out.count("| shards ") == 2


def test_launcher_dry_run_prints_sbatch_script(demo_shards, tmp_path, launch):
    status, out, err = launch("--checkpoint", "random", "--dataset", "shards", "--data",
                              str(demo_shards), "--protocol", "finetune", "knn", "--dry-run",
                              "--partition", "gpu", "--time", "90", "--output",
                              str(tmp_path / "run"))
    assert status == 0, err
    assert "#SBATCH --gpus-per-node=1" in out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --time=90" in out
    assert "job array of 2 task(s)" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "ddr", "aptos2019", "--data", "x"], "one --data per --dataset"),
        (["--dataset", "folder", "--data", "/nonexistent"], "does not exist"),
        (["--dataset", "folder", "--data", "."], "not found"),
        (["--dataset", "folder", "--data", ".", "train.epochz=3"], "unknown config key"),
    ],
)
def test_launcher_rejects_bad_input_with_one_line(args, message, launch):
    status, _, err = launch("--checkpoint", "random", "--dry-run", *args)
    assert status == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_launcher_rejects_zero_cpus_per_task(demo_shards, launch):
    status, _, err = launch("--checkpoint", "random", "--dataset", "shards", "--data",
                            str(demo_shards), "--protocol", "knn", "--dry-run",
                            "--cpus-per-task", "0")
    assert status == 2
    assert err == "error: --cpus-per-task must be at least 1, got 0\n"


def write_method_checkpoint(path: Path, backbone) -> Path:
    """A training checkpoint in the current layout holding a random ``backbone``."""
    import dataclasses

    import torch

    from ssit.backbones import create_backbone
    from tests.backbones.conftest import method_checkpoint

    torch.manual_seed(0)
    model = create_backbone(backbone)
    torch.save(method_checkpoint(model, None, dataclasses.asdict(backbone), "ssit"), path)
    return path


@pytest.fixture(scope="module")
def depth4_checkpoint(tmp_path_factory) -> Path:
    """A ViT-Ti/16 of depth 4 at input 64, as the demo pre-trains (grade_tiny_cpu says depth 2)."""
    from ssit.backbones import ViTConfig

    return write_method_checkpoint(
        tmp_path_factory.mktemp("depth4") / "checkpoint.pt",
        ViTConfig(arch="vit_tiny_patch16_224", img_size=64, kwargs={"depth": 4}))


def grade_args(*words: str):
    import argparse

    from ssit.cluster.grading import add_grade_arguments

    parser = argparse.ArgumentParser()
    add_grade_arguments(parser)
    return parser.parse_args(list(words))


def test_depth4_checkpoint_grades_with_grade_tiny_cpu(depth4_checkpoint, layouts, crop_cache,
                                                      tmp_path):
    from ssit.cluster.grading import plan_grading

    plan = plan_grading(grade_args(
        "--checkpoint", str(depth4_checkpoint), "--dataset", "folder", "--data",
        str(layouts["folder"]), "--protocol", "knn", "linear", "--cpu", "--local", "--config",
        "grade_tiny_cpu", "--output", str(tmp_path / "run"), f"data.cache_dir={crop_cache}",
        "train.epochs=1"))
    for task in plan.tasks:
        assert task.config.encoder.backbone == "vit"
        assert task.config.encoder.model_kwargs == {"depth": 4}
    for task in plan.tasks:
        result = run_grading(task.config, task.out_dir)
        assert result["backbone"] == "vit" and result["test"][result["selected"]]["num_samples"]
    assert "depth: 4" in (plan.tasks[0].out_dir / "config.yaml").read_text()


def test_architecture_mismatch_on_the_command_line_is_refused(depth4_checkpoint, layouts,
                                                              tmp_path, launch):
    common = ["--checkpoint", str(depth4_checkpoint), "--dataset", "folder", "--data",
              str(layouts["folder"]), "--protocol", "knn", "--config", "grade_tiny_cpu",
              "--output", str(tmp_path / "run")]
    for extra, message in (
        (["encoder.model_kwargs={depth: 2}"], "0 missing keys, 24 unexpected keys"),
        (["--arch", "vit_small_patch16_224"], "shape mismatches"),
        (["--arch", "resnet18"], "holds a vit backbone (vit_tiny_patch16_224), not a cnn"),
    ):
        status, out, err = launch(*common, *extra)
        assert status == 2, out
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert "checkpoint.pt holds" in err or "holds a vit" in err
        assert out == "" and not (tmp_path / "run").exists()
    status, out, err = launch(*common, "--dry-run", "encoder.model_kwargs.drop_path_rate=0.1")
    assert status == 0, err


def test_cnn_checkpoint_linear_probe_reads_the_pooled_feature(layouts, crop_cache, tmp_path):
    import torch

    from ssit.backbones import CNNConfig

    checkpoint = write_method_checkpoint(tmp_path / "simclr.pt",
                                         CNNConfig(arch="resnet18", img_size=64))
    config = tiny_config("folder", layouts["folder"], "linear", f"data.cache_dir={crop_cache}",
                         f"encoder.checkpoint={checkpoint}")
    validate_grading_config(config)
    result = run_grading(config, tmp_path / "out")
    assert result["backbone"] == "cnn" and result["arch"] == "resnet18"
    head = torch.load(tmp_path / "out" / "best.pt", weights_only=True)["head.weight"]
    assert head.shape == (1, 512)


def test_old_ssit_checkpoint_grades_by_knn(layouts, crop_cache, tmp_path):
    from tests.backbones.conftest import OLD_CHECKPOINT

    config = tiny_config("folder", layouts["folder"], "knn", f"data.cache_dir={crop_cache}",
                         f"encoder.checkpoint={OLD_CHECKPOINT}")
    validate_grading_config(config)
    result = run_grading(config, tmp_path)
    assert result["arch"] == "vit_tiny_patch16_224"
    assert result["selected"] in ("k=5", "k=10", "k=20")


def test_knn_k_beyond_the_training_set_is_refused(layouts):
    cfg = tiny_config("folder", layouts["folder"], "knn", "knn.ks=[1, 1000]")
    with pytest.raises(ConfigError, match=r"knn.ks \[1, 1000\]: k=1000 exceeds the \d+ training "
                       "images of folder"):
        validate_grading_config(cfg)
    # The same ks do not matter to fine-tuning.
    validate_grading_config(tiny_config("folder", layouts["folder"], "finetune",
                                        "knn.ks=[1, 1000]"))


@pytest.mark.parametrize("override,message", [
    ("train.seed=-1", r"train.seed must be in \[0, 2\*\*63\), got -1"),
    (f"train.seed={2**64}", r"train.seed must be in \[0, 2\*\*63\)"),
    ("data.split_seed=-3", r"data.split_seed must be in \[0, 2\*\*63\), got -3"),
])
def test_seeds_out_of_range_are_refused(layouts, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config("folder", layouts["folder"], "finetune", override)


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_non_finite_learning_rate_is_refused(layouts, value):
    with pytest.raises(ConfigError, match=r"train.lr must be in \[1e-09, 10\], got (nan|inf)"):
        tiny_config("folder", layouts["folder"], "finetune", f"train.lr={value}")


def dry_run_knn_args(demo_shards: Path, checkpoint: Path | str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--dataset", "shards", "--data", str(demo_shards),
            "--protocol", "knn", "--dry-run", "--config", "grade_tiny_cpu"]


def test_launcher_refuses_a_garbage_checkpoint_before_submitting(demo_shards, tmp_path, launch):
    garbage = tmp_path / "checkpoint-00000010.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    status, out, err = launch(*dry_run_knn_args(demo_shards, garbage))
    assert status == 2 and out == ""
    assert err == (f"error: cannot use {garbage.name}: {garbage.name} is not a checkpoint (not a "
                   "file written by torch.save)\n")
    empty = tmp_path / "checkpoint-00000015.pt"
    empty.write_bytes(b"")
    status, out, err = launch(*dry_run_knn_args(demo_shards, empty))
    assert status == 2 and out == ""
    assert err.startswith(f"error: cannot use {empty.name}: {empty.name} is empty (0 bytes)")
    assert err.count("\n") == 1
    truncated = tmp_path / "checkpoint-00000020.pt"
    truncated.write_bytes(b"PK\x03\x04" + b"\x00" * 1000)
    status, out, err = launch(*dry_run_knn_args(demo_shards, truncated))
    assert status == 2 and out == ""
    assert err.startswith(f"error: cannot use {truncated.name}: {truncated.name} is truncated")
    assert err.count("\n") == 1


def test_launcher_refuses_a_checkpoint_of_another_architecture(depth4_checkpoint, demo_shards,
                                                               tmp_path, launch):
    import torch

    status, out, err = launch(*dry_run_knn_args(demo_shards, depth4_checkpoint),
                              "--arch", "vit_base_patch16_224")
    assert status == 2 and out == ""
    assert err.startswith("error: ") and "shape mismatches" in err and err.count("\n") == 1
    empty = tmp_path / "empty.pt"
    torch.save({"step": 3}, empty)
    status, _, err = launch(*dry_run_knn_args(demo_shards, empty))
    assert status == 2 and "holds no model weights" in err


def test_launcher_takes_overrides_anywhere(demo_shards, launch):
    status, _, err = launch("knn.ks=[5000]", *dry_run_knn_args(demo_shards, "random"),
                            "train.epochs=1")
    assert status == 2
    assert "k=5000 exceeds the" in err
    status, _, err = launch("train.epochs=1", *dry_run_knn_args(demo_shards, "random"))
    assert status == 0, err


def checksummed_checkpoint(directory: Path) -> Path:
    """A training checkpoint of a depth-2 tiny ViT written by the training loop's writer."""
    import dataclasses

    import torch

    from ssit.backbones import ViTConfig, create_backbone
    from ssit.train.checkpoint import save_checkpoint
    from tests.backbones.conftest import method_checkpoint

    backbone = ViTConfig(arch="vit_tiny_patch16_224", img_size=64, kwargs={"depth": 2})
    torch.manual_seed(0)
    state = method_checkpoint(create_backbone(backbone), None, dataclasses.asdict(backbone),
                              "ssit")
    return save_checkpoint(state, directory, keep=1)


def test_grading_reads_a_training_checkpoint_with_its_checksum(tmp_path):
    from ssit.evaluate.architecture import (
        EncoderError,
        check_encoder,
        load_encoder_source,
        resolve_encoder,
    )
    from ssit.evaluate.config import EncoderConfig
    from ssit.train.checkpoint import verify_checksum

    path = checksummed_checkpoint(tmp_path)
    assert verify_checksum(path)
    cfg = EncoderConfig(checkpoint=str(path), img_size=64)
    source = load_encoder_source(cfg.checkpoint)
    check_encoder(cfg, source)
    assert resolve_encoder(cfg, source).model_kwargs == {"depth": 2}
    mismatched = resolve_encoder(EncoderConfig(checkpoint=str(path), img_size=64,
                                               arch="vit_small_patch16_224"), source, {"arch"})
    with pytest.raises(EncoderError, match="shape mismatches"):
        check_encoder(mismatched, source)
    # One flipped byte in the middle: refused in words, before torch reads it.
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EncoderError, match=rf"cannot use {path.name}: {path.name} is damaged: "
                       "its contents do not match the checksum"):
        load_encoder_source(str(path))


@pytest.mark.parametrize("content,message", [
    (b"\xff\xd8\xff\xe0JFIF", "is not UTF-8 text (byte 0xff at offset 0)"),
    (b"train:\n  epochs: 1\n  epochs: 2\n", "key 'epochs' is given twice at line 3, column 3"),
])
def test_launcher_refuses_an_unusable_config_file_in_one_line(demo_shards, tmp_path, launch,
                                                              content, message):
    config = tmp_path / "grade.yaml"
    config.write_bytes(content)
    status, out, err = launch("--checkpoint", "random", "--dataset", "shards", "--data",
                              str(demo_shards), "--dry-run", "--config", str(config))
    assert status == 2 and out == ""
    assert err.startswith(f"error: config {config} ") and message in err
    assert err.count("\n") == 1

def test_launcher_shows_why_a_job_failed(demo_shards, tmp_path, launch):
    """A job that raises inside (the JPEG headers of its first shard are zeroed): the launcher
    prints the job's traceback and exception, not only the path of its error log."""
    broken = tmp_path / "broken"
    shutil.copytree(demo_shards, broken)
    first = sorted(broken.glob("*.tar"))[0]
    data = first.read_bytes()
    assert b"\xff\xd8\xff" in data
    first.write_bytes(data.replace(b"\xff\xd8\xff", bytes(3)))
    status, out, _ = launch("--checkpoint", "random", "--dataset", "shards", "--data",
                            str(broken), "--protocol", "knn", "--cpu", "--local", "--config",
                            "grade_tiny_cpu", "--output", str(tmp_path / "run"), *TINY)
    assert status == 1
    assert "(shards-knn) failed" in out
    excerpt = out[out.index("_0_log.err ends with:\n"):].splitlines()
    assert 2 <= len(excerpt) <= 13 and all(line.startswith("  ") for line in excerpt[1:])
    assert "Error" in excerpt[-1]
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("name", ["grade_paper", "grade_tiny_cpu", "grade_demo_cpu",
                                  "semisup_eyepacs"])
def test_packaged_grading_configs_load(name):
    config = load_config(GradeConfig, name)
    assert sum(config.data.split_fractions) == pytest.approx(1.0)
