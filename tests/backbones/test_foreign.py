"""Other projects' encoders: the SSiT authors' pickled models, RETFound files, timm by name."""

from __future__ import annotations

import argparse
import importlib
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import ssit
from ssit.backbones import CheckpointError, ViTConfig, extract_backbone, read_checkpoint
from ssit.backbones.foreign import (
    parse_timm_spec,
    timm_checkpoint,
    without_pretraining_extras,
)
from ssit.backbones.weights import ForeignObject, restricted_load
from ssit.evaluate.export import export_backbone

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
ARCH = "vit_tiny_patch16_224"

# Stand-ins for the authors' classes: their module ``vits`` with a timm-derived ViT whose head
# is a projector with BatchNorm, and an ``SSiT`` wrapper holding two encoders and a predictor.
VITS_SOURCE = textwrap.dedent("""
    import torch
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    class VisionTransformer(TimmViT):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            width = self.embed_dim
            self.head = torch.nn.Sequential(torch.nn.Linear(width, 16),
                                            torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                            torch.nn.Linear(16, 8))
""")


class SSiT(torch.nn.Module):
    """Shaped like the authors' model: base and momentum encoders plus a predictor."""

    def __init__(self, make_encoder) -> None:
        super().__init__()
        self.base_encoder = make_encoder()
        self.momentum_encoder = make_encoder()
        self.predictor = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
        self.temperature = 0.2


@pytest.fixture
def authors_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A pickled ``ssit.SSiT`` (whole model, SyncBatchNorm) and the model itself.

    The classes are importable only while saving: ``vits`` from a temporary folder and
    ``SSiT`` as an attribute of our own ``ssit`` package, as the authors' module was named.
    """
    folder = tmp_path / "authors"
    folder.mkdir()
    (folder / "vits.py").write_text(VITS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    vits = importlib.import_module("vits")
    torch.manual_seed(0)
    SSiT.__module__, SSiT.__qualname__ = "ssit", "SSiT"
    monkeypatch.setattr(ssit, "SSiT", SSiT, raising=False)
    model = SSiT(lambda: vits.VisionTransformer(img_size=32, patch_size=16, **TINY))
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    path = tmp_path / "epoch_299.pt"
    torch.save(model, path)
    monkeypatch.delattr(ssit, "SSiT")
    del sys.modules["vits"]
    sys.path.remove(str(folder))
    return path, model


def test_plain_torch_load_cannot_read_the_authors_file(authors_model) -> None:
    path, _ = authors_model
    with pytest.raises(AttributeError, match="SSiT"):
        torch.load(path, weights_only=False)


def test_whole_pickled_model_reads_as_its_state_dict(authors_model) -> None:
    path, model = authors_model
    loaded = read_checkpoint(path)
    expected = model.state_dict()
    assert set(loaded["model"]) == set(expected)
    assert all(torch.equal(loaded["model"][key], value) for key, value in expected.items())
    assert "vits" not in sys.modules
    raw = restricted_load(path)
    assert isinstance(raw, ForeignObject) and raw.foreign_class == "ssit.SSiT"
    sync = raw.state["_modules"]["predictor"].state["_modules"]["1"]
    assert sync.foreign_class == "torch.nn.modules.batchnorm.SyncBatchNorm"


def test_exported_authors_encoder_gives_the_base_encoders_features(authors_model,
                                                                  tmp_path: Path) -> None:
    path, model = authors_model
    out = export_backbone(path, tmp_path / "ssit.safetensors", arch=ARCH, img_size=32,
                          model_kwargs=TINY)
    exported = timm.create_model(ARCH, num_classes=0, img_size=32, **TINY)
    exported.load_state_dict(load_file(out))
    base = model.base_encoder.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported.eval()(images), base.forward_head(
            base.forward_features(images), pre_logits=True), atol=1e-6)
    momentum = extract_backbone(path, ViTConfig(arch=ARCH, img_size=32, kwargs=TINY),
                                "momentum")
    assert torch.equal(momentum.pos_embed, model.momentum_encoder.pos_embed)


def test_authors_checkpoint_with_module_prefixes_and_namespace(authors_model,
                                                               tmp_path: Path) -> None:
    _, model = authors_model
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 300, "args": argparse.Namespace(arch="vit_small", lr=1e-3),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    encoder = extract_backbone(path, ViTConfig(arch=ARCH, img_size=32, kwargs=TINY))
    base = model.base_encoder
    assert torch.equal(encoder.blocks[1].mlp.fc2.weight, base.blocks[1].mlp.fc2.weight)
    assert isinstance(read_checkpoint(path)["args"], ForeignObject)


class Trap:
    """Unpickling an instance would create ``marker`` if the loader ran foreign code."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_restricted_load_runs_no_code_of_the_file(tmp_path: Path) -> None:
    Trap.marker = str(tmp_path / "marker")
    path = tmp_path / "trap.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Trap()}, path)
    with pytest.raises(CheckpointError, match=f"refused {path}: it refers to builtins.getattr"):
        read_checkpoint(path)
    assert not (tmp_path / "marker").exists()


def mae_checkpoint(vit: torch.nn.Module) -> dict:
    decoder = {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.ones(16, 32),
               "decoder_pos_embed": torch.zeros(1, 5, 16),
               "decoder_blocks.0.attn.qkv.weight": torch.ones(48, 16),
               "decoder_norm.weight": torch.ones(16), "decoder_pred.weight": torch.ones(768, 16)}
    return {"model": {**vit.state_dict(), **decoder}, "optimizer": {"state": {}}, "epoch": 799,
            "args": argparse.Namespace(model="mae_vit_large_patch16")}


def test_retfound_layout_grades_and_exports(tmp_path: Path) -> None:
    from ssit.evaluate.config import EncoderConfig
    from ssit.evaluate.encoder import create_encoder

    torch.manual_seed(1)
    vit = timm.create_model(ARCH, num_classes=0, img_size=32, **TINY)
    path = tmp_path / "RETFound_cfp_weights.pth"
    torch.save(mae_checkpoint(vit), path)
    encoder = create_encoder(EncoderConfig(checkpoint=str(path), arch=ARCH, img_size=32,
                                           model_kwargs=TINY))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder.model.eval()(images), vit.eval()(images), atol=1e-6)
    out = export_backbone(path, tmp_path / "retfound.safetensors", arch=ARCH, img_size=32,
                          model_kwargs=TINY)
    assert not any(key.startswith(("decoder", "mask")) for key in load_file(out))


def test_mae_extras_are_dropped_only_from_mae_layouts() -> None:
    plain = {"blocks.0.norm1.weight": torch.ones(2), "decoder.weight": torch.ones(2)}
    assert without_pretraining_extras(plain) == plain
    mae = {**plain, "mask_token": torch.zeros(1), "decoder_pred.bias": torch.zeros(2)}
    assert set(without_pretraining_extras(mae)) == set(plain)


def test_timm_pseudo_checkpoint_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = timm.create_model("test_resnet", num_classes=0)
    file = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict() | reference.state_dict(), file)
    loaded = read_checkpoint(f"timm:test_resnet={file}")
    assert loaded["config"]["backbone"]["name"] == "cnn"
    assert loaded["config"]["backbone"]["arch"] == "test_resnet"
    assert all(torch.equal(loaded["model"][k], v) for k, v in reference.state_dict().items())


def test_timm_pseudo_checkpoint_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_timm_spec("timm:resnet50") == ("resnet50", None)
    assert parse_timm_spec("timm:resnet50=/w/r.pth") == ("resnet50", "/w/r.pth")
    for bad in ("timm:", "timm:=x", "timm:resnet50=", "resnet50"):
        with pytest.raises(CheckpointError, match="timm:<name>"):
            parse_timm_spec(bad)
    with pytest.raises(CheckpointError, match="unknown timm model"):
        timm_checkpoint("timm:no_such_net")
    with pytest.raises(CheckpointError, match="does not exist"):
        timm_checkpoint(f"timm:test_resnet={tmp_path / 'none.pth'}")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"timm:test_vit=<file>") as error:
        timm_checkpoint("timm:test_vit")
    assert "\n" not in str(error.value)


def test_restricted_unpickler_keeps_plain_containers(tmp_path: Path) -> None:
    path = tmp_path / "rich.pt"
    torch.save({"model": {"w": torch.arange(3)}, "meta": {"steps": [1, 2], "name": "x"}}, path,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    loaded = restricted_load(path)
    assert loaded["meta"] == {"steps": [1, 2], "name": "x"}


def vit_file(tmp_path: Path, depth: int, width: int = 48) -> tuple[Path, dict]:
    """A local timm weight file (with a classifier) of vit_tiny_patch16_224 with ``depth``
    blocks of ``width`` channels."""
    from safetensors.torch import save_file

    torch.manual_seed(depth)
    model = timm.create_model(ARCH, num_classes=5, depth=depth, embed_dim=width, num_heads=2)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(tmp_path / "vit.safetensors"))
    return tmp_path / "vit.safetensors", state


SMALL = {"embed_dim": 48, "num_heads": 2}


def test_foreign_weights_that_leave_blocks_random_are_refused(tmp_path: Path) -> None:
    file, _ = vit_file(tmp_path, depth=4, width=192)  # vit_tiny's width, 4 of its 12 blocks
    spec = f"timm:{ARCH}={file}"
    with pytest.raises(CheckpointError, match=r"blocks\.4\.") as error:
        read_checkpoint(spec)
    message = str(error.value)
    assert "\n" not in message and spec in message
    assert "missing" in message and "encoder.model_kwargs" in message
    assert "encoder.allow_partial_load=true" in message
    with pytest.raises(CheckpointError, match=r"^[^;]*: 96 missing \(e\.g\. blocks\.4\.[^;]*;"):
        timm_checkpoint(spec, {"depth": 12})
    assert len(timm_checkpoint(spec, {"depth": 4})["model"]) == 4 * 12 + 6


def test_foreign_weights_with_blocks_left_over_are_refused(tmp_path: Path) -> None:
    file, _ = vit_file(tmp_path, depth=4)
    with pytest.raises(CheckpointError, match=r"12 left over \(e\.g\. blocks\.3\.") as error:
        timm_checkpoint(f"timm:{ARCH}={file}", {"depth": 3, **SMALL})
    assert " missing (" not in str(error.value)


def test_foreign_weights_of_another_width_are_refused(tmp_path: Path) -> None:
    file, _ = vit_file(tmp_path, depth=4)
    with pytest.raises(CheckpointError, match=r"of another shape \(e\.g\. cls_token "
                                              r"\(1, 1, 48\) vs \(1, 1, 64\)"):
        timm_checkpoint(f"timm:{ARCH}={file}", {"depth": 4, "embed_dim": 64, "num_heads": 2})


def test_foreign_weights_fill_the_architecture_given_in_model_kwargs(tmp_path: Path) -> None:
    file, state = vit_file(tmp_path, depth=4)
    loaded = timm_checkpoint(f"timm:{ARCH}={file}", {"depth": 4, **SMALL})
    backbone = loaded["config"]["backbone"]
    assert backbone["kwargs"] == {"depth": 4, **SMALL} and backbone["img_size"] == 224
    assert set(loaded["model"]) == {key for key in state if not key.startswith("head.")}
    assert all(torch.equal(loaded["model"][key], value) for key, value in state.items()
               if not key.startswith("head."))
    encoder = extract_backbone(loaded, ViTConfig(arch=ARCH, img_size=32, kwargs=backbone["kwargs"]))
    assert len(encoder.blocks) == 4


def test_a_deliberate_partial_load_logs_what_stays_random(tmp_path: Path, caplog) -> None:
    file, state = vit_file(tmp_path, depth=2)
    loaded = timm_checkpoint(f"timm:{ARCH}={file}", {"depth": 3, **SMALL}, allow_partial=True)
    assert "12 of " in caplog.text and "stay randomly initialised" in caplog.text
    assert "blocks.2.attn.qkv.weight" in caplog.text and "blocks.1." not in caplog.text.split(
        "stay randomly initialised")[1].split(";")[0]
    assert torch.equal(loaded["model"]["blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"])
    assert "blocks.2.mlp.fc2.weight" in loaded["model"]
