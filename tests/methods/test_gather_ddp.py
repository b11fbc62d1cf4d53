"""Two gloo ranks against one process: the all-gather with gradients, NT-Xent and Smooth-AP.

Each rank holds half of a batch. Each rank's loss averages over its local queries and DDP
averages parameter gradients over ranks, so "the same as one process on the concatenated
batch" means: the mean over ranks of the per-rank losses equals the single-process loss, and
the gradients equal the single-process gradients (for the loss functions alone, the gradient
that reaches a rank's own rows, divided by the number of ranks; for the methods under DDP, the
averaged parameter gradients). The methods run with BatchNorm in eval mode (running statistics)
so that per-sample features do not depend on how the batch is split.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from ssit.backbones import CNNConfig
from ssit.methods.config import GraVISConfig, SimCLRConfig
from ssit.methods.gather import gather_with_gradients
from ssit.methods.gravis import build_gravis, smooth_ap_loss
from ssit.methods.simclr import build_simclr, nt_xent_loss
from tests.gloo_ranks import run_on_ranks

WORLD = 2
LOCAL_IMAGES = 4
K = 3
BACKBONE = CNNConfig(arch="resnet18", img_size=32)
VARIANT = {"normalize": True, "hardness_aware": True}


def embeddings() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two SimCLR views (N, D) and GraVIS rows (N * K, D) of the whole batch, float64."""
    generator = torch.Generator().manual_seed(5)
    n = WORLD * LOCAL_IMAGES
    z1, z2 = torch.randn(2, n, 6, generator=generator, dtype=torch.float64)
    rows = torch.randn(n * K, 6, generator=generator, dtype=torch.float64)
    return z1, z2, rows


def images(views: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(6 + views)
    return list(torch.randn(views, WORLD * LOCAL_IMAGES, 3, 32, 32, generator=generator).unbind(0))


def half(t: torch.Tensor, rank: int) -> torch.Tensor:
    rows = t.shape[0] // WORLD
    return t[rank * rows : (rank + 1) * rows]


def loss_and_grads(loss: torch.Tensor, *inputs: torch.Tensor) -> dict[str, object]:
    loss.backward()
    return {"loss": loss.detach(), "grads": [t.grad.clone() for t in inputs]}


def method_run(name: str, batch: list[torch.Tensor], ddp: bool) -> dict[str, object]:
    torch.manual_seed(0)
    if name == "simclr":
        method = build_simclr(SimCLRConfig(proj_hidden=32, proj_dim=16), BACKBONE)
    else:
        cfg = GraVISConfig(views_per_image=K, proj_hidden=32, proj_dim=16)
        method = build_gravis(cfg, BACKBONE)
    method.eval()
    wrapped = DistributedDataParallel(method) if ddp else method
    (loss,) = wrapped(batch, [None] * len(batch)).values()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters()}
    return {"loss": loss.detach(), "grads": grads}


def rank_work(rank: int) -> dict[str, object]:
    # Gather: rank r contributes rows filled with r + 1; rank r weights the result by r + 1.
    mine = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered, offset = gather_with_gradients(mine)
    weights = torch.arange(4.0)[:, None] * (rank + 1)
    (gathered * weights).sum().backward()
    gather = {"gathered": gathered.detach(), "offset": offset, "grad": mine.grad}

    z1, z2, rows = embeddings()
    local = [half(t, rank).clone().requires_grad_(True) for t in (z1, z2, rows, rows)]
    results = {
        "gather": gather,
        "nt_xent": loss_and_grads(nt_xent_loss(local[0], local[1], 0.1), *local[:2]),
        "smooth_ap": loss_and_grads(smooth_ap_loss(local[2], K), local[2]),
        "smooth_ap_variant": loss_and_grads(smooth_ap_loss(local[3], K, **VARIANT), local[3]),
        "simclr": method_run("simclr", [half(v, rank) for v in images(2)], ddp=True),
        "gravis": method_run("gravis", [half(v, rank) for v in images(K)], ddp=True),
    }
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_on_ranks(rank_work, tmp_path_factory.mktemp("gather_ddp"), WORLD)


pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(300)]


def test_gather_concatenates_in_rank_order_and_sums_gradients(rank_results) -> None:
    expected = torch.tensor([1.0, 1.0, 2.0, 2.0])[:, None].expand(4, 3)
    for rank, result in enumerate(rank_results):
        torch.testing.assert_close(result["gather"]["gathered"], expected)
        assert result["gather"]["offset"] == 2 * rank
        # d/d(own rows) of sum over ranks r' of (r' + 1) * row index * row: (1 + 2) * index
        index = torch.arange(2 * rank, 2 * rank + 2, dtype=torch.float32)[:, None]
        torch.testing.assert_close(result["gather"]["grad"], (3 * index).expand(2, 3))


def test_gather_without_process_group_is_the_identity() -> None:
    tensor = torch.randn(3, 2)
    gathered, offset = gather_with_gradients(tensor)
    assert gathered is tensor and offset == 0


def test_nt_xent_across_ranks_equals_one_process(rank_results) -> None:
    z1, z2, _ = embeddings()
    inputs = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    single = loss_and_grads(nt_xent_loss(*inputs, 0.1), *inputs)
    mean = sum(r["nt_xent"]["loss"] for r in rank_results) / WORLD
    torch.testing.assert_close(mean, single["loss"], rtol=1e-12, atol=1e-12)
    for view in range(2):
        grads = torch.cat([r["nt_xent"]["grads"][view] for r in rank_results]) / WORLD
        torch.testing.assert_close(grads, single["grads"][view], rtol=1e-10, atol=1e-12)
    # Negatives from the local half only give another value: the test can fail.
    lonely = sum(nt_xent_loss(half(z1, r), half(z2, r), 0.1) for r in range(WORLD)) / WORLD
    assert not torch.isclose(lonely, single["loss"])


@pytest.mark.parametrize(("key", "options"), [("smooth_ap", {}), ("smooth_ap_variant", VARIANT)])
def test_smooth_ap_across_ranks_equals_one_process(rank_results, key, options) -> None:
    _, _, rows = embeddings()
    z = rows.clone().requires_grad_(True)
    single = loss_and_grads(smooth_ap_loss(z, K, **options), z)
    mean = sum(r[key]["loss"] for r in rank_results) / WORLD
    torch.testing.assert_close(mean, single["loss"], rtol=1e-12, atol=1e-12)
    grads = torch.cat([r[key]["grads"][0] for r in rank_results]) / WORLD
    torch.testing.assert_close(grads, single["grads"][0], rtol=1e-10, atol=1e-12)
    lonely = sum(smooth_ap_loss(half(rows, r), K, **options) for r in range(WORLD)) / WORLD
    assert not torch.isclose(lonely, single["loss"])


@pytest.mark.parametrize(("name", "views"), [("simclr", 2), ("gravis", K)])
def test_method_under_ddp_equals_one_process(rank_results, name, views) -> None:
    single = method_run(name, images(views), ddp=False)
    mean = sum(r[name]["loss"] for r in rank_results) / WORLD
    torch.testing.assert_close(mean, single["loss"], rtol=1e-5, atol=1e-6)
    # (timm's ResNet blocks start with a zero last BatchNorm, so not every gradient is non-zero.)
    assert single["grads"]["base_encoder.conv1.weight"].abs().sum() > 0
    for param, grad in single["grads"].items():
        for result in rank_results:  # DDP leaves the averaged gradient on every rank
            torch.testing.assert_close(result[name]["grads"][param], grad, rtol=1e-4, atol=1e-6)
