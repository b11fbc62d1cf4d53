"""Reading and loading weights: our checkpoints, the authors' layout, wrappers, bad files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ssit.backbones import CheckpointError, checkpoint_state_dict, load_into, read_checkpoint


def small_net(seed: int = 0, width: int = 4) -> nn.Module:
    """A convolution, batch norm (with running statistics) and a linear layer."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))
    net.train()
    net(torch.randn(4, 3, 8, 8))  # moves the BN statistics off their init
    return net.eval()


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_round_trip_through_our_training_checkpoint(tmp_path: Path) -> None:
    net = small_net()
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "step": 7, "optimizer": {}}, path)
    fresh = small_net(seed=1)
    assert not torch.equal(fresh[0].weight, net[0].weight)
    load_into(fresh, checkpoint_state_dict(path), strict=True, what="net")
    assert_same(net, fresh)


def test_the_authors_layout_and_wrapper_prefixes(tmp_path: Path) -> None:
    net = small_net()
    path = tmp_path / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "optimizer": {"state": {}}, "scaler": {}}, path)
    assert set(checkpoint_state_dict(path)) == set(net.state_dict())
    compiled = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}
    for source in (path, compiled, net.state_dict()):
        fresh = small_net(seed=2)
        load_into(fresh, checkpoint_state_dict(source), strict=True, what="net")
        assert_same(net, fresh)


def test_python_objects_and_safetensors(tmp_path: Path) -> None:
    net = small_net()
    rich = tmp_path / "rich.pt"
    torch.save({"model": net.state_dict(), "rng": random.getstate()}, rich)
    assert "rng" in read_checkpoint(rich)
    flat = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(flat))
    fresh = small_net(seed=3)
    load_into(fresh, checkpoint_state_dict(flat), strict=True, what="net")
    assert_same(net, fresh)


def test_strict_and_non_strict_loads(caplog) -> None:
    net = small_net()
    extra = {**net.state_dict(), "projector.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match=r"0 missing keys, 1 unexpected keys \(e\.g\. proj"):
        load_into(small_net(seed=1), extra, strict=True, what="net")
    partial = {k: v for k, v in net.state_dict().items() if not k.startswith("5.")}
    with pytest.raises(CheckpointError, match="2 missing keys"):
        load_into(small_net(seed=1), partial, strict=True, what="net")
    fresh = small_net(seed=1)
    load_into(fresh, extra, strict=False, what="net")
    assert "projector.weight" in caplog.text
    assert torch.equal(fresh[0].weight, net[0].weight)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_unreadable_files_raise(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(path)


def test_missing_file_and_wrong_contents_raise(tmp_path: Path) -> None:
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
        checkpoint_state_dict({"epoch": 3, "state_dict": {"note": "empty"}})
    with pytest.raises(CheckpointError, match=r"shape mismatch.*0\.weight"):
        load_into(small_net(), small_net(width=6).state_dict(), strict=True, what="net")
