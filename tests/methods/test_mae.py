"""MAE: masking, patch layout and loss against hand-worked values, the fixed sine-cosine table,
the released parameter names, MAE's initialisation and the options refused before a job."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from ssit.backbones import CNNConfig, ViTConfig
from ssit.backbones.pos_embed import sincos_pos_embed_2d
from ssit.config import ConfigError, load_config
from ssit.methods import create_method
from ssit.methods.config import MAEConfig
from ssit.methods.mae import MAE, MAE_VIEW, patchify, random_masking, reconstruction_loss
from ssit.train.config import PretrainConfig, validate_pretrain_config

REPO = Path(__file__).resolve().parents[2]
TINY = ViTConfig(arch="vit_tiny_patch16_224", img_size=64, kwargs={"depth": 2})
TINY_DECODER = {"decoder_embed_dim": 32, "decoder_depth": 2, "decoder_num_heads": 4}


def tiny_mae(seed: int = 0, **overrides: object) -> MAE:
    """MAE on a 2-block ViT-Ti/16 at 64x64 (a 4x4 grid of 16 patches) with a small decoder."""
    torch.manual_seed(seed)
    return create_method(MAEConfig(**{**TINY_DECODER, **overrides}), TINY)


# --- masking ------------------------------------------------------------------------------


def test_masking_by_hand() -> None:
    # noise 0.3 0.1 0.4 0.2: ids_shuffle = argsort = [1, 3, 0, 2]; mask ratio 0.5 keeps
    # int(4 * 0.5) = 2 tokens, 1 and 3 in that order; 0 and 2 are removed (mask 1 0 1 0);
    # ids_restore = argsort([1, 3, 0, 2]) = [2, 0, 3, 1].
    x = torch.tensor([[[10.0], [20.0], [30.0], [40.0]]])
    noise = torch.tensor([[0.3, 0.1, 0.4, 0.2]])
    kept, mask, ids_restore = random_masking(x, 0.5, noise)
    assert kept.tolist() == [[[20.0], [40.0]]]
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert ids_restore.tolist() == [[2, 0, 3, 1]]
    # The shuffled order (kept first, then the removed ones) goes back in place through it.
    shuffled = torch.tensor([[20.0, 40.0, 10.0, 30.0]])
    assert torch.gather(shuffled, 1, ids_restore).tolist() == [[10.0, 20.0, 30.0, 40.0]]


@pytest.mark.parametrize(("length", "ratio", "kept"),
                         [(196, 0.75, 49), (16, 0.75, 4), (5, 0.75, 1), (10, 0.3, 7), (7, 0.5, 3)])
def test_masking_keeps_int_of_the_unmasked_share(length: int, ratio: float, kept: int) -> None:
    generator = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, 2, generator=generator)
    noise = torch.rand(3, length, generator=generator)
    tokens, mask, ids_restore = random_masking(x, ratio, noise)
    assert tokens.shape == (3, kept, 2)
    assert mask.sum(dim=1).tolist() == [length - kept] * 3
    for row in range(3):
        # the kept tokens are those of lowest noise, in increasing noise, where mask is 0
        order = noise[row].argsort()[:kept]
        torch.testing.assert_close(tokens[row], x[row, order], rtol=0, atol=0)
        assert set(torch.nonzero(mask[row] == 0).flatten().tolist()) == set(order.tolist())
        assert sorted(ids_restore[row].tolist()) == list(range(length))


def test_masking_draws_uniform_noise_when_given_none() -> None:
    x = torch.randn(2, 9, 4)
    torch.manual_seed(5)
    drawn = random_masking(x, 0.75)
    torch.manual_seed(5)
    given = random_masking(x, 0.75, torch.rand(2, 9))
    for a, b in zip(drawn, given, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("shape", "ratio", "noise_shape", "message"), [
    ((2, 4), 0.5, (2, 4), "expected tokens"),
    ((2, 4, 3), 1.0, (2, 4), "mask_ratio must be in"),
    ((2, 4, 3), -0.1, (2, 4), "mask_ratio must be in"),
    ((2, 4, 3), 0.5, (2, 5), "noise must be"),
])
def test_masking_refuses_bad_input(shape, ratio, noise_shape, message) -> None:
    with pytest.raises(ValueError, match=message):
        random_masking(torch.zeros(shape), ratio, torch.rand(noise_shape))


# --- patches and loss ---------------------------------------------------------------------


def test_patchify_by_hand() -> None:
    # pixel value 100 c + 10 y + x on a 4x4 image, patches of 2: patch 1 is row 0, column 1
    # (y 0-1, x 2-3), flattened as (y, x, channel).
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(4), indexing="ij")
    image = (100 * c + 10 * y + x).float().unsqueeze(0)
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 12)
    assert patches[0, 1].tolist() == [2, 102, 202, 3, 103, 203, 12, 112, 212, 13, 113, 213]
    assert patches[0, 2].tolist() == [20, 120, 220, 21, 121, 221, 30, 130, 230, 31, 131, 231]
    with pytest.raises(ValueError, match="multiples of 2"):
        patchify(torch.zeros(1, 3, 5, 4), 2)


def test_loss_by_hand() -> None:
    # Sample 0: patch 0 is kept (its large error must not count), patch 1 = (0, 0, 6) removed.
    # Sample 1: both removed, patch 0 = (1, 2, 3), patch 1 = (2, 2, 2); predictions all 0.
    target = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]],
                           [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]], dtype=torch.float64)
    pred = torch.zeros_like(target)
    pred[0, 0] = 100.0
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    # Raw pixels: per-patch MSE 36/3 = 12, 14/3 and 12/3 = 4 -> (12 + 14/3 + 4) / 3.
    raw = reconstruction_loss(pred, target, mask, norm_pix_loss=False)
    assert raw.item() == pytest.approx((12 + 14 / 3 + 4) / 3, rel=1e-12)
    # Normalised: (0, 0, 6) has mean 2 and unbiased variance (4 + 4 + 16) / 2 = 12, so its
    # squared error is 24 / (12 + eps) over 3 values; (1, 2, 3): variance 1, 2 / (1 + eps) / 3;
    # (2, 2, 2): variance 0, all zeros after centring, error 0. (The biased variance 8 would
    # give 1 for the first patch.)
    eps = 1e-6
    normalised = reconstruction_loss(pred, target, mask, norm_pix_loss=True)
    expected = (24 / (12 + eps) / 3 + 2 / (1 + eps) / 3 + 0.0) / 3
    assert normalised.item() == pytest.approx(expected, rel=1e-12)


def test_loss_is_float32_under_autocast_and_refuses_bad_shapes() -> None:
    pred = torch.randn(2, 4, 12).bfloat16()
    target, mask = torch.randn(2, 4, 12), torch.ones(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert reconstruction_loss(pred, target, mask).dtype == torch.float32
    with pytest.raises(ValueError, match="mask"):
        reconstruction_loss(pred.float(), target, torch.ones(2, 3))
    with pytest.raises(ValueError, match="pred and target"):
        reconstruction_loss(pred.float(), target[:, :, :6], mask)


# --- the fixed sine-cosine position embedding ---------------------------------------------


def test_sincos_table_by_hand_on_a_2x2_grid() -> None:
    # Width 8: each quarter has 2 frequencies, 10000^(-0/2) = 1 and 10000^(-1/2) = 1/100.
    # Token (row i, column j) = [sin j, sin j/100, cos j, cos j/100, the same for i];
    # the class row is zeros.
    s1, s2, c1, c2 = math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)
    zero_pos = [0.0, 0.0, 1.0, 1.0]
    one_pos = [s1, s2, c1, c2]
    expected = torch.tensor([
        [0.0] * 8,
        zero_pos + zero_pos,  # (0, 0)
        one_pos + zero_pos,   # (0, 1): column 1
        zero_pos + one_pos,   # (1, 0): row 1
        one_pos + one_pos,    # (1, 1)
    ])
    table = sincos_pos_embed_2d(8, 2, cls_token=True)
    assert table.dtype == torch.float32
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(sincos_pos_embed_2d(8, 2), expected[1:], rtol=0, atol=0)


def test_sincos_table_follows_its_formula_at_vit_s_size() -> None:
    table = sincos_pos_embed_2d(384, 14).double()
    quarter = 96
    for token, d in [(0, 0), (15, 3), (27, 95), (100, 50), (195, 17)]:
        row, column = divmod(token, 14)
        frequency = 10000 ** (-d / quarter)
        values = [math.sin(column * frequency), math.cos(column * frequency),
                  math.sin(row * frequency), math.cos(row * frequency)]
        got = [table[token, d + k * quarter].item() for k in range(4)]
        assert got == pytest.approx(values, abs=1e-6)


@pytest.mark.parametrize(("width", "grid"), [(6, 2), (0, 2), (8, 0)])
def test_sincos_table_refuses_bad_sizes(width: int, grid: int) -> None:
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(width, grid)


# --- the model ----------------------------------------------------------------------------


RELEASED_DECODER_BLOCK = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                          "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                          "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def test_state_dict_names_are_timm_and_released_mae() -> None:
    model = tiny_mae()
    state = model.state_dict()
    decoder = {key: tuple(value.shape) for key, value in state.items()
               if not key.startswith("base_encoder.")}
    expected = {"mask_token": (1, 1, 32), "decoder_pos_embed": (1, 17, 32),
                "decoder_embed.weight": (32, 192), "decoder_embed.bias": (32,),
                "decoder_norm.weight": (32,), "decoder_norm.bias": (32,),
                "decoder_pred.weight": (16 * 16 * 3, 32), "decoder_pred.bias": (16 * 16 * 3,)}
    for block in range(2):
        expected.update({f"decoder_blocks.{block}.{name}": None for name in RELEASED_DECODER_BLOCK})
    assert set(decoder) == set(expected)
    for key, shape in expected.items():
        assert shape is None or decoder[key] == shape, key
    plain = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=0)
    encoder = {key.removeprefix("base_encoder."): tuple(value.shape)
               for key, value in state.items() if key.startswith("base_encoder.")}
    assert encoder == {key: tuple(value.shape) for key, value in plain.state_dict().items()}
    # The released encoder's names, under base_encoder.
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
            "norm.weight"} <= set(encoder)


def test_position_embeddings_are_fixed_sincos_tables() -> None:
    model = tiny_mae()
    encoder = model.base_encoder
    assert not encoder.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    torch.testing.assert_close(encoder.pos_embed[0], sincos_pos_embed_2d(192, 4, True))
    torch.testing.assert_close(model.decoder_pos_embed[0], sincos_pos_embed_2d(32, 4, True))
    assert encoder.pos_embed[0, 0].abs().max() == 0
    loss, _, _ = model.forward_loss(torch.randn(2, 3, 64, 64))
    loss.backward()
    assert encoder.pos_embed.grad is None and model.decoder_pos_embed.grad is None
    assert model.mask_token.grad is not None and encoder.cls_token.grad is not None


def _uniform_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6 / (fan_in + fan_out)) / math.sqrt(3)


def test_initialisation_is_maes() -> None:
    model = tiny_mae(decoder_embed_dim=64)
    encoder = model.base_encoder
    qkv = encoder.blocks[0].attn.qkv.weight  # 576 x 192
    assert qkv.std().item() == pytest.approx(_uniform_std(192, 576), rel=0.05)
    assert qkv.abs().max().item() <= math.sqrt(6 / (192 + 576))
    # the patch projection 192 x 3 x 16 x 16 as a 192 x 768 matrix (not a convolution's fans)
    proj = encoder.patch_embed.proj.weight
    assert proj.std().item() == pytest.approx(_uniform_std(768, 192), rel=0.05)
    pred = model.decoder_pred.weight  # 768 x 64
    assert pred.std().item() == pytest.approx(_uniform_std(64, 768), rel=0.05)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.bias.abs().max() == 0
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert module.bias.abs().max() == 0
    for token in (encoder.cls_token, model.mask_token):
        assert token.std().item() == pytest.approx(0.02, rel=0.35)


def test_forward_loss_shapes_and_noise() -> None:
    model = tiny_mae()
    images = torch.randn(3, 3, 64, 64)
    torch.manual_seed(7)
    loss, pred, mask = model.forward_loss(images)
    assert loss.shape == () and pred.shape == (3, 16, 768) and mask.shape == (3, 16)
    assert mask.sum(dim=1).tolist() == [12.0] * 3
    torch.manual_seed(7)
    again = model.forward_loss(images, torch.rand(3, 16))
    for a, b in zip((loss, pred, mask), again, strict=True):
        assert torch.equal(a, b)


def _reference_forward(model: MAE, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The predictions written one sample and one position at a time."""
    encoder, predictions = model.base_encoder, []
    keep = int(noise.shape[1] * (1 - model.mask_ratio))
    for image, sample_noise in zip(images, noise, strict=True):
        tokens = encoder.patch_embed(image[None])[0] + encoder.pos_embed[0, 1:]
        kept = sorted(range(len(sample_noise)), key=lambda i: sample_noise[i].item())[:keep]
        sequence = torch.stack([encoder.cls_token[0, 0] + encoder.pos_embed[0, 0],
                                *(tokens[i] for i in kept)])
        latent = model.decoder_embed(encoder.norm(encoder.blocks(sequence[None]))[0])
        slots = [latent[0]]
        for position in range(len(sample_noise)):
            slots.append(latent[1 + kept.index(position)] if position in kept
                         else model.mask_token[0, 0])
        x = torch.stack(slots)[None] + model.decoder_pos_embed
        for block in model.decoder_blocks:
            x = block(x)
        predictions.append(model.decoder_pred(model.decoder_norm(x))[0, 1:])
    return torch.stack(predictions)


def test_forward_equals_a_per_position_reference() -> None:
    model = tiny_mae().double()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    noise = torch.rand(2, 16)
    loss, pred, mask = model.forward_loss(images, noise)
    expected = _reference_forward(model, images, noise)
    torch.testing.assert_close(pred, expected, rtol=1e-9, atol=1e-9)
    target = patchify(images, 16)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True)
                                                         + 1e-6).sqrt()
    per_patch = ((expected - target) ** 2).mean(-1)
    torch.testing.assert_close(loss, per_patch[mask.bool()].mean(), rtol=1e-9, atol=1e-12)


def test_one_view_without_maps() -> None:
    model = tiny_mae()
    assert len(model.views) == 1 and not model.views[0].with_map
    view = model.views[0].augmentation
    assert view == MAE_VIEW
    assert (view.crop_scale, view.hflip_p, view.vflip_p, view.rotation_p) == ((0.2, 1.0), 0.5,
                                                                              0.0, 0.0)
    assert view.jitter_p == view.grayscale_p == view.blur_p == view.solarize_p == 0.0
    assert view.crop_interpolation == "cubic" and model.views[0].size is None
    losses = model([torch.randn(2, 3, 64, 64)], [None])
    assert set(losses) == {"rec"} and torch.isfinite(losses["rec"])
    with pytest.raises(ValueError, match="needs 1 views"):
        model([torch.randn(2, 3, 64, 64)] * 2, [None, None])


# --- options refused before a job -----------------------------------------------------------


def _refused(cfg: PretrainConfig) -> str:
    with pytest.raises(ConfigError) as info:
        validate_pretrain_config(cfg, 1)
    message = str(info.value)
    assert "\n" not in message
    return message


def _demo(shards, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, "mae_demo_cpu",
                       [f"data.shards={shards}", "optim.batch_size=2", *overrides])


def test_packaged_configs_validate(demo_shards) -> None:
    validate_pretrain_config(_demo(demo_shards), 1)
    paper = load_config(PretrainConfig, "mae_vits16_eyepacs",
                        [f"data.shards={demo_shards}", "optim.batch_size=8"])
    validate_pretrain_config(paper, 1)


@pytest.mark.parametrize(("override", "expected"), [
    ("method.mask_ratio=0.0", "'method.mask_ratio' must be in (0, 1), got 0.0"),
    ("method.mask_ratio=1.0", "'method.mask_ratio' must be in (0, 1), got 1.0"),
    ("method.mask_ratio=.nan", "'method.mask_ratio' must be in (0, 1), got nan"),
    ("method.mask_ratio=0.99", "method.mask_ratio=0.99 keeps no patch of the 6x6 grid"),
    ("method.decoder_embed_dim=0", "'method.decoder_embed_dim' must be a finite number > 0"),
    ("method.decoder_depth=0", "'method.decoder_depth' must be a finite number > 0"),
    ("method.decoder_num_heads=-4", "'method.decoder_num_heads' must be a finite number > 0"),
    ("method.decoder_num_heads=3",
     "method.decoder_num_heads=3 must divide method.decoder_embed_dim=128"),
    ("method.decoder_embed_dim=130", "method.decoder_embed_dim must be divisible by 4"),
    ("backbone.img_size=100", "input size 100 is not divisible by the patch size 16"),
    ("method.augmentation={zoom: 2}", "method.augmentation: unknown augmentation option(s) zoom"),
])
def test_bad_options_are_refused_in_one_line(demo_shards, override: str, expected: str) -> None:
    assert expected in _refused(_demo(demo_shards, override))


def test_a_cnn_backbone_is_refused(demo_shards) -> None:
    cfg = _demo(demo_shards, "backbone.name=cnn", "backbone.arch=resnet18", "backbone.kwargs={}")
    assert "method mae needs backbone.name=vit" in _refused(cfg)
    with pytest.raises(ValueError, match="needs a timm VisionTransformer"):
        MAE(timm.create_model("resnet18", num_classes=0))
    with pytest.raises(ValueError, match=r"needs backbone\.name=vit"):
        MAEConfig().check(CNNConfig())


def test_the_launcher_refuses_bad_mae_options_in_one_line(demo_shards, tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("launch_pretrain",
                                                  REPO / "launch" / "pretrain.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    for override, expected in [
        ("method.decoder_num_heads=3",
         "method.decoder_num_heads=3 must divide method.decoder_embed_dim=128"),
        ("method.mask_ratio=1.5", "config key 'method.mask_ratio' must be in (0, 1), got 1.5"),
        ("backbone.name=cnn backbone.arch=resnet18 backbone.kwargs={}",
         "method mae needs backbone.name=vit"),
        ("backbone.img_size=100", "input size 100 is not divisible by the patch size 16"),
    ]:
        status = launcher.main(["--cpu", "--dry-run", "--config", "mae_demo_cpu", "--output",
                                str(tmp_path / "run"), f"data.shards={demo_shards}",
                                *override.split()])
        captured = capsys.readouterr()
        assert status == 2 and captured.out == ""
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
        assert expected in captured.err
    assert not (tmp_path / "run").exists()
