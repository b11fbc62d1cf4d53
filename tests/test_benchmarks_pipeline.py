from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import pipeline_stages, reference_pipeline
from benchmarks.pipeline_stages import StageCost, stage_rows


def test_stage_rows_give_ratios_and_sums() -> None:
    rows = stage_rows([StageCost("a", 2.0, 1.0), StageCost("b", 1.0, 5.0)])
    assert rows == [
        "| a | 2.00 | 1.00 | 2.0 |",
        "| b | 1.00 | 5.00 | 0.2 |",
        "| **sum of the stages** | **3.0** | **6.0** | 0.5 |",
    ]


def test_reference_views_have_the_pipeline_shapes(demo_shards: Path) -> None:
    sample = pipeline_stages.load_samples(demo_shards)[0]
    x1, x2, m1, m2 = reference_pipeline.two_views(sample)
    assert x1.shape == x2.shape == (3, 224, 224)
    assert m1.shape == m2.shape == (1, 224, 224)
    assert float(m1.min()) >= 0.0 and float(m2.max()) <= 1.0
    assert float(x2.min()) < 0.0  # normalised, not in [0, 1]
    assert x1.dtype == m1.dtype == torch.float32


def test_every_stage_is_timed_in_both_pipelines(
    demo_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_stages, "RUNS", 1)
    costs = pipeline_stages.measure_stages(pipeline_stages.load_samples(demo_shards))
    assert len(costs) == 7
    decode = costs[0]
    assert decode.dali_ms > 0.1 and decode.reference_ms > 0.1


def test_too_few_samples_are_refused(demo_shards: Path) -> None:
    samples = pipeline_stages.load_samples(demo_shards)[:3]
    with pytest.raises(ValueError, match="need 32 samples"):
        pipeline_stages.measure_stages(samples)


def test_stage_label_adds_the_detail() -> None:
    assert StageCost("blur", 1.0, 1.0, "view 1").label == "blur (view 1)"
    assert (
        stage_rows([StageCost("blur", 1.0, 2.0, "view 1")])[0]
        == "| blur (view 1) | 1.00 | 2.00 | 0.5 |"
    )
