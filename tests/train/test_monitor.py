"""Run monitoring: the log file per rank, TensorBoard output and the saliency picture."""

from __future__ import annotations

import logging

import pytest
import torch

from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD
from ssit.train.monitor import RunMonitor, saliency_grid


def test_grid_puts_view_target_and_prediction_side_by_side():
    view = torch.zeros(2, 3, 64, 64)  # normalised zeros are the mean colour
    target = torch.ones(2, 1, 64, 64)
    predicted = torch.full((2, 1, 64, 64), 0.25)
    grid = saliency_grid(view, target, predicted)
    assert grid.shape == (3, 2 * 64 + 3 * 2, 3 * 64 + 4 * 2)
    first_view = grid[:, 2:66, 2:66]
    mean = torch.tensor(EYEPACS_MEAN).view(3, 1, 1)
    assert torch.allclose(first_view, mean.expand_as(first_view))
    assert torch.all(grid[:, 2:66, 68:132] == 1.0)
    assert torch.all(grid[:, 2:66, 134:198] == 0.25)


def test_grid_undoes_the_normalisation_and_clamps():
    colour = torch.tensor([0.9, 0.1, 0.5])
    view = ((colour - torch.tensor(EYEPACS_MEAN)) / torch.tensor(EYEPACS_STD)).view(1, 3, 1, 1)
    grid = saliency_grid(view.expand(1, 3, 16, 16), torch.full((1, 1, 16, 16), 3.0),
                         torch.full((1, 1, 16, 16), -1.0))
    assert torch.allclose(grid[:, 2, 2], colour, atol=1e-6)
    assert grid.min() >= 0 and grid.max() <= 1


def test_grid_shows_at_most_max_images():
    grid = saliency_grid(torch.zeros(8, 3, 16, 16), torch.zeros(8, 1, 16, 16),
                         torch.zeros(8, 1, 16, 16), max_images=3)
    assert grid.shape[1] == 3 * 16 + 4 * 2


@pytest.mark.parametrize("rank", [0, 1])
def test_log_file_levels_per_rank(tmp_path, rank):
    monitor = RunMonitor(tmp_path, rank=rank, progress_bar=False)
    logger = logging.getLogger("ssit.train.example")
    try:
        logger.info("an info line")
        logger.warning("a warning line")
        monitor.start(total_steps=10, initial_step=0)
    finally:
        monitor.close()
    logger.warning("after close")
    text = (tmp_path / "log.txt").read_text()
    assert "a warning line" in text and "after close" not in text
    assert ("an info line" in text) == (rank == 0)
    assert ("[rank 1]" in text) == (rank == 1)
    assert (tmp_path / "tensorboard").exists() == (rank == 0)


def test_scalars_and_picture_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = RunMonitor(tmp_path, rank=0, progress_bar=True)
    monitor.start(total_steps=4, initial_step=0)
    for step in range(1, 5):
        monitor.scalars(step, {"loss": 1.0 / step})
        monitor.progress(1, {"loss": 1.0 / step})
    monitor.saliency_picture(4, torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16),
                             torch.ones(2, 1, 16, 16))
    monitor.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [round(e.value, 4) for e in events.Scalars("train/loss")] == [1.0, 0.5, 0.3333, 0.25]
    assert [image.step for image in events.Images("train/view_target_prediction")] == [4]


def test_resumed_run_replaces_events_written_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    crashed = RunMonitor(tmp_path, rank=0, progress_bar=False)
    crashed.start(total_steps=8, initial_step=0)
    for step in range(1, 7):
        crashed.scalars(step, {"loss": 100.0 + step})
    crashed.close()
    resumed = RunMonitor(tmp_path, rank=0, progress_bar=False)
    resumed.start(total_steps=8, initial_step=4)  # the last checkpoint was at step 4
    for step in range(5, 9):
        resumed.scalars(step, {"loss": 200.0 + step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 101.0), (2, 102.0), (3, 103.0), (4, 104.0),
        (5, 205.0), (6, 206.0), (7, 207.0), (8, 208.0)]
