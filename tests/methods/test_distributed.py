"""Two ranks under real DDP (gloo) against one process on the concatenated batch.

The contrastive loss gathers keys from every rank and offsets each rank's positives by
``N * rank``; if both are right, the mean of the per-rank losses equals the loss of one process
on the whole batch. BatchNorm makes a naive comparison meaningless, because each rank
normalises with its own batch statistics. The tests therefore use two set-ups that keep
per-sample features identical between the two runs:

* BatchNorm in eval mode (running statistics) with distinct data on the two ranks; then the
  DDP-averaged gradients must equal the single-process gradients too.
* BatchNorm in train mode with rank 1 holding rank 0's samples in reverse order, so every rank's
  batch statistics equal those of the concatenated batch. Reversal moves every sample, so a
  missing rank offset would point rank 1's rows at the wrong samples and change the loss.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from ssit.methods.contrastive import contrastive_loss
from tests.gloo_ranks import run_on_ranks
from tests.methods.conftest import run_ssit, tiny_ssit, views

WORLD = 2
LOCAL_BATCH = 4
MOMENTUM = 0.9


def random_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return torch.randn(2, WORLD * LOCAL_BATCH, 16, generator=generator).unbind(0)


def mirrored_views() -> tuple[torch.Tensor, ...]:
    """Rank 0's batch followed by the same samples reversed (rank 1's batch)."""
    return tuple(torch.cat([t, t.flip(0)]) for t in views(batch=LOCAL_BATCH, size=64, seed=21))


def distinct_views() -> tuple[torch.Tensor, ...]:
    return views(batch=WORLD * LOCAL_BATCH, size=64, seed=22)


def local(tensors: tuple[torch.Tensor, ...], rank: int) -> list[torch.Tensor]:
    return [t[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH] for t in tensors]


def model_run(train_bn: bool, batch: list[torch.Tensor], ddp: bool) -> dict[str, object]:
    torch.manual_seed(0)
    model = tiny_ssit()
    model.train(train_bn)
    wrapped = DistributedDataParallel(model) if ddp else model
    loss_cl, loss_ss = run_ssit(wrapped, *batch, momentum=MOMENTUM)
    (loss_cl + loss_ss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"loss_cl": loss_cl.detach(), "loss_ss": loss_ss.detach(), "grads": grads}


def rank_work(rank: int) -> dict[str, object]:
    q, k = random_embeddings()
    q_local, k_local = local((q, k), rank)
    return {
        "function": contrastive_loss(q_local, k_local, 0.2),
        "eval_bn": model_run(False, local(distinct_views(), rank), ddp=True),
        "train_bn": model_run(True, local(mirrored_views(), rank), ddp=True),
    }


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_on_ranks(rank_work, tmp_path_factory.mktemp("ddp"), WORLD)


pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(300)]


def test_contrastive_loss_across_ranks_equals_one_process(rank_results) -> None:
    q, k = random_embeddings()
    single = contrastive_loss(q, k, 0.2)
    mean = sum(r["function"] for r in rank_results) / WORLD
    torch.testing.assert_close(mean, single)
    # Without the gathered keys or the rank offset the per-rank losses would differ from this.
    assert not torch.allclose(rank_results[0]["function"], rank_results[1]["function"])


def test_model_with_running_bn_statistics_matches_in_loss_and_gradients(rank_results) -> None:
    single = model_run(False, list(distinct_views()), ddp=False)
    for name in ("loss_cl", "loss_ss"):
        mean = sum(r["eval_bn"][name] for r in rank_results) / WORLD
        torch.testing.assert_close(mean, single[name], rtol=1e-5, atol=1e-6)
    for name, grad in single["grads"].items():
        for result in rank_results:  # DDP leaves the averaged gradient on every rank
            torch.testing.assert_close(result["eval_bn"]["grads"][name], grad, rtol=1e-4, atol=1e-6)


def test_model_with_batch_statistics_matches_in_contrastive_loss(rank_results) -> None:
    single = model_run(True, list(mirrored_views()), ddp=False)
    for result in rank_results:
        torch.testing.assert_close(
            result["train_bn"]["loss_cl"], single["loss_cl"], rtol=1e-5, atol=1e-6
        )
    # Keys from local data only (no gather) give a different value: the test can fail.
    torch.manual_seed(0)
    lonely = tiny_ssit()
    loss_cl, _ = run_ssit(lonely, *local(mirrored_views(), 1), momentum=MOMENTUM)
    assert not torch.allclose(loss_cl, single["loss_cl"], rtol=1e-3)
