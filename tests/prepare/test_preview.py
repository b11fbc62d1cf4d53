from __future__ import annotations

import numpy as np
import pytest

from ssit.prepare.preview import contact_sheet, overlay_saliency
from ssit.prepare.shard_format import PrepareError


def test_overlay_keeps_the_crop_where_saliency_is_zero_and_tints_it_elsewhere():
    crop = np.full((8, 8, 3), 100, np.uint8)
    saliency = np.zeros((8, 8), np.uint8)
    saliency[:, 4:] = 255
    overlaid = overlay_saliency(crop, saliency)
    assert np.array_equal(overlaid[:, :4], crop[:, :4])
    assert not np.array_equal(overlaid[:, 4:], crop[:, 4:])


def test_contact_sheet_grid_and_captions(demo_shards):
    sheet = contact_sheet(demo_shards, n=5, tile=64)
    # 3 columns x 2 rows of 64 px tiles with 22 px captions and 4 px gaps
    assert sheet.shape == (2 * (64 + 22 + 4) + 4, 3 * (64 + 4) + 4, 3)
    caption = sheet[4 + 64 : 4 + 64 + 22, 4 : 4 + 64]
    assert caption.max() == 255  # white text was drawn
    assert contact_sheet(demo_shards, n=500, tile=32).shape[0] > 0  # fewer samples than asked


def test_contact_sheet_rejects_zero_samples(demo_shards):
    with pytest.raises(PrepareError, match="at least 1"):
        contact_sheet(demo_shards, n=0)
