"""The pre-training configuration: packaged files, defaults and full validation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ssit.backbones import ViTConfig
from ssit.config import ConfigError, load_config
from ssit.methods import SSiTConfig
from ssit.train.config import (
    REFERENCE_BATCH_SIZE,
    PretrainConfig,
    check_method_builds,
    config_fields_differing,
    resolve_precision,
    resume_locked_fields,
    validate_pretrain_config,
)
from ssit.train.schedules import scaled_learning_rate

PACKAGED = ("ssit_vits16_eyepacs", "mocov3_vits16_eyepacs", "demo_tiny_cpu", "demo_ssit_cpu",
            "simclr_resnet50_eyepacs", "gravis_resnet50_eyepacs", "simclr_demo_cpu",
            "gravis_demo_cpu", "msssl_demo_cpu", "msssl_vits16_r50_eyepacs",
            "dino_vits16_eyepacs", "dino_demo_cpu")


def _demo(shards: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, "demo_tiny_cpu", [f"data.shards={shards}", *overrides])


def _refused(cfg: PretrainConfig, world_size: int = 1) -> str:
    with pytest.raises(ConfigError) as info:
        validate_pretrain_config(cfg, world_size)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_papers():
    cfg = PretrainConfig()
    assert (cfg.backbone.name, cfg.backbone.arch, cfg.backbone.img_size) == (
        "vit", "vit_small_patch16_224", 224)
    assert cfg.method.name == "ssit" and cfg.optim.optimizer == "adamw"
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.batch_size) == (300, 40, 512)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.clip_grad) == (1e-3, 0.1, 1.0)
    assert (cfg.method.temperature, cfg.method.mask_ratio, cfg.method.saliency_threshold) == (
        0.2, 0.25, 0.5)
    assert (cfg.method.w_cl, cfg.method.w_ss, cfg.method.ss_decay, cfg.method.momentum) == (
        1.0, 10.0, False, 0.99)
    assert (cfg.checkpoint.every_minutes, cfg.checkpoint.every_epochs, cfg.checkpoint.keep) == (
        30.0, 10, 3)


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_configs_load(name):
    cfg = load_config(PretrainConfig, name)
    assert isinstance(cfg, PretrainConfig)


def test_demo_pretraining_uses_the_papers_learning_rate_rule():
    cfg = load_config(PretrainConfig, "demo_ssit_cpu")
    paper = PretrainConfig().optim
    assert cfg.optim.scale_lr and cfg.optim.lr == paper.lr
    peak = scaled_learning_rate(cfg.optim.lr, cfg.optim.batch_size, REFERENCE_BATCH_SIZE)
    assert peak == pytest.approx(6.25e-5)


@pytest.mark.parametrize(("demo", "paper"), [("simclr_demo_cpu", "simclr_resnet50_eyepacs"),
                                             ("gravis_demo_cpu", "gravis_resnet50_eyepacs"),
                                             ("msssl_demo_cpu", "msssl_vits16_r50_eyepacs"),
                                             ("dino_demo_cpu", "dino_vits16_eyepacs"),
                                             ("mae_demo_cpu", "mae_vits16_eyepacs")])
def test_each_demo_config_keeps_its_papers_learning_rate_and_rule(demo, paper):
    demo_optim = load_config(PretrainConfig, demo).optim
    paper_optim = load_config(PretrainConfig, paper).optim
    assert (demo_optim.optimizer, demo_optim.lr, demo_optim.scale_lr) == (
        paper_optim.optimizer, paper_optim.lr, paper_optim.scale_lr)


def test_paper_config_file_matches_the_defaults():
    assert load_config(PretrainConfig, "ssit_vits16_eyepacs") == PretrainConfig()


def test_mocov3_baseline_has_no_saliency():
    cfg = load_config(PretrainConfig, "mocov3_vits16_eyepacs")
    assert cfg.method.pool is None and cfg.method.segmentation is False and cfg.method.w_ss == 0
    paper = PretrainConfig()
    assert (cfg.backbone, cfg.optim) == (paper.backbone, paper.optim)


def test_demo_config_validates_on_demo_shards(demo_shards):
    for world_size in (1, 2):
        validate_pretrain_config(_demo(demo_shards), world_size)


def test_mocov3_config_validates(demo_shards):
    cfg = load_config(PretrainConfig, "mocov3_vits16_eyepacs",
                      [f"data.shards={demo_shards}", "optim.batch_size=8"])
    validate_pretrain_config(cfg, 2)


def test_overrides_reach_nested_sections(demo_shards):
    cfg = _demo(demo_shards, "optim.lr=0.5", "backbone.kwargs={depth: 2}", "method.pool=null")
    assert cfg.optim.lr == 0.5 and cfg.backbone.kwargs == {"depth": 2}
    assert cfg.method.pool is None


def test_unknown_key_is_refused_in_one_line(demo_shards):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'") as info:
        _demo(demo_shards, "optim.lrr=1")
    assert "\n" not in str(info.value)


def test_wrong_type_is_refused_in_one_line(demo_shards):
    with pytest.raises(ConfigError, match=r"optim\.batch_size' must be an int") as info:
        _demo(demo_shards, "optim.batch_size=many")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="precision' must be one of"):
        _demo(demo_shards, "precision=fp8")


def test_missing_shards_are_refused(tmp_path):
    message = _refused(_demo(tmp_path / "nowhere"))
    assert message.startswith(f"data.shards '{tmp_path / 'nowhere'}'")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .tar shards" in _refused(_demo(empty))


def test_half_written_shard_folder_is_refused(demo_shards, tmp_path):
    shards = tmp_path / "demo"
    shutil.copytree(demo_shards, shards)
    (shards / "manifest.json").unlink()  # as an interrupted `ssit shards` leaves it
    message = _refused(_demo(shards))
    assert "no manifest.json" in message and "re-run `ssit shards`" in message
    validate_pretrain_config(_demo(shards / "demo-00000[01].tar", "optim.batch_size=4"), 1)


def test_batch_not_divisible_by_ranks_is_refused(demo_shards):
    message = _refused(_demo(demo_shards, "optim.batch_size=16"), world_size=3)
    assert message == "optim.batch_size=16 is not divisible by the 3 ranks"


def test_too_few_samples_for_a_batch_is_refused(demo_shards):
    message = _refused(_demo(demo_shards, "optim.batch_size=64"), world_size=2)
    assert "too few for one batch of 32 on each of 2 ranks" in message


def test_too_few_samples_counts_only_selected_shards(demo_shards, tmp_path):
    # One shard of the demo set holds 16 samples: 8 per rank cannot fill batches of 16.
    first = sorted(Path(demo_shards).glob("*.tar"))[0]
    message = _refused(_demo(first, "optim.batch_size=32"), world_size=2)
    assert "holds 16 samples" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.mask_ratio=1.0", "'method.mask_ratio' must be in [0, 1)"),
        ("method.temperature=0", "'method.temperature' must be in [0.0001, 100], got 0"),
        ("method.temperature=.nan", "'method.temperature' must be in [0.0001, 100], got nan"),
        ("method.saliency_threshold=1.5", "'method.saliency_threshold' must be in [0, 1]"),
        ("method.momentum=1.2", "'method.momentum' must be in [0, 1]"),
        ("optim.momentum=1.0", "'optim.momentum' must be in [0, 1)"),
        ("optim.epochs=0", "'optim.epochs' must be > 0"),
        ("optim.warmup_epochs=9", "'optim.warmup_epochs' must be in [0, optim.epochs]"),
        ("optim.lr=-1", "'optim.lr' must be in [1e-09, 10], got -1"),
        ("optim.weight_decay=-0.1", "'optim.weight_decay' must be in [0, 10]"),
        ("optim.clip_grad=0", "'optim.clip_grad' must be > 0 or null"),
        ("optim.betas=[0.9]", "'optim.betas' must be two numbers in [0, 1), got [0.9]"),
        ("optim.betas=[0.9, 1.0]", "'optim.betas' must be two numbers in [0, 1)"),
        ("optim.betas=[0.9, .nan]", "'optim.betas[1]' must be a finite number, got nan"),
        ("optim.min_lr=-1e-6", "'optim.min_lr' must be in [0, peak lr"),
        ("optim.min_lr=1.0", "'optim.min_lr' must be in [0, peak lr"),
        ("optim.min_lr=.inf", "'optim.min_lr' must be a finite number, got inf"),
        ("checkpoint.keep=0", "'checkpoint.keep' must be >= 1"),
        ("checkpoint.every_minutes=-5", "'checkpoint.every_minutes' must be >= 0 or null"),
        ("log.every_steps=0", "'log.every_steps' must be >= 1"),
        ("data.num_threads=0", "'data.num_threads' must be an integer in [1, 256]"),
        ("method.w_ss=-1", "'method.w_ss' must be a finite number >= 0"),
        ("method.temperature=.inf", "'method.temperature' must be in [0.0001, 100], got inf"),
        ("seed=-1", "'seed' must be in [0, 2**63), got -1"),
        (f"seed={2**64}", f"'seed' must be in [0, 2**63), got {2**64}"),
        ("optim.lr=.nan", "'optim.lr' must be a finite number, got nan"),
        ("optim.lr=.inf", "'optim.lr' must be a finite number, got inf"),
        ("optim.warmup_epochs=nan", "'optim.warmup_epochs' must be a finite number, got nan"),
        ("checkpoint.every_minutes=-.inf", "'checkpoint.every_minutes' must be a finite number"),
        ("backbone.kwargs={depth: 2, drop_path_rate: .nan}",
         "'backbone.kwargs.drop_path_rate' must be a finite number, got nan"),
    ],
)
def test_out_of_range_values_are_refused(demo_shards, override, expected):
    assert expected in _refused(_demo(demo_shards, override))


def test_largest_seed_is_accepted(demo_shards):
    validate_pretrain_config(_demo(demo_shards, f"seed={2**63 - 1}"), 1)


def test_unknown_pool_mode_is_refused_by_the_method_section(demo_shards):
    with pytest.raises(ConfigError, match=r"config key 'method.pool' must be one of .*got 'bogus'"):
        _demo(demo_shards, "method.pool=bogus")


def _refused_at_build(cfg: PretrainConfig) -> str:
    validate_pretrain_config(cfg, 1)
    with pytest.raises(ConfigError) as info:
        check_method_builds(cfg)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_model_problems_are_refused(demo_shards):
    assert _refused(_demo(demo_shards, "backbone.arch=vit_huge_imaginary")) == (
        "config key 'backbone.arch' must be a timm architecture name (see timm.list_models()), "
        "got 'vit_huge_imaginary'")
    assert _refused(_demo(demo_shards, "backbone.arch=resnet18")) == (
        "config key 'backbone.arch' must be a timm VisionTransformer, got 'resnet18'")
    assert "input size 72 is not divisible by the patch size 16" in _refused(
        _demo(demo_shards, "backbone.img_size=72"))
    assert "not divisible by the patch size 12" in _refused(
        _demo(demo_shards, "backbone.kwargs={depth: 2, patch_size: 12}"))
    assert "depthh" in _refused_at_build(_demo(demo_shards, "backbone.kwargs={depthh: 2}"))
    check_method_builds(_demo(demo_shards))
    message = _refused(_demo(demo_shards, "method.segmentation=false"))
    assert message.endswith("method.w_ss must be 0 when method.segmentation is false")


def test_method_and_backbone_pairs_that_cannot_work_are_refused(demo_shards):
    message = _refused(_demo(demo_shards, "backbone.name=cnn", "backbone.arch=resnet18"))
    assert message.startswith("method ssit on backbone cnn 'resnet18' (img_size 64) cannot be")
    assert "needs a token backbone" in message
    assert "must be a timm CNN (for VisionTransformers use backbone.name=vit)" in _refused(
        load_config(PretrainConfig, "simclr_demo_cpu",
                    [f"data.shards={demo_shards}", "backbone.arch=vit_tiny_patch16_224"]))
    with pytest.raises(ConfigError, match=r"'method.name' must be one of dino, gravis, .*ssit"):
        _demo(demo_shards, "method.name=byol")
    with pytest.raises(ConfigError, match=r"'backbone.name' must be one of cnn, msssl_hybrid, vit"):
        _demo(demo_shards, "backbone.name=mlp")
    with pytest.raises(ConfigError, match=r"unknown config key 'method.views_per_image'"):
        _demo(demo_shards, "method.views_per_image=4")
    with pytest.raises(ConfigError, match=r"optim\.nesterov applies to optim\.optimizer=sgd"):
        validate_pretrain_config(_demo(demo_shards, "optim.nesterov=true"), 1)


def test_old_layout_is_read_as_vit_and_ssit(demo_shards, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(
        "model: {arch: vit_tiny_patch16_224, img_size: 64, encoder_kwargs: {depth: 2}, "
        "pool: null, segmentation: false}\nloss: {w_ss: 0.0}\n"
        f"data: {{shards: {demo_shards}}}\n"
    )
    cfg = load_config(PretrainConfig, old)
    assert cfg.backbone == ViTConfig(arch="vit_tiny_patch16_224", img_size=64,
                                     kwargs={"depth": 2})
    assert cfg.method == SSiTConfig(pool=None, segmentation=False, w_ss=0.0)
    with pytest.raises(ConfigError, match="mixes the old"):
        load_config(PretrainConfig, old, ["method.name=ssit"])


def test_fp16_needs_a_gpu(demo_shards):
    assert "fp16 needs a GPU" in _refused(_demo(demo_shards, "precision=fp16"))
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")


def test_world_size_must_be_positive(demo_shards):
    assert _refused(_demo(demo_shards), world_size=0) == "world size must be at least 1, got 0"


def test_shards_without_index_files_are_refused(demo_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_shards, copy)
    first_index = sorted(copy.glob("*.idx"))[0]
    first_index.unlink()
    message = _refused(_demo(copy), world_size=2)
    assert message.startswith(f"data.shards '{copy}'") and first_index.name in message


def test_shards_without_saliency_are_refused(tmp_path):
    import io
    import subprocess
    import sys

    import numpy as np
    import webdataset as wds
    from PIL import Image

    tar = tmp_path / "plain-000000.tar"
    with wds.TarWriter(str(tar)) as writer:
        for index in range(4):
            jpeg = io.BytesIO()
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(jpeg, "JPEG")
            writer.write({"__key__": f"s{index}", "jpg": jpeg.getvalue()})
    wds2idx = Path(sys.executable).parent / "wds2idx"
    subprocess.run([str(wds2idx), str(tar), str(tar.with_suffix(".idx"))], check=True,
                   capture_output=True)
    assert "no 'sal.png' component" in _refused(_demo(tmp_path))
    # A method whose views need no map trains on the same shards.
    validate_pretrain_config(load_config(PretrainConfig, "simclr_demo_cpu", [
        f"data.shards={tmp_path}", "optim.batch_size=2"]), 1)


def test_differing_fields_are_listed_by_dotted_key():
    left = {"seed": 0, "model": {"arch": "a", "img_size": 64}, "optim": {"lr": 1.0}}
    right = {"seed": 0, "model": {"arch": "b", "img_size": 64}, "optim": {"lr": 2.0}, "x": 1}
    assert config_fields_differing(left, right) == ["model.arch", "optim.lr", "x"]
    assert config_fields_differing(left, left) == []


def test_resume_may_change_everything_but_seed_model_and_batch():
    differing = ["data.num_threads", "backbone.arch", "method.mask_ratio", "method.w_ss",
                 "optim.batch_size", "optim.optimizer", "optim.lr", "seed", "methodical"]
    assert resume_locked_fields(differing) == [
        "backbone.arch", "method.mask_ratio", "optim.batch_size", "optim.optimizer", "seed"]
    assert resume_locked_fields([]) == []


def test_saved_config_without_newer_keys_takes_their_defaults(demo_shards):
    from ssit.config import config_to_dict
    from ssit.train.resume import saved_config_with_defaults

    current = config_to_dict(_demo(demo_shards))
    older = config_to_dict(_demo(demo_shards))
    del older["method"]["view1_augmentation"], older["method"]["mask_cnn_pixels"]
    assert config_fields_differing(saved_config_with_defaults(older), current) == []
    changed = config_to_dict(_demo(demo_shards, "method.view1_augmentation={blur_p: 0.5}"))
    assert config_fields_differing(saved_config_with_defaults(changed), current) == [
        "method.view1_augmentation.blur_p"]
    newer = {**current, "futuristic": 1}
    assert saved_config_with_defaults(newer) == newer


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.view1_augmentation={blur_sigma: [0.1, 0.5]}", None),
        ("method.view1_augmentation={zoom: 2}",
         "method.view1_augmentation: unknown augmentation option(s) zoom"),
        ("method.view2_augmentation={crop_scale: [0.9, 0.1]}",
         "method.view2_augmentation: crop_scale must be [low, high] with low <= high, both "
         "in (0, 1]"),
    ],
)
def test_ssit_view_overrides_are_checked_before_a_job(demo_shards, override, expected):
    with pytest.raises(ConfigError, match=r"'method\.view2_augmentation' must be a mapping"):
        _demo(demo_shards, "method.view2_augmentation=[0.5]")
    cfg = _demo(demo_shards, override)
    if expected is None:
        validate_pretrain_config(cfg, 1)
    else:
        assert expected in _refused(cfg)


@pytest.mark.parametrize("name", ["simclr_demo_cpu", "gravis_demo_cpu"])
def test_method_augmentation_overrides_are_checked_before_a_job(demo_shards, name):
    def config(*overrides: str) -> PretrainConfig:
        return load_config(PretrainConfig, name, [f"data.shards={demo_shards}",
                                                  "optim.batch_size=2", *overrides])

    validate_pretrain_config(config("method.augmentation={blur_p: 1.0}"), 1)
    assert "method.augmentation: unknown augmentation option(s) zoom" in _refused(
        config("method.augmentation={zoom: 2}"))
    assert "method.augmentation: hue must be in [0, 0.5]" in _refused(
        config("method.augmentation={hue: 0.9}"))


def _load(config: str, shards: Path, overrides: str) -> PretrainConfig:
    """``config`` with the space-separated ``key=value`` words of ``overrides``."""
    words = re.split(r" (?=[a-z_.]+=)", overrides)
    return load_config(PretrainConfig, config, [f"data.shards={shards}", *words])


@pytest.mark.parametrize(
    ("config", "override", "expected"),
    [
        ("demo_tiny_cpu", "optim.optimizer=sgd optim.nesterov=true optim.momentum=0",
         "optim.nesterov=true needs optim.momentum > 0 (got 0)"),
        ("demo_tiny_cpu", "backbone.kwargs={depth: 2, in_chans: 1}",
         "config key 'backbone.kwargs.in_chans' must be 3 (the images are RGB), got 1"),
        ("demo_tiny_cpu", "backbone.kwargs={depth: 2, global_pool: ''}",
         "config key 'backbone.kwargs.global_pool' must be a pooling name such as 'token', "
         "'avg' or 'max', not empty, got ''"),
        ("msssl_demo_cpu", "backbone.cnn_levels=[1,3,2]",
         "config key 'backbone.cnn_levels' must be a non-empty, strictly increasing list of "
         "integers >= 0, got [1, 3, 2]"),
        ("msssl_demo_cpu", "backbone.cnn_levels=[1,2,2,4]", "'backbone.cnn_levels'"),
        ("msssl_demo_cpu", "backbone.cnn_kwargs={in_chans: 4}",
         "'backbone.cnn_kwargs.in_chans' must be 3"),
        ("msssl_demo_cpu", "backbone.cnn_arch=resnet_imaginary", "'backbone.cnn_arch' must be a"),
        ("demo_tiny_cpu", "data.num_threads=100000",
         "config key 'data.num_threads' must be an integer in [1, 256] (DALI threads per rank"),
        ("demo_tiny_cpu", "optim.lr=1e-300", "'optim.lr' must be in [1e-09, 10], got 1e-300"),
        ("demo_tiny_cpu", "optim.lr=1e308", "'optim.lr' must be in [1e-09, 10], got 1e+308"),
        ("demo_tiny_cpu", "optim.lr=0", "'optim.lr' must be in [1e-09, 10], got 0.0"),
        ("demo_tiny_cpu", "method.temperature=1e-300",
         "'method.temperature' must be in [0.0001, 100], got 1e-300"),
        ("demo_tiny_cpu", "method.temperature=-0.2", "'method.temperature' must be in"),
        ("gravis_demo_cpu", "method.hardness_temperature=1e-5",
         "'method.hardness_temperature' must be in [0.0001, 100]"),
        ("simclr_demo_cpu", "method.temperature=1e308", "'method.temperature' must be in"),
        ("gravis_demo_cpu", "method.views_per_image=1000",
         "config key 'method.views_per_image' must be an integer in [2, 64], got 1000"),
        ("demo_tiny_cpu", "backbone.img_size=100000",
         "config key 'backbone.img_size' must be an integer in [16, 4096], got 100000"),
        ("gravis_demo_cpu", "backbone.img_size=4096 optim.batch_size=48 method.views_per_image=64",
         "one step on a rank holds 48 images x 64 views x 3 x 4096 x 4096"),
        ("demo_tiny_cpu", "method.view1_augmentation={rotation_degrees: abc}",
         "method.view1_augmentation: rotation_degrees must be in [0, 180], got 'abc'"),
        ("demo_tiny_cpu", "method.view2_augmentation={rotation_degrees: .nan}",
         "'method.view2_augmentation.rotation_degrees' must be a finite number, got nan"),
        ("simclr_demo_cpu", "method.augmentation={rotation_degrees: 720}",
         "method.augmentation: rotation_degrees must be in [0, 180], got 720"),
        ("gravis_demo_cpu", "method.augmentation={crop_ratio: [2, 1]}",
         "method.augmentation: crop_ratio must be [low, high] with low <= high"),
        ("simclr_demo_cpu", "method.augmentation={crop_scale: [0.2, .nan]}",
         "'method.augmentation.crop_scale[1]' must be a finite number, got nan"),
        ("simclr_demo_cpu", "method.augmentation={blur_sigma: [0, 2]}",
         "method.augmentation: blur_sigma must be [low, high] with low <= high, both in (0, 50]"),
        ("gravis_demo_cpu", "method.augmentation={jitter_p: 1.5}",
         "method.augmentation: jitter_p must be in [0, 1], got 1.5"),
        ("gravis_demo_cpu", "method.augmentation={hflip_p: yes}",
         "method.augmentation: hflip_p must be in [0, 1], got True"),
        ("demo_tiny_cpu", "method.view1_augmentation={brightness: -0.1}",
         "method.view1_augmentation: brightness must be in [0, 1), got -0.1"),
        ("demo_tiny_cpu", "method.view1_augmentation={hue: 0.6}",
         "method.view1_augmentation: hue must be in [0, 0.5], got 0.6"),
        ("demo_tiny_cpu", "method.view2_augmentation={solarize_threshold: 12.5}",
         "method.view2_augmentation: solarize_threshold must be an integer in [0, 256], got 12.5"),
        ("demo_tiny_cpu", "method.view2_augmentation={crop_scale: [0.5, 1, 1]}",
         "method.view2_augmentation: crop_scale must be [low, high]"),
    ],
)
def test_values_that_would_fail_in_the_job_are_refused(demo_shards, config, override, expected):
    assert expected in _refused(_load(config, demo_shards, override))


@pytest.mark.parametrize(
    ("config", "override"),
    [
        ("demo_tiny_cpu", "optim.optimizer=sgd optim.nesterov=true optim.momentum=0.9"),
        ("demo_tiny_cpu", "optim.optimizer=sgd optim.nesterov=false optim.momentum=0"),
        ("demo_tiny_cpu", "backbone.kwargs={depth: 2, in_chans: 3, global_pool: token}"),
        ("msssl_demo_cpu", "backbone.cnn_levels=[2,4]"),
        ("demo_tiny_cpu", "data.num_threads=256 optim.lr=1e-9 method.temperature=1e-4"),
        ("demo_tiny_cpu", "optim.lr=10 method.temperature=100"),
        ("gravis_demo_cpu", "method.views_per_image=64 method.augmentation={rotation_degrees: 0}"),
        ("demo_tiny_cpu", "method.view1_augmentation={rotation_degrees: 180, hue: 0.5, "
                          "solarize_threshold: 256, crop_scale: [1, 1], blur_sigma: [0.5, 50]}"),
        ("simclr_demo_cpu", "method.augmentation={jitter_p: 0, hflip_p: 1, crop_ratio: [1, 1]}"),
    ],
)
def test_values_at_the_edge_of_their_range_are_accepted(demo_shards, config, override):
    validate_pretrain_config(_load(config, demo_shards, override), 1)
