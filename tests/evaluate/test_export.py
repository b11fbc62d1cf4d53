from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors import safe_open

from ssit.evaluate.config import EncoderConfig
from ssit.evaluate.encoder import EncoderError, create_encoder
from ssit.evaluate.export import ExportError, export_backbone
from ssit.model import SSiT
from ssit.model.checkpoint import CheckpointError

ARCH = "vit_tiny_patch16_224"
KWARGS = {"depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A training checkpoint of a tiny SSiT whose momentum encoder differs from its query."""
    torch.manual_seed(0)
    model = SSiT(arch=ARCH, img_size=64, mlp_dim=64, proj_dim=32, encoder_kwargs=KWARGS)
    with torch.no_grad():
        for parameter in model.momentum_encoder.parameters():
            parameter.add_(0.1)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-00000010.pt"
    config = {"model": {"arch": ARCH, "img_size": 64, "encoder_kwargs": KWARGS}}
    torch.save({"model": model.state_dict(), "config": config, "step": 10}, path)
    return path, model


def features(model, images):
    model.eval()
    with torch.no_grad():
        return model.forward_features(images)


def test_export_round_trips_through_timm(checkpoint, tmp_path):
    path, model = checkpoint
    out = export_backbone(path, tmp_path / "backbone.safetensors")
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["arch"] == ARCH and metadata["img_size"] == "64"
    assert json.loads(metadata["model_kwargs"]) == KWARGS
    loaded = timm.create_model(ARCH, pretrained=True, num_classes=0, img_size=64,
                               pretrained_cfg_overlay=dict(file=str(out)), **KWARGS)
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(features(loaded, images), features(model.base_encoder, images))


def test_momentum_branch_and_resized_input(checkpoint, tmp_path):
    path, model = checkpoint
    out = export_backbone(path, tmp_path / "momentum.safetensors", branch="momentum")
    encoder = create_encoder(EncoderConfig(checkpoint=str(out), arch=ARCH, img_size=64))
    images = torch.randn(2, 3, 64, 64)
    assert torch.allclose(features(encoder, images), features(model.momentum_encoder, images))
    bigger = create_encoder(EncoderConfig(checkpoint=str(out), arch=ARCH, img_size=96))
    assert bigger.pos_embed.shape[1] == 1 + 36
    direct = create_encoder(EncoderConfig(checkpoint=str(path), arch=ARCH, img_size=64))
    assert torch.equal(features(direct, images), features(model.base_encoder, images))


def test_export_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(ExportError, match=r"must end in \.safetensors"):
        export_backbone(path, tmp_path / "backbone.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        export_backbone(tmp_path / "missing.pt", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        export_backbone(path, tmp_path / "x.safetensors", model_kwargs={"depth": 3})
    assert not (tmp_path / "x.safetensors").exists()
    bare = tmp_path / "bare.pt"
    torch.save({"model": torch.load(path, weights_only=False)["model"]}, bare)
    with pytest.raises(ExportError, match="pass --arch"):
        export_backbone(bare, tmp_path / "x.safetensors")


def test_encoder_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(EncoderError, match="holds a vit_tiny_patch16_224 backbone"):
        create_encoder(EncoderConfig(checkpoint=str(path), arch="vit_small_patch16_224"))
    with pytest.raises(EncoderError, match="does not exist"):
        create_encoder(EncoderConfig(checkpoint=str(tmp_path / "nope.pt")))
    with pytest.raises(EncoderError, match="unknown timm model"):
        create_encoder(EncoderConfig(arch="not_a_model"))


def test_export_subcommand(checkpoint, tmp_path, capsys):
    import argparse

    from ssit.evaluate.export import add_export_arguments, run_export

    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "cli.safetensors"
    assert run_export(parser.parse_args([str(checkpoint[0]), "--out", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "pretrained_cfg_overlay=dict(file=" in printed and "depth=2" in printed
    assert out.is_file()
