"""The encoder under grading: its architecture from the checkpoint, its features by kind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ssit.backbones import CNNConfig, ViTConfig, create_backbone
from ssit.evaluate.architecture import (
    EncoderError,
    backbone_name_of,
    check_encoder,
    load_encoder_source,
    resolve_encoder,
)
from ssit.evaluate.config import EncoderConfig
from ssit.evaluate.encoder import FeatureProbe, GradingModel, create_encoder
from tests.backbones.conftest import OLD_CHECKPOINT, method_checkpoint, perturbed

DEPTH4 = ViTConfig(arch="vit_tiny_patch16_224", img_size=32,
                   kwargs={"depth": 4, "embed_dim": 48, "num_heads": 2})
# What grade_tiny_cpu says for a random encoder: a different depth and the default width.
DEFAULTS = EncoderConfig(arch="vit_tiny_patch16_224", img_size=32, model_kwargs={"depth": 2})


@pytest.fixture(scope="module")
def depth4(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "depth4.pt"
    model = perturbed(create_backbone(DEPTH4), 0.0)
    torch.save(method_checkpoint(model, None, dataclasses.asdict(DEPTH4), "ssit"), path)
    return path


def using(path: Path, **changes) -> EncoderConfig:
    return dataclasses.replace(DEFAULTS, checkpoint=str(path), **changes)


def test_the_checkpoints_record_wins_over_the_config_defaults(depth4) -> None:
    source = load_encoder_source(str(depth4))
    resolved = resolve_encoder(using(depth4), source)
    assert resolved.backbone == "vit" and resolved.arch == DEPTH4.arch
    assert resolved.model_kwargs == DEPTH4.kwargs
    check_encoder(resolved, source)
    encoder = create_encoder(using(depth4))
    assert len(encoder.model.blocks) == 4 and encoder.config.kwargs == DEPTH4.kwargs


def test_explicit_settings_are_kept_and_must_fit(depth4) -> None:
    source = load_encoder_source(str(depth4))
    mismatch = resolve_encoder(using(depth4), source, explicit={"model_kwargs"})
    assert mismatch.model_kwargs == {**DEPTH4.kwargs, "depth": 2}
    expected = r"does not fit the encoder .*depth4\.pt holds a vit_tiny_.*: 0 missing keys, 24 unex"
    with pytest.raises(EncoderError, match=expected) as error:
        check_encoder(mismatch, source)
    assert "\n" not in str(error.value)
    harmless = resolve_encoder(using(depth4, model_kwargs={"drop_path_rate": 0.1, "depth": 2}),
                               source, explicit={"model_kwargs.drop_path_rate"})
    assert harmless.model_kwargs == {**DEPTH4.kwargs, "drop_path_rate": 0.1}
    check_encoder(harmless, source)
    same_shapes = resolve_encoder(using(depth4, arch="vit_small_patch16_224"), source,
                                  explicit={"arch"})
    check_encoder(same_shapes, source)  # the recorded widths make it the same network
    other_arch = resolve_encoder(using(depth4, arch="vit_small_patch8_224"), source,
                                 explicit={"arch"})
    with pytest.raises(EncoderError, match="shape mismatches"):
        check_encoder(other_arch, source)
    with pytest.raises(EncoderError, match=r"holds a vit backbone .*not a cnn like resnet18"):
        resolve_encoder(using(depth4, arch="resnet18"), source, explicit={"arch"})


def test_a_concrete_backbone_takes_the_config_as_given(depth4) -> None:
    pinned = using(depth4, backbone="vit")
    source = load_encoder_source(str(depth4))
    assert resolve_encoder(pinned, source) == pinned
    with pytest.raises(EncoderError, match="shape mismatches"):
        check_encoder(pinned, source)
    with pytest.raises(EncoderError, match="cannot build the encoder"):
        create_encoder(pinned)


def test_random_and_unrecorded_encoders_take_their_kind_from_the_arch(tmp_path) -> None:
    assert backbone_name_of("resnet18") == "cnn"
    assert backbone_name_of("vit_small_patch16_224") == "vit"
    cnn = resolve_encoder(EncoderConfig(arch="resnet18"), None)
    assert cnn.backbone == "cnn" and cnn.arch == "resnet18"
    torch.manual_seed(0)
    plain = create_backbone(CNNConfig(arch="resnet18"))
    path = tmp_path / "plain.safetensors"  # a timm file without our metadata
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    encoder = create_encoder(EncoderConfig(checkpoint=str(path), arch="resnet18", img_size=32))
    assert encoder.kind.name == "cnn"
    assert torch.equal(encoder.model.conv1.weight, plain.conv1.weight)


def test_old_ssit_checkpoint_grades() -> None:
    encoder = create_encoder(EncoderConfig(checkpoint=str(OLD_CHECKPOINT), img_size=64))
    assert encoder.config.kwargs == {"embed_dim": 32, "num_heads": 2, "depth": 2}
    model = GradingModel(encoder, freeze_backbone=True)
    assert model.head.in_features == 64 and model(torch.randn(2, 3, 64, 64)).shape == (2,)


def test_cnn_grading_model_reads_the_pooled_feature() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(EncoderConfig(arch="resnet18", img_size=32))
    model = GradingModel(encoder, freeze_backbone=False).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pooled = encoder.pooled(images)
        assert model.head.in_features == 512 and pooled.shape == (3, 512)
        assert torch.equal(model.features(images), pooled)
        torch.testing.assert_close(model(images), model.head(pooled).squeeze(1))


def test_vit_grading_model_and_knn_features() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(dataclasses.replace(DEFAULTS, model_kwargs={
        "depth": 1, "embed_dim": 48, "num_heads": 2}))
    model = GradingModel(encoder, freeze_backbone=True).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = encoder.model.forward_features(images)
        assert torch.equal(encoder.pooled(images), tokens[:, 0])
        assert model.head.in_features == 96
        torch.testing.assert_close(model.features(images),
                                   torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1))


def test_encoder_errors(tmp_path) -> None:
    with pytest.raises(EncoderError, match="does not exist"):
        create_encoder(EncoderConfig(checkpoint=str(tmp_path / "nope.pt")))
    with pytest.raises(EncoderError, match="unknown timm model"):
        create_encoder(EncoderConfig(arch="not_a_model"))
    with pytest.raises(ValueError, match=r"encoder\.backbone must be one of auto, vit, cnn"):
        EncoderConfig(backbone="mlp")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(EncoderError, match=r"cannot use broken\.safetensors"):
        load_encoder_source(str(broken))
    odd = tmp_path / "odd.safetensors"
    save_file({"x": torch.zeros(1)}, str(odd), metadata={"arch": "a", "backbone": "mlp"})
    with pytest.raises(EncoderError, match="unknown backbone 'mlp'"):
        load_encoder_source(str(odd))


def test_linear_probe_feature_norm_standardises_features_without_parameters() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(dataclasses.replace(DEFAULTS, model_kwargs={
        "depth": 1, "embed_dim": 48, "num_heads": 2}))
    plain = GradingModel(encoder, freeze_backbone=True)
    assert isinstance(plain.feature_norm, torch.nn.Identity)
    assert not any("feature_norm" in key for key in plain.state_dict())
    model = GradingModel(encoder, freeze_backbone=True, feature_norm=True)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == [
        "head.weight", "head.bias"]
    images = torch.randn(8, 3, 32, 32)
    features = model.features(images)
    with torch.no_grad():  # one training batch: the norm standardises by batch statistics
        normed = model.train().feature_norm(features)
    torch.testing.assert_close(normed.mean(dim=0), torch.zeros(96), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.var(dim=0, unbiased=False), torch.ones(96), atol=1e-3,
                               rtol=0)
    model.eval()  # evaluation: the running statistics, one momentum step from (0, 1)
    mean = 0.1 * features.mean(dim=0)
    var = 0.9 + 0.1 * features.var(dim=0, unbiased=True)
    expected = model.head((features - mean) / torch.sqrt(var + 1e-6)).squeeze(1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected)
        assert not torch.allclose(model(images), model.head(features).squeeze(1))


def test_feature_probe_on_encoded_features_is_the_frozen_grading_model() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(dataclasses.replace(DEFAULTS, model_kwargs={
        "depth": 1, "embed_dim": 48, "num_heads": 2}))
    torch.manual_seed(1)
    model = GradingModel(encoder, freeze_backbone=True, head_init_std=0.5, feature_norm=True)
    torch.manual_seed(1)
    probe = FeatureProbe(encoder, head_init_std=0.5, feature_norm=True)
    assert probe.state_dict().keys() == model.state_dict().keys()
    assert [name for name, p in probe.named_parameters() if p.requires_grad] == [
        "head.weight", "head.bias"]
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        features = probe.encode(images)
        assert features.shape == (6, 96)  # class token + mean patch token
        torch.testing.assert_close(features, model.features(images))
        for mode in (True, False):  # batch statistics, then running statistics
            torch.testing.assert_close(probe.train(mode)(features), model.train(mode)(images))
        assert not torch.allclose(probe(features + 1.0), model(images))
