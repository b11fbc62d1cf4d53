"""check_views: a batch against its method's declared views, sizes included."""

from __future__ import annotations

import pytest
import torch

from ssit.data.views import VIEW1, ViewSpec
from ssit.methods.base import Method, check_views


class _Declared(Method):
    views = (ViewSpec(VIEW1), ViewSpec(VIEW1, with_map=True), ViewSpec(VIEW1, size=16),
             ViewSpec(VIEW1, with_map=True, size=16))


def _batch(*sides: int, batch: int = 2) -> list[torch.Tensor]:
    return [torch.zeros(batch, 3, side, side) for side in sides]


def _maps(side: int, local: int = 16) -> list[torch.Tensor | None]:
    return [None, torch.zeros(2, 1, side, side), None, torch.zeros(2, 1, local, local)]


def test_views_of_their_own_sizes_pass() -> None:
    check_views(_Declared(), _batch(32, 32, 16, 16), _maps(32))


@pytest.mark.parametrize(("images", "maps", "message"), [
    (_batch(32, 24, 16, 16), _maps(32), r"view 1 has shape \(2, 3, 24, 24\), expected "
                                        r"\(2, 3, 32, 32\)"),
    (_batch(32, 32, 32, 16), _maps(32), r"view 2 has shape .*expected \(2, 3, 16, 16\)"),
    ([*_batch(32, 32, 16), torch.zeros(3, 3, 16, 16)], _maps(32), "view 3 has shape"),
    (_batch(32, 32, 16, 16), _maps(16), r"view 1 needs a saliency map of shape \(2, 1, 32, 32\)"),
    (_batch(32, 32, 16, 16), _maps(32, local=32), "view 3 needs a saliency map"),
    (_batch(32, 32, 16), _maps(32), "needs 4 views, got 3 images"),
    ([torch.zeros(2, 3, 32, 16), *_batch(32, 16, 16)], _maps(32), "view 0 has shape"),
])
def test_mismatches_are_named(images, maps, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_views(_Declared(), images, maps)
