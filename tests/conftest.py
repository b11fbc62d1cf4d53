"""Session-wide test data: a small synthetic EyePACS-like photograph folder and its shards.

Both fixtures are built once per test session and shared: treat them as read-only (copy them
into ``tmp_path`` before changing anything).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssit.prepare.shards import write_shards
from ssit.prepare.synth import synthesize

DEMO_IMAGES = 48
DEMO_SHARD_SIZE = 16
DEMO_HEIGHTS = (600, 800)


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of 48 graded synthetic fundus JPEGs (``<n>_left.jpeg`` ...) plus ``labels.csv``."""
    out = tmp_path_factory.mktemp("demo_raw")
    synthesize(out, DEMO_IMAGES, seed=0, height_range=DEMO_HEIGHTS, jobs=2, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_shards(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shard directory written from ``demo_raw`` with labels: dataset ``demo``, 3 shards of 16."""
    out = tmp_path_factory.mktemp("demo_shards") / "demo"
    write_shards(
        demo_raw,
        out,
        labels=demo_raw / "labels.csv",
        dataset="demo",
        shard_size=DEMO_SHARD_SIZE,
        jobs=2,
        seed=0,
        progress=False,
    )
    return out
