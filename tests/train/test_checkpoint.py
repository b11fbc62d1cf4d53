"""Checkpoint files: atomic saving under a kill, rotation, newest-readable lookup, RNG states."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssit.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    checkpoint_step,
    estimated_checkpoint_bytes,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    record_world_size,
    recorded_data_fingerprint,
    recorded_world_size,
    restore_rng_state,
    rotate_checkpoints,
    save_checkpoint,
    verify_checksum,
)
from tests.train.conftest import REPO_ROOT


def _state(step: int, value: float = 0.0) -> dict:
    return {
        "format": 1, "step": step, "epoch": step // 10, "world_size": 2,
        "model": {"weight": torch.full((3,), float(value))},
        "optimizer": {"state": {}, "param_groups": []},
        "pipeline_states": ["rank0-state", "rank1-state"],
        "rng_states": [capture_rng_state(), capture_rng_state()],
    }


def test_names_encode_the_step(tmp_path):
    assert checkpoint_path(tmp_path, 42).name == "checkpoint-00000042.pt"
    assert checkpoint_step("checkpoint-00000042.pt") == 42
    assert checkpoint_step("checkpoint-123456789.pt") == 123456789
    for other in ("checkpoint-42.pt", ".checkpoint-00000042.pt.tmp-7",
                  "checkpoint-00000042.pt.unreadable", "checkpoint-0000004a.pt", "model.pt"):
        assert checkpoint_step(other) is None, other
    with pytest.raises(ValueError, match="step must be >= 0"):
        checkpoint_path(tmp_path, -1)


def test_save_writes_one_complete_file_and_round_trips(tmp_path):
    path = save_checkpoint(_state(7, 1.5), tmp_path / "ckpt", keep=3)
    assert path == tmp_path / "ckpt" / "checkpoint-00000007.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint-00000007.pt"]
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["pipeline_states"] == ["rank0-state", "rank1-state"]
    assert torch.equal(loaded["model"]["weight"], torch.full((3,), 1.5))


def test_listing_is_ordered_by_step_and_ignores_other_files(tmp_path):
    for step in (30, 4, 100):
        save_checkpoint(_state(step), tmp_path, keep=10)
    (tmp_path / ".checkpoint-00000200.pt.tmp-99").write_bytes(b"partial")
    (tmp_path / "checkpoint-00000300.pt.unreadable").write_bytes(b"bad")
    (tmp_path / "notes.txt").write_text("x")
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [4, 30, 100]
    assert list_checkpoints(tmp_path / "missing") == []


def test_world_size_record_counts_only_with_checkpoints(tmp_path):
    assert recorded_world_size(tmp_path / "absent") is None
    record_world_size(tmp_path, 8)
    assert recorded_world_size(tmp_path) is None  # no checkpoint yet
    checkpoint_path(tmp_path, 5).write_bytes(b"")
    assert recorded_world_size(tmp_path) == 8
    record_world_size(tmp_path, 2)
    assert recorded_world_size(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000005.pt", "ranks.json"]


def test_the_record_carries_the_fingerprint_of_the_shards(tmp_path):
    fingerprint = {"digest": "a" * 64, "source": "manifest.json of shards/demo"}
    record_world_size(tmp_path, 2, fingerprint)
    assert recorded_data_fingerprint(tmp_path) is None  # no checkpoint yet
    checkpoint_path(tmp_path, 5).write_bytes(b"")
    assert recorded_data_fingerprint(tmp_path) == fingerprint
    assert recorded_world_size(tmp_path) == 2
    (tmp_path / "ranks.json").write_text('{"world_size": 2}')  # written before it was recorded
    assert recorded_data_fingerprint(tmp_path) is None and recorded_world_size(tmp_path) == 2
    (tmp_path / "ranks.json").write_text('{"world_size": 2, "data_fingerprint": {"digest": 3}}')
    assert recorded_data_fingerprint(tmp_path) is None


@pytest.mark.parametrize("text", ["", "{", "[]", '{"world_size": "8"}', '{"world_size": 0}'])
def test_damaged_world_size_record_is_ignored(tmp_path, text):
    checkpoint_path(tmp_path, 5).write_bytes(b"")
    (tmp_path / "ranks.json").write_text(text)
    assert recorded_world_size(tmp_path) is None


def test_rotation_keeps_the_newest(tmp_path):
    for step in range(1, 6):
        save_checkpoint(_state(step), tmp_path, keep=2)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [4, 5]
    assert rotate_checkpoints(tmp_path, keep=1) == [checkpoint_path(tmp_path, 4)]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        save_checkpoint(_state(9), tmp_path, keep=0)


def test_latest_is_the_highest_step(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    for step in (10, 200, 30):
        save_checkpoint(_state(step, step), tmp_path, keep=5)
    path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "checkpoint-00000200.pt" and state["step"] == 200


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_a_checkpoint"])
def test_unreadable_newest_falls_back_with_a_warning(tmp_path, caplog, damage):
    for step in (1, 2, 3):
        save_checkpoint(_state(step, step), tmp_path, keep=5)
    newest = checkpoint_path(tmp_path, 3)
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(4096))
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        torch.save({"weight": torch.zeros(2)}, newest)
    with caplog.at_level(logging.WARNING, logger="ssit.train.checkpoint"):
        path, state = load_latest_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 2) and state["step"] == 2
    assert "checkpoint-00000003.pt is unreadable" in caplog.text
    assert "falling back" in caplog.text
    # The damaged file is set aside, so later scans and rotations do not trip on it again.
    assert (tmp_path / "checkpoint-00000003.pt.unreadable").exists()
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [1, 2]


def test_no_readable_checkpoint_is_an_error(tmp_path):
    save_checkpoint(_state(5), tmp_path, keep=5)
    checkpoint_path(tmp_path, 5).write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="no readable checkpoint in"):
        load_latest_checkpoint(tmp_path)


def test_load_refuses_incomplete_or_foreign_files(tmp_path):
    path = tmp_path / "checkpoint-00000001.pt"
    state = _state(1)
    del state["pipeline_states"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="is not a pre-training checkpoint: it lacks "
                       "pipeline_states"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="it holds a list, not a dictionary"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"cannot read absent\.pt: No such file"):
        load_checkpoint(tmp_path / "absent.pt")


class _Foreign:
    """An object ``torch.load(weights_only=True)`` refuses to unpickle."""


@pytest.mark.parametrize("damage,message", [
    ("truncate", r"checkpoint-00000003.pt is truncated \(\d+ bytes\): the file ends before its "
                 "index"),
    ("empty", r"checkpoint-00000003.pt is empty \(0 bytes\)"),
    ("garbage", r"checkpoint-00000003.pt is not a checkpoint \(not a file written by torch.save\)"),
    ("format", r"written by another version of ssit \(checkpoint format 99; this version "
               r"reads 1\)"),
    ("objects", r"written by another version of ssit or torch: it holds objects this version "
                "does not load"),
])
def test_checkpoint_errors_say_what_is_wrong_in_words(tmp_path, damage, message):
    save_checkpoint(_state(3), tmp_path, keep=5)
    path = checkpoint_path(tmp_path, 3)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01" * 4000)
    elif damage == "format":
        torch.save({**_state(3), "format": 99}, path)
    else:
        torch.save({**_state(3), "extra": _Foreign()}, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=rf"no readable checkpoint in .*{message}.*resubmit "
                       "with --restart to train again from step 0"):
        load_latest_checkpoint(tmp_path)


def _flip_a_byte_inside(path: Path, pattern: bytes) -> None:
    data = bytearray(path.read_bytes())
    where = data.find(pattern)
    assert where > 0, "the tensor's bytes are not in the file"
    data[where + 1] ^= 0x04
    path.write_bytes(bytes(data))


def test_checksum_is_verified_and_bit_rot_falls_back(tmp_path, caplog):
    for step in (1, 2):
        save_checkpoint(_state(step, 1.25 * step), tmp_path, keep=5)
    newest = checkpoint_path(tmp_path, 2)
    assert verify_checksum(newest)
    # One changed bit in the weights: the file still loads with torch, but not with us.
    _flip_a_byte_inside(newest, torch.full((3,), 2.5).numpy().tobytes())
    assert torch.load(newest, weights_only=True)["model"]["weight"][0] != 2.5
    with pytest.raises(CheckpointError, match=r"checkpoint-00000002\.pt is damaged: its contents "
                       "do not match the checksum saved with it"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="ssit.train.checkpoint"):
        path, state = load_latest_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 1) and state["step"] == 1
    assert "is damaged" in caplog.text and "falling back" in caplog.text


def test_checkpoint_without_checksum_still_loads_with_a_warning(tmp_path, caplog):
    path = checkpoint_path(tmp_path, 4)
    torch.save(_state(4), path)
    assert not verify_checksum(path)
    with caplog.at_level(logging.WARNING, logger="ssit.train.checkpoint"):
        assert load_checkpoint(path)["step"] == 4
    assert "has no checksum" in caplog.text


def test_size_estimate_counts_shared_storage_once(tmp_path):
    weight = torch.zeros(2**20)  # 4 MiB
    state = {**_state(1), "model": {"a": weight, "b": weight[:10]}}
    estimate = estimated_checkpoint_bytes(state)
    assert 4 * 2**20 < estimate < 9 * 2**20
    save_checkpoint(state, tmp_path, keep=2)
    written = checkpoint_path(tmp_path, 1).stat().st_size
    assert written <= estimate
    bigger = estimated_checkpoint_bytes({"step": 2}, list_checkpoints(tmp_path))
    assert bigger >= written


@pytest.fixture
def small_filesystem(tmp_path):
    """A 12 MiB tmpfs: a real file system that fills up (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_refused_before_writing_with_the_room_a_save_needs(small_filesystem):
    state = {**_state(1), "model": {"weight": torch.zeros(2**20)}}  # 4 MiB per checkpoint
    save_checkpoint(state, small_filesystem, keep=3)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({**state, "step": 2}, small_filesystem, keep=3)
    message = str(info.value)
    assert message.startswith(f"No space left on device for checkpoint-00000002.pt in "
                              f"{small_filesystem}: a checkpoint needs about 8 MB and ")
    assert message.endswith(
        "are free, beside the 1 checkpoint(s) kept while it is written (checkpoint.keep=3): "
        "free space there (lowering checkpoint.keep frees nothing: the newest complete "
        "checkpoint stays until the new one is written)")
    # The earlier checkpoint is intact and nothing partial is left behind.
    assert [p.name for p in small_filesystem.iterdir()] == ["checkpoint-00000001.pt"]
    assert load_checkpoint(checkpoint_path(small_filesystem, 1))["step"] == 1


def _leave_free(directory: Path, free_bytes: int) -> None:
    """Fill the file system of ``directory`` until about ``free_bytes`` are left."""
    filler = directory.parent / f"{directory.name}-filler"
    filler.write_bytes(bytes(max(0, shutil.disk_usage(directory).free - free_bytes)))


def _mib_state(step: int, mebibytes: int) -> dict:
    return {**_state(step), "model": {"weight": torch.zeros(mebibytes * 2**18)}}


def test_save_deletes_the_oldest_checkpoint_before_writing_when_keep_allows(small_filesystem):
    """keep=2 and two 3 MiB checkpoints on 12 MiB: the third fits once the first is gone."""
    directory = small_filesystem / "checkpoints"
    for step in (1, 2):
        save_checkpoint(_mib_state(step, 3), directory, keep=2)
    assert shutil.disk_usage(directory).free < estimated_checkpoint_bytes(_mib_state(3, 3))
    save_checkpoint(_mib_state(3, 3), directory, keep=2)
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-00000002.pt",
                                                             "checkpoint-00000003.pt"]
    assert load_latest_checkpoint(directory)[1]["step"] == 3


def test_lowering_keep_as_the_full_disk_message_says_makes_room(small_filesystem):
    directory = small_filesystem / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(_mib_state(step, 2), directory, keep=3)
    needed = estimated_checkpoint_bytes(_mib_state(4, 2), list_checkpoints(directory))
    size = checkpoint_path(directory, 1).stat().st_size
    # Room for the new checkpoint once two old ones are gone, not once only one is.
    _leave_free(directory, needed - size * 3 // 2)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(_mib_state(4, 2), directory, keep=3)
    assert str(info.value).endswith(
        "beside the 2 checkpoint(s) kept while it is written (checkpoint.keep=3): free space "
        "there or lower checkpoint.keep (a save first deletes the oldest checkpoints beyond "
        "checkpoint.keep - 1)")
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-00000002.pt",
                                                             "checkpoint-00000003.pt"]
    save_checkpoint(_mib_state(4, 2), directory, keep=2)
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-00000003.pt",
                                                             "checkpoint-00000004.pt"]


def test_keep_1_keeps_the_complete_checkpoint_until_the_new_one_is_written(small_filesystem):
    directory = small_filesystem / "checkpoints"
    save_checkpoint(_mib_state(1, 3), directory, keep=1)
    _leave_free(directory, 5 * 2**20)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(_mib_state(2, 3), directory, keep=1)
    assert "beside the 1 checkpoint(s) kept while it is written (checkpoint.keep=1): free " \
           "space there (lowering checkpoint.keep frees nothing" in str(info.value)
    assert load_latest_checkpoint(directory)[1]["step"] == 1
    (small_filesystem / "checkpoints-filler").unlink()
    save_checkpoint(_mib_state(2, 3), directory, keep=1)
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-00000002.pt"]


def test_disk_filling_up_during_a_save_says_no_space_left(small_filesystem):
    save_checkpoint(_state(1), small_filesystem, keep=3)
    # Pickled text is not counted in the estimate, so the check passes and the write fails.
    state = {**_state(2), "pipeline_states": ["x" * 16 * 2**20, "y"]}
    with pytest.raises(CheckpointError, match=r"No space left on device for "
                       r"checkpoint-00000002\.pt"):
        save_checkpoint(state, small_filesystem, keep=3)
    assert [p.name for p in small_filesystem.iterdir()] == ["checkpoint-00000001.pt"]


def _start_saver(directory: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train.workers", "save", str(directory), mode],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"saver exited early ({proc.returncode}): {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("saver never reached the point where it should be killed")
        time.sleep(0.002)


def _assert_only_first_checkpoint(directory: Path) -> None:
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-00000001.pt"]
    path, state = load_latest_checkpoint(directory)
    assert path.name == "checkpoint-00000001.pt"
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.arange(4.0))
    # The interrupted save leaves only its hidden temporary file, which the next save clears.
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".checkpoint-")]
    assert leftovers, "the kill should have hit while the temporary file existed"
    save_checkpoint({**state, "step": 3}, directory, keep=3)
    assert not [p for p in directory.iterdir() if p.name.startswith(".checkpoint-")]


@pytest.mark.slow
def test_kill_inside_a_save_keeps_the_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    proc = _start_saver(directory, "blocking")
    _wait_for((tmp_path / "marker").exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_only_first_checkpoint(directory)


@pytest.mark.slow
def test_kill_while_writing_a_huge_tensor_keeps_the_previous_checkpoint(tmp_path):
    # The 256 MB tensor takes a while to write and fsync; kill once part of it is on disk.
    for attempt in range(3):
        directory = tmp_path / f"ckpt{attempt}"
        proc = _start_saver(directory, "huge")

        def partly_written(directory=directory) -> bool:
            return any(p.name.startswith(".checkpoint-") and p.stat().st_size > 2**20
                       for p in directory.glob(".checkpoint-*"))

        try:
            _wait_for(partly_written, proc)
        except FileNotFoundError:
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Whatever the moment of the kill, no partial file may carry a checkpoint name.
        for path in list_checkpoints(directory):
            load_checkpoint(path)
        if checkpoint_path(directory, 2).exists():
            continue  # the save finished before the kill landed; try again
        _assert_only_first_checkpoint(directory)
        return
    pytest.fail("could not kill the saver while it was writing")


def test_rng_state_round_trips():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = capture_rng_state()
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(saved)
    assert random.random() == expected[0]
    assert np.array_equal(np.random.rand(3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])


def test_rng_state_survives_a_checkpoint_file(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = _state(1)
    state["rng_states"] = [capture_rng_state()]
    expected = (random.random(), np.random.rand(2), torch.rand(2))
    path = save_checkpoint(state, tmp_path, keep=1)
    restore_rng_state(load_checkpoint(path)["rng_states"][0])
    assert random.random() == expected[0]
    assert np.array_equal(np.random.rand(2), expected[1])
    assert torch.equal(torch.rand(2), expected[2])
