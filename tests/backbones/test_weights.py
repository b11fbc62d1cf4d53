"""Saving and loading SSiT weights: our checkpoints, the authors' layout, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ssit.model import CheckpointError, load_ssit_state_dict, read_checkpoint, ssit_state_dict
from tests.model.conftest import views


def trained(make_ssit, seed: int = 0):
    """A tiny model after one optimiser step (weights and BN statistics off their init)."""
    model = make_ssit(seed=seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_cl, loss_ss = model(*views(seed=seed), momentum=0.9)
    (loss_cl + loss_ss).backward()
    optimizer.step()
    return model


def outputs(model, seed: int = 5) -> list[torch.Tensor]:
    model.eval()
    x1, x2, m1, m2 = views(seed=seed)
    with torch.no_grad():
        return [*model(x1, x2, m1, m2, momentum=1.0), model.segment(x1), model.key_features(x2, m2)]


def assert_same_outputs(a, b) -> None:
    for left, right in zip(outputs(a), outputs(b), strict=True):
        assert torch.equal(left, right)


def test_round_trip_through_our_training_checkpoint(make_ssit, tmp_path: Path) -> None:
    model = trained(make_ssit)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "step": 7, "optimizer": {}}, path)
    fresh = make_ssit(seed=1)
    assert not torch.equal(fresh.predictor[0].weight, model.predictor[0].weight)
    load_ssit_state_dict(fresh, path)
    assert_same_outputs(model, fresh)
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_loads_the_authors_checkpoint_layout_with_module_prefix(make_ssit, tmp_path: Path) -> None:
    model = trained(make_ssit)
    optimizer = torch.optim.AdamW(model.parameters())
    ddp_state = {f"module.{name}": value for name, value in model.state_dict().items()}
    path = tmp_path / "checkpoint_0099.pth.tar"
    torch.save(
        {"epoch": 100, "state_dict": ddp_state, "optimizer": optimizer.state_dict(), "scaler": {}},
        path,
    )
    assert set(ssit_state_dict(path)) == set(model.state_dict())
    fresh = make_ssit(seed=1)
    load_ssit_state_dict(fresh, path)
    assert_same_outputs(model, fresh)


def test_loads_compiled_and_plain_in_memory_state_dicts(make_ssit) -> None:
    model = trained(make_ssit)
    compiled = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    for source in (compiled, model.state_dict()):
        fresh = make_ssit(seed=2)
        load_ssit_state_dict(fresh, source)
        assert_same_outputs(model, fresh)


def test_checkpoint_with_python_objects_and_safetensors(make_ssit, tmp_path: Path) -> None:
    model = make_ssit()
    rich = tmp_path / "rich.pt"
    torch.save({"model": model.state_dict(), "rng": __import__("random").getstate()}, rich)
    assert "rng" in read_checkpoint(rich)
    flat = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(flat))
    fresh = make_ssit(seed=3)
    load_ssit_state_dict(fresh, flat)
    assert_same_outputs(model, fresh)


def test_non_strict_load_of_the_full_model_into_moco_v3(make_ssit, caplog) -> None:
    full = make_ssit()
    baseline = make_ssit(seed=1, pool=None, segmentation=False)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_ssit_state_dict(baseline, full.state_dict())
    load_ssit_state_dict(baseline, full.state_dict(), strict=False)
    assert "saliency_segmentor" in caplog.text
    assert torch.equal(baseline.predictor[0].weight, full.predictor[0].weight)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "cannot read"),
        (b"not a checkpoint at all", "cannot read"),
    ],
)
def test_unreadable_files_raise(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_missing_file_and_wrong_contents_raise(make_ssit, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(broken)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="not a mapping"):
        read_checkpoint(listing)
    with pytest.raises(CheckpointError, match="no model weights"):
        ssit_state_dict({"epoch": 3, "state_dict": {"note": "empty"}})
    small = make_ssit()
    bigger = make_ssit(mlp_dim=128)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_ssit_state_dict(small, bigger.state_dict())
