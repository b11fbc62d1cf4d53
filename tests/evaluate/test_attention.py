"""Class-token attention of a checkpoint's ViT, and the figure ``ssit attention`` draws."""

from __future__ import annotations

import dataclasses
import math
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch

from ssit.backbones import CNNConfig, ViTConfig
from ssit.cli import main
from ssit.evaluate.architecture import EncoderError
from ssit.evaluate.attention import (
    AttentionError,
    attention_figure,
    attention_probabilities,
    class_token_attention,
    last_block_attention,
    last_block_probabilities,
    load_graded_vit,
    scale_to_uint8,
    spotlight,
    write_attention_figure,
)
from ssit.methods import SSiTConfig, create_method
from ssit.prepare.shard_format import PrepareError

OLD_CHECKPOINT = Path(__file__).parents[1] / "methods" / "data" / "ssit-v0.1-tiny.pt"
TINY_VIT = ViTConfig(arch="vit_tiny_patch16_224", img_size=32,
                     kwargs={"embed_dim": 32, "num_heads": 2, "depth": 2})
TILE = 48
TEXT = 22
GAP = 4


def tiny_timm_vit(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, embed_dim=32, num_heads=2,
                             depth=2, num_classes=0, **options).eval()


def save_checkpoint(path: Path, backbone=TINY_VIT) -> Path:
    torch.manual_seed(0)
    method = SSiTConfig(proj_dim=16, mlp_dim=32)
    model = create_method(method, backbone)
    torch.save({"model": model.state_dict(),
                "config": {"backbone": dataclasses.asdict(backbone),
                           "method": dataclasses.asdict(method)}}, path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("attention") / "tiny.pt")


def test_attention_probabilities_by_hand():
    q = torch.tensor([[1.0]])
    k = torch.tensor([[0.0], [math.log(9.0)]])
    # scale 0.5: logits 0 and ln 3, so weights 1/4 and 3/4
    torch.testing.assert_close(attention_probabilities(q, k, 0.5), torch.tensor([[0.25, 0.75]]))


def test_class_token_row_drops_prefix_columns_and_averages_heads():
    probabilities = torch.zeros(1, 2, 4, 4)
    probabilities[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    probabilities[0, 1, 0] = torch.tensor([0.4, 0.2, 0.2, 0.2])
    probabilities[0, :, 1:] = 9  # rows of other tokens are ignored
    torch.testing.assert_close(class_token_attention(probabilities, 1),
                               torch.tensor([[0.2, 0.25, 0.3]]))
    torch.testing.assert_close(class_token_attention(probabilities, 2),
                               torch.tensor([[0.25, 0.3]]))


def direct_last_block_probabilities(model: torch.nn.Module, images: torch.Tensor
                                    ) -> torch.Tensor:
    """timm's own weights: its non-fused path, read after the softmax (attn_drop's output)."""
    attention = model.blocks[-1].attn
    attention.fused_attn = False
    captured = []
    handle = attention.attn_drop.register_forward_hook(
        lambda _module, _inputs, output: captured.append(output))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize("options", [{}, {"qk_norm": True}, {"reg_tokens": 2}],
                         ids=["plain", "qk_norm", "registers"])
def test_last_block_attention_equals_timms_own_weights(options):
    model = tiny_timm_vit(**options)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = last_block_probabilities(model, images)
        expected = direct_last_block_probabilities(model, images)
        maps = last_block_attention(model, images)
    tokens = model.num_prefix_tokens + 4
    assert ours.shape == (3, 2, tokens, tokens)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours.sum(-1), torch.ones(3, 2, tokens))  # rows sum to 1
    assert maps.shape == (3, 2, 2)
    torch.testing.assert_close(maps.flatten(1),
                               expected[:, :, 0, model.num_prefix_tokens :].mean(1))
    assert not model.blocks[-1]._forward_hooks  # the hook is removed again
    assert (maps.sum((1, 2)) < 1).all()  # the class column was dropped


def test_attention_depends_on_the_image():
    model = tiny_timm_vit()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps = last_block_attention(model, images)
    assert not torch.allclose(maps[0], maps[1])


def test_scale_to_uint8_and_spotlight_by_hand():
    assert scale_to_uint8(np.array([1.0, 2.0, 3.0])).tolist() == [0, 128, 255]
    assert scale_to_uint8(np.full((2, 2), 0.3)).tolist() == [[0, 0], [0, 0]]
    crop = np.full((1, 2, 3), 100, np.uint8)
    lit = spotlight(crop, np.array([[0, 255]], np.uint8))
    assert lit[0, 0].tolist() == [20, 20, 20] and lit[0, 1].tolist() == [100, 100, 100]


def test_figure_of_a_tiny_checkpoint(tiny_checkpoint, demo_shards):
    figure, shown = attention_figure(tiny_checkpoint, demo_shards, n=3, tile=TILE)
    assert shown == 3
    row_width = 4 * TILE + 3 * GAP
    assert figure.shape == (2 * TEXT + 3 * (TILE + TEXT + GAP) + GAP, row_width + 2 * GAP, 3)
    model, cfg = load_graded_vit(tiny_checkpoint)
    assert cfg.img_size == 32 and not model.training
    first_row = figure[2 * TEXT + GAP : 2 * TEXT + GAP + TILE, GAP : GAP + row_width]
    attention = first_row[:, 2 * (TILE + GAP) : 3 * TILE + 2 * GAP]
    assert attention.std() > 10  # a map with structure, not a flat colour


def test_the_figure_reads_the_branch_grading_reads(tmp_path):
    """A checkpoint that declares its momentum branch (DINO's teacher) is drawn from that
    branch, as grading and export read it; without the declaration, from the query encoder."""
    path = save_checkpoint(tmp_path / "tiny.pt")
    saved = torch.load(path, weights_only=True)
    state = saved["model"]
    for key in [k for k in state if k.startswith("momentum_encoder.")]:
        state[key] = state[key] + 0.5  # the two branches now differ
    torch.save(saved, path)
    query, _ = load_graded_vit(path)
    torch.save({**saved, "export_branch": "momentum"}, path)
    teacher, _ = load_graded_vit(path)
    for name, weight in teacher.state_dict().items():
        if name.startswith("head."):
            continue
        torch.testing.assert_close(weight, state[f"momentum_encoder.{name}"])
        torch.testing.assert_close(query.state_dict()[name], state[f"base_encoder.{name}"])


def test_figure_reads_an_old_format_checkpoint(demo_shards):
    _, shown = attention_figure(OLD_CHECKPOINT, demo_shards, n=1, tile=32)
    assert shown == 1


def test_cli_writes_the_figure(tiny_checkpoint, demo_shards, tmp_path, capsys):
    out = tmp_path / "figures" / "attention.png"
    assert main(["attention", str(tiny_checkpoint), "--shards", str(demo_shards),
                 "--out", str(out), "--n", "2"]) == 0
    assert "2 samples" in capsys.readouterr().out
    picture = cv2.imread(str(out))
    assert picture.shape == (2 * TEXT + 2 * (224 + TEXT + GAP) + GAP, 4 * 224 + 5 * GAP, 3)


def without_maps(demo_shards: Path, target: Path) -> Path:
    source = sorted(demo_shards.glob("*.tar"))[0]
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for member in tar:
            if not member.name.endswith(".sal.png"):
                out.addfile(member, tar.extractfile(member))
    return target


def test_bad_inputs(tiny_checkpoint, demo_shards, tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        attention_figure(tmp_path / "missing.pt", demo_shards)
    cnn = tmp_path / "cnn.pt"
    torch.save({"model": {"base_encoder.fc.weight": torch.zeros(1)},
                "config": {"backbone": dataclasses.asdict(CNNConfig(arch="resnet18"))}}, cnn)
    with pytest.raises(AttentionError, match=r"holds a cnn backbone .*need a ViT"):
        attention_figure(cnn, demo_shards)
    plain = tmp_path / "plain.pt"
    torch.save({"model": torch.load(tiny_checkpoint)["model"]}, plain)
    with pytest.raises(AttentionError, match="records no backbone"):
        attention_figure(plain, demo_shards)
    with pytest.raises(AttentionError, match="at least 1"):
        attention_figure(tiny_checkpoint, demo_shards, n=0)
    with pytest.raises(PrepareError, match="no saliency map"):
        attention_figure(tiny_checkpoint, without_maps(demo_shards, tmp_path / "a.tar"), n=2)
    with pytest.raises(PrepareError, match="shard not found"):
        attention_figure(tiny_checkpoint, tmp_path / "missing.tar")
    with pytest.raises(PrepareError, match=r"must end in \.png"):
        write_attention_figure(tiny_checkpoint, demo_shards, tmp_path / "a.jpg")


def test_cli_errors_are_one_line(tiny_checkpoint, demo_shards, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing.pt"), "--shards", str(demo_shards)], "does not exist"),
        ([str(tiny_checkpoint), "--shards", str(without_maps(demo_shards, tmp_path / "b.tar"))],
         "no saliency map"),
    ]
    for arguments, message in cases:
        assert main(["attention", *arguments, "--out", str(tmp_path / "a.png")]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error and error.startswith("error: ")
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", str(tiny_checkpoint), "--shards", str(demo_shards),
              "--out", str(tmp_path / "a.png"), "--n", "0"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "a.png").exists()
