"""Reading checkpoints a user points at: hostile files run nothing, unverifiable ones warn."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ssit.train.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
from tests.backbones.hostile import LAYOUTS, PAYLOAD_GLOBALS, hostile_file


@pytest.mark.parametrize("payload_name", PAYLOAD_GLOBALS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_resume_reading_refuses_hostile_files(tmp_path: Path, layout: str,
                                              payload_name: str) -> None:
    path, marker = hostile_file(tmp_path, layout, payload_name)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert path.name in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def tiny_training_checkpoint(folder: Path) -> Path:
    state = {"format": 1, "step": 3, "epoch": 0, "world_size": 1, "optimizer": {},
             "pipeline_states": [], "rng_states": [], "model": {"w": torch.ones(2)},
             "config": {"backbone": {"name": "vit", "arch": "vit_tiny_patch16_224",
                                     "img_size": 32,
                                     "kwargs": {"depth": 1, "embed_dim": 16, "num_heads": 1}}}}
    return save_checkpoint(state, folder, keep=1)


def test_readers_warn_when_the_sha256_trailer_is_missing(tmp_path: Path, caplog) -> None:
    from ssit.evaluate.architecture import load_encoder_source

    with_trailer = tiny_training_checkpoint(tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        load_checkpoint(with_trailer)
        load_encoder_source(str(with_trailer))
    assert "checksum" not in caplog.text
    bare = checkpoint_path(tmp_path, 3)
    bare.write_bytes(with_trailer.read_bytes()[: -len(b"\nssit-sha256:") - 65])
    assert torch.load(bare, weights_only=True)["step"] == 3
    for read in (load_checkpoint, lambda path: load_encoder_source(str(path))):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            read(bare)
        assert f"{bare.name} has no checksum (no SHA-256 trailer" in caplog.text
        assert "not verified" in caplog.text
