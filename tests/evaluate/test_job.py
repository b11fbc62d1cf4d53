from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from ssit.config import ConfigError, load_config
from ssit.evaluate.config import GradeConfig
from ssit.evaluate.job import run_grading, validate_grading_config

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
    initial = create_encoder(config.encoder).state_dict()
    assert all(torch.equal(trained[f"backbone.{key}"], value) for key, value in initial.items())


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
    with pytest.raises(ConfigError, match=r"'train.lr' must be a finite number"):
        tiny_config("folder", layouts["folder"], "finetune", f"train.lr={value}")


def grade_args(demo_shards: Path, checkpoint: Path | str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--dataset", "shards", "--data", str(demo_shards),
            "--protocol", "knn", "--dry-run", "--config", "grade_tiny_cpu"]


def test_launcher_refuses_a_garbage_checkpoint_before_submitting(demo_shards, tmp_path, launch):
    garbage = tmp_path / "checkpoint-00000010.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    status, out, err = launch(*grade_args(demo_shards, garbage))
    assert status == 2 and out == ""
    assert err.startswith(f"error: {garbage} is not a readable checkpoint: ")
    assert err.count("\n") == 1


def test_launcher_refuses_a_checkpoint_of_another_architecture(demo_shards, tmp_path, launch):
    import torch

    other = tmp_path / "base.pt"
    torch.save({"model": {"encoder.cls_token": torch.zeros(1, 1, 768)},
                "config": {"model": {"arch": "vit_base_patch16_224"}}}, other)
    status, _, err = launch(*grade_args(demo_shards, other))
    assert status == 2
    assert err == ("error: base.pt holds a vit_base_patch16_224 backbone but the grading config "
                   "uses vit_tiny_patch16_224; set encoder.arch=vit_base_patch16_224 (or --arch "
                   "vit_base_patch16_224)\n")
    empty = tmp_path / "empty.pt"
    torch.save({"step": 3}, empty)
    status, _, err = launch(*grade_args(demo_shards, empty))
    assert status == 2 and "holds no model weights" in err


def test_launcher_takes_overrides_anywhere(demo_shards, launch):
    status, _, err = launch("knn.ks=[5000]", *grade_args(demo_shards, "random"), "train.epochs=1")
    assert status == 2
    assert "k=5000 exceeds the" in err
    status, _, err = launch("train.epochs=1", *grade_args(demo_shards, "random"))
    assert status == 0, err


def test_header_check_accepts_a_training_checkpoint_with_its_checksum(tmp_path):
    import torch

    from ssit.evaluate.config import EncoderConfig
    from ssit.evaluate.encoder import EncoderError, check_encoder_checkpoint
    from ssit.train.checkpoint import save_checkpoint, verify_checksum

    path = save_checkpoint({"step": 1, "model": {"encoder.cls_token": torch.zeros(1, 1, 384)},
                            "config": {"model": {"arch": "vit_small_patch16_224"}}},
                           tmp_path, keep=1)
    assert verify_checksum(path)
    check_encoder_checkpoint(EncoderConfig(checkpoint=str(path)))
    with pytest.raises(EncoderError, match="holds a vit_small_patch16_224 backbone"):
        check_encoder_checkpoint(EncoderConfig(checkpoint=str(path), arch="vit_base_patch16_224"))


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
