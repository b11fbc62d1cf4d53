"""``ssit export``: any backbone of any method's checkpoint, loadable by timm alone."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from ssit.backbones import CheckpointError, CNNConfig, ViTConfig, create_backbone, extract_backbone
from ssit.evaluate.config import EncoderConfig
from ssit.evaluate.encoder import create_encoder
from ssit.evaluate.export import ExportError, add_export_arguments, export_backbone, run_export
from tests.backbones.conftest import OLD_CHECKPOINT, method_checkpoint, perturbed

VIT = ViTConfig(arch="vit_tiny_patch16_224", img_size=64,
                kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2})
CNN = CNNConfig(arch="resnet18", img_size=32, kwargs={})


def write_checkpoint(directory: Path, backbone, momentum: bool, method: str) -> Path:
    torch.manual_seed(0)
    query = perturbed(create_backbone(backbone), 0.01)
    other = perturbed(create_backbone(backbone), 0.1) if momentum else None
    path = directory / f"{backbone.name}-checkpoint-00000010.pt"
    torch.save(method_checkpoint(query, other, dataclasses.asdict(backbone), method), path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A ViT checkpoint with both branches (SSiT-like) and a resnet18 one (SimCLR-like)."""
    directory = tmp_path_factory.mktemp("ckpt")
    return {"vit": write_checkpoint(directory, VIT, True, "ssit"),
            "cnn": write_checkpoint(directory, CNN, False, "simclr")}


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


def outputs(model, images):
    model.eval()
    with torch.no_grad():
        return model.forward_features(images)


@pytest.mark.parametrize(("name", "config"), [("vit", VIT), ("cnn", CNN)])
def test_export_loads_in_timm_with_the_extracted_features(checkpoints, tmp_path, name, config):
    out = export_backbone(checkpoints[name], tmp_path / f"{name}.safetensors")
    metadata = metadata_of(out)
    assert metadata["backbone"] == name and metadata["arch"] == config.arch
    assert metadata["img_size"] == str(config.img_size) and metadata["branch"] == "query"
    assert json.loads(metadata["model_kwargs"]) == config.kwargs
    assert metadata["source"] == checkpoints[name].name
    extra = {"img_size": config.img_size} if name == "vit" else {}
    loaded = timm.create_model(config.arch, pretrained=True, num_classes=0,
                               pretrained_cfg_overlay=dict(file=str(out)), **extra,
                               **config.kwargs)
    images = torch.randn(2, 3, config.img_size, config.img_size)
    expected = outputs(extract_backbone(checkpoints[name], config), images)
    assert torch.equal(outputs(loaded, images), expected)
    graded = create_encoder(EncoderConfig(checkpoint=str(out), img_size=config.img_size))
    assert graded.kind.name == name and torch.equal(outputs(graded.model, images), expected)


def test_momentum_branch_and_resized_input(checkpoints, tmp_path):
    path = checkpoints["vit"]
    out = export_backbone(path, tmp_path / "momentum.safetensors", branch="momentum")
    images = torch.randn(2, 3, 64, 64)
    momentum = extract_backbone(path, VIT, branch="momentum")
    encoder = create_encoder(EncoderConfig(checkpoint=str(out), img_size=64))
    assert torch.equal(outputs(encoder.model, images), outputs(momentum, images))
    assert not torch.equal(outputs(encoder.model, images),
                           outputs(extract_backbone(path, VIT), images))
    bigger = create_encoder(EncoderConfig(checkpoint=str(out), img_size=96))
    assert bigger.model.pos_embed.shape[1] == 1 + 36
    resized = export_backbone(path, tmp_path / "at96.safetensors", img_size=96)
    assert metadata_of(resized)["img_size"] == "96"


def test_old_ssit_checkpoint_exports_and_loads_in_timm(tmp_path):
    out = export_backbone(OLD_CHECKPOINT, tmp_path / "old.safetensors")
    metadata = metadata_of(out)
    kwargs = json.loads(metadata["model_kwargs"])
    assert metadata["backbone"] == "vit" and kwargs == {"embed_dim": 32, "num_heads": 2,
                                                        "depth": 2}
    loaded = timm.create_model(metadata["arch"], pretrained=True, num_classes=0, img_size=32,
                               pretrained_cfg_overlay=dict(file=str(out)), **kwargs)
    assert loaded(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_export_errors(checkpoints, tmp_path):
    path = checkpoints["vit"]
    with pytest.raises(ExportError, match=r"must end in \.safetensors"):
        export_backbone(path, tmp_path / "backbone.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        export_backbone(tmp_path / "missing.pt", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        export_backbone(path, tmp_path / "x.safetensors", model_kwargs={"depth": 3})
    with pytest.raises(CheckpointError, match="momentum_encoder"):
        export_backbone(checkpoints["cnn"], tmp_path / "x.safetensors", branch="momentum")
    assert not (tmp_path / "x.safetensors").exists()
    bare = tmp_path / "bare.pt"
    torch.save({"model": torch.load(checkpoints["cnn"], weights_only=False)["model"]}, bare)
    with pytest.raises(ExportError, match="pass --arch"):
        export_backbone(bare, tmp_path / "x.safetensors")
    out = export_backbone(bare, tmp_path / "bare.safetensors", arch="resnet18")
    assert metadata_of(out)["backbone"] == "cnn"


def test_export_subcommand_prints_the_timm_call(checkpoints, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "cli.safetensors"
    assert run_export(parser.parse_args([str(checkpoints["vit"]), "--out", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "pretrained_cfg_overlay=dict(file=" in printed
    assert "img_size=64, depth=2, embed_dim=48, num_heads=2)" in printed
    assert out.is_file()
    cnn_out = tmp_path / "cnn.safetensors"
    assert run_export(parser.parse_args([str(checkpoints["cnn"]), "--out", str(cnn_out)])) == 0
    assert "timm.create_model('resnet18', pretrained=True, num_classes=0, " \
           f"pretrained_cfg_overlay=dict(file={str(cnn_out)!r}))" in capsys.readouterr().out


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root; skipped elsewhere), unmounted afterwards."""
    import subprocess

    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_export_to_a_full_disk_is_one_line_and_leaves_no_file(checkpoints, tiny_disk, capsys):
    from ssit.cli import main

    out = tiny_disk / "vit.safetensors"
    assert main(["export", str(checkpoints["vit"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}: ") and err.count("\n") == 1
    assert "No space left on device" in err
    assert list(tiny_disk.iterdir()) == []


def test_export_warns_when_the_checkpoint_has_no_checksum(checkpoints, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        export_backbone(checkpoints["vit"], tmp_path / "vit.safetensors")
    assert f"{checkpoints['vit'].name} has no checksum (no SHA-256 trailer" in caplog.text
