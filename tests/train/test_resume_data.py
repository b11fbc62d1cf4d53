"""A run resumes only on the shards its checkpoint was trained on, unless told otherwise."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from ssit.config import load_config
from ssit.data.fingerprint import shard_fingerprint
from ssit.train import PretrainConfig, load_checkpoint
from ssit.train.checkpoint import CheckpointError
from ssit.train.resume_data import check_resume_data
from tests.train.conftest import tiny_overrides

pytestmark = [pytest.mark.slow]

TOTAL_STEPS = 12
MIDDLE = "checkpoint-00000006.pt"


def _rebuilt_from_other_photographs(shards: Path, out: Path) -> Path:
    """The shard folder with the photographs of its first two shards exchanged: the same
    names and sample counts, other data (as a rebuild from other photographs gives)."""
    shutil.copytree(shards, out)
    first, second = "demo-000000", "demo-000001"
    for suffix in (".tar", ".idx"):
        (out / f"{first}{suffix}").rename(out / f"swap{suffix}")
        (out / f"{second}{suffix}").rename(out / f"{first}{suffix}")
        (out / f"swap{suffix}").rename(out / f"{second}{suffix}")
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {entry["name"]: entry for entry in manifest["shards"]}
    entries[f"{first}.tar"]["sha256"], entries[f"{second}.tar"]["sha256"] = (
        entries[f"{second}.tar"]["sha256"], entries[f"{first}.tar"]["sha256"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _config(shards: Path, **extra: object) -> PretrainConfig:
    return load_config(PretrainConfig, "demo_tiny_cpu",
                       tiny_overrides(shards, **{"log.every_steps": 3, **extra}))


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory) -> dict[str, Path]:
    """A finished single-process run on a copy of the demo shards, and the other shards."""
    import os

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    from ssit.train import pretrain_main

    base = tmp_path_factory.mktemp("resume_data")
    shards = shutil.copytree(demo_shards, base / "shards")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain_main(_config(shards), base / "run")
    finally:
        torch.set_num_threads(threads)
    return {"run": base / "run", "shards": shards,
            "other": _rebuilt_from_other_photographs(shards, base / "other")}


def _resumable_copy(trained: dict[str, Path], tmp_path: Path) -> Path:
    """The run folder as it was after step 6 (later checkpoint and summary removed)."""
    run = shutil.copytree(trained["run"], tmp_path / "run")
    (run / "checkpoints" / "checkpoint-00000012.pt").unlink()
    (run / "summary.json").unlink()
    return run


def test_checkpoints_record_the_shards_fingerprint(trained):
    state = load_checkpoint(trained["run"] / "checkpoints" / MIDDLE)
    assert state["data_fingerprint"] == shard_fingerprint(trained["shards"])
    assert state["data_fingerprint"]["source"] == (
        f"manifest.json of {trained['shards']} (3 shards)")


def test_the_fingerprint_follows_the_data_not_the_folder(trained, tmp_path):
    moved = shutil.copytree(trained["shards"], tmp_path / "elsewhere")
    assert shard_fingerprint(moved)["digest"] == shard_fingerprint(trained["shards"])["digest"]
    assert shard_fingerprint(trained["other"])["digest"] != (
        shard_fingerprint(trained["shards"])["digest"])
    tars = sorted(trained["shards"].glob("*.tar"))
    (moved / "manifest.json").unlink()  # tars without a manifest: their index files stand in
    unlisted = shard_fingerprint(sorted(moved.glob("*.tar")))
    assert unlisted["source"] == f"index files in {moved} (3 shards)"
    assert unlisted["digest"] == shard_fingerprint(
        [moved / tar.name for tar in tars])["digest"]


def test_resume_on_other_shards_is_refused_in_one_line(trained, tmp_path):
    from ssit.train import pretrain_main

    run = _resumable_copy(trained, tmp_path)
    with pytest.raises(CheckpointError) as error:
        pretrain_main(_config(trained["other"]), run)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot resume {run / 'checkpoints' / MIDDLE}: it was trained on "
                              "shards with fingerprint ")
    assert f"(from manifest.json of {trained['shards']} (3 shards))" in message
    assert f"(from manifest.json of {trained['other']} (3 shards))" in message
    assert "set data.allow_other_shards=true" in message


def test_other_shards_on_purpose_resume_and_the_log_says_so(trained, tmp_path):
    from ssit.train import pretrain_main

    run = _resumable_copy(trained, tmp_path)
    outcome = pretrain_main(_config(trained["other"], **{"data.allow_other_shards": True}), run)
    assert (outcome.status, outcome.step) == ("completed", TOTAL_STEPS)
    log_text = (run / "log.txt").read_text()
    assert "on other shards on purpose (data.allow_other_shards=true)" in log_text
    final = load_checkpoint(run / "checkpoints" / "checkpoint-00000012.pt")
    assert final["data_fingerprint"] == shard_fingerprint(trained["other"])


def test_a_checkpoint_without_fingerprint_resumes_with_a_warning(trained, tmp_path):
    from ssit.train import pretrain_main

    run = _resumable_copy(trained, tmp_path)
    middle = run / "checkpoints" / MIDDLE
    state = load_checkpoint(middle)
    del state["data_fingerprint"]
    torch.save(state, middle)
    outcome = pretrain_main(_config(trained["shards"]), run)
    assert (outcome.status, outcome.step) == ("completed", TOTAL_STEPS)
    assert "records no fingerprint of its shards" in (run / "log.txt").read_text()


def test_same_shards_resume_without_a_word_about_them(caplog):
    current = {"digest": "a" * 64, "source": "manifest.json of /s (1 shard)"}
    with caplog.at_level(logging.WARNING):
        check_resume_data(dict(current), current, "c.pt", allow_other_shards=False)
    assert not caplog.records
    with pytest.raises(CheckpointError, match=r"fingerprint bbbbbbbbbbbb .* fingerprint aaaa"):
        check_resume_data({"digest": "b" * 64, "source": "x"}, current, "c.pt", False)
