"""Peer parity: our SimCLR and DINO trained beside lightly's parts on the same views."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from lightly.utils.scheduler import cosine_schedule

from benchmarks import peer_parity
from benchmarks.methods_table import SCALES, _pretrain_plan
from benchmarks.peer_parity import (
    COMPARED,
    SETTINGS,
    compare,
    epoch_means,
    format_section,
    last_of_each_key,
    nt_xent_chance,
    setting_of,
)
from benchmarks.peer_training import _cosine, build_peer, warmup_cosine_lr
from ssit.backbones.extract import extract_backbone, resolve_branch
from ssit.data.pipeline import PretrainPipeline
from ssit.methods import create_method
from ssit.methods.dino import cosine_between
from ssit.methods.schedules import ema_momentum
from ssit.methods.simclr import SIMCLR_VIEW, nt_xent_loss
from ssit.train.schedules import learning_rate


def test_epoch_means_average_whole_epochs() -> None:
    assert epoch_means([1.0, 3.0, 2.0, 6.0], 2) == [2.0, 4.0]
    assert epoch_means([1.0, 3.0, 2.0, 6.0], 4) == [3.0]
    for losses, steps in (([1.0] * 5, 2), ([], 2), ([1.0], 0)):
        with pytest.raises(ValueError, match="are not whole epochs"):
            epoch_means(losses, steps)


def test_chance_level_is_nt_xent_of_projections_that_tell_nothing_apart() -> None:
    assert nt_xent_chance(16) == pytest.approx(math.log(31))
    same = torch.ones(16, 8)
    assert float(nt_xent_loss(same, same, 0.1)) == pytest.approx(nt_xent_chance(16), rel=1e-5)
    with pytest.raises(ValueError, match="batch size must be positive"):
        nt_xent_chance(0)


def test_peer_learning_rate_follows_ours() -> None:
    for epoch in (0.0, 0.3, 1.0, 1.7, 2.9, 3.0):
        assert warmup_cosine_lr(epoch, 1e-3, 1, 3, 1e-6) == pytest.approx(
            learning_rate(epoch, 1e-3, 1, 3, 1e-6), rel=1e-9, abs=1e-15)


def test_peer_momentum_and_weight_decay_follow_ours() -> None:
    """lightly's cosine, shifted by one step, is our cosine of the fraction of training done."""
    steps_per_epoch, epochs = 7, 3
    total = steps_per_epoch * epochs
    for step in (0, 1, 10, total - 1):
        epoch = step / steps_per_epoch
        assert _cosine(step, total, 0.99, 1.0) == pytest.approx(
            ema_momentum(epoch, 0.99, epochs), rel=1e-12)
        assert _cosine(step, total, 0.04, 0.4) == pytest.approx(
            cosine_between(epoch, 0.04, 0.4, epochs), rel=1e-12)
    assert _cosine(1, total, 0.04, 0.4) != pytest.approx(cosine_schedule(1, total, 0.04, 0.4),
                                                         rel=1e-6)


def test_every_setting_names_a_scale_and_compared_methods() -> None:
    assert peer_parity.DEFAULT_SETTING in SETTINGS
    for name, (scale, overrides) in SETTINGS.items():
        assert scale in SCALES and set(overrides) <= set(COMPARED)
        assert setting_of(name)[0] is SCALES[scale] and overrides
    assert peer_parity.section_key() == "peer_parity"
    assert peer_parity.section_key("mild") == "peer_parity_mild"
    with pytest.raises(ValueError,
                       match="unknown setting 'huge' \\(known: smoke, table, mild, paper\\)"):
        setting_of("huge")
    with pytest.raises(SystemExit) as exit_info:
        peer_parity.main(["--setting", "huge"])
    assert exit_info.value.code == 2


def test_mild_setting_eases_simclr_views(demo_shards, tmp_path) -> None:
    scale, overrides = setting_of("mild")
    plan = _pretrain_plan(scale, "SimCLR", 0, demo_shards, tmp_path / "run",
                          overrides["SimCLR"])
    views = create_method(plan.config.method, plan.config.backbone).views
    for view in views:
        assert view.augmentation.crop_scale == (0.5, 1.0)
        assert (view.augmentation.jitter_p, view.augmentation.grayscale_p,
                view.augmentation.blur_p) == (0.0, 0.0, 0.0)


def _first_losses(cfg, peer_seed: int, images: list[torch.Tensor]) -> tuple[float, float]:
    """Our loss on one batch from the weights ``cfg.seed`` gives, and the peer's from the
    weights ``peer_seed`` gives (the same drop-path draws for both)."""
    torch.manual_seed(cfg.seed)
    ours = create_method(cfg.method, cfg.backbone).train()
    peer, _ = build_peer(dataclasses.replace(cfg, seed=peer_seed))
    with torch.no_grad():
        torch.manual_seed(0)
        mine = float(next(iter(ours(images, [None] * len(images)).values())))
        torch.manual_seed(0)
        theirs = float(peer.loss(images, 0.0))
    return mine, theirs


@pytest.mark.parametrize("method", COMPARED)
def test_peer_starts_from_our_weights(method: str, demo_shards, tmp_path) -> None:
    """Same weights and views give the same loss; a peer from another seed is seen to differ."""
    cfg = _pretrain_plan(SCALES["smoke"], method, 0, demo_shards, tmp_path / "run").config
    views = create_method(cfg.method, cfg.backbone).views
    pipe = PretrainPipeline(cfg.data.shards, cfg.optim.batch_size, device="cpu", seed=0,
                            img_size=cfg.backbone.img_size, views=views, num_threads=1)
    try:
        images = next(iter(pipe)).images
    finally:
        pipe.close()
    mine, theirs = _first_losses(cfg, cfg.seed, images)
    assert theirs == pytest.approx(mine, rel=1e-5)
    mine, theirs = _first_losses(cfg, cfg.seed + 1, images)
    assert abs(theirs - mine) > 1e-3


@pytest.mark.slow
def test_smoke_trainings_of_ours_and_the_peer_agree(demo_shards, tmp_path) -> None:
    scale = SCALES["smoke"]
    parities = [compare(scale, method, demo_shards, tmp_path / method) for method in COMPARED]
    for parity in parities:
        assert parity.steps_per_epoch == 3 and len(parity.ours) == len(parity.peer) == 3
        assert parity.peer[0] == pytest.approx(parity.ours[0], rel=1e-5)
        assert parity.peer == pytest.approx(parity.ours, rel=1e-4)
        cfg = _pretrain_plan(scale, parity.method, 0, demo_shards, tmp_path / "plan").config
        ours = extract_backbone(parity.ours_checkpoint, cfg.backbone, "auto").state_dict()
        peer = extract_backbone(parity.peer_checkpoint, cfg.backbone, "auto").state_dict()
        assert peer.keys() == ours.keys()
        # the weights moved by up to ~3e-5 in these steps; the two trainings by far less
        for name, value in peer.items():
            torch.testing.assert_close(value, ours[name], rtol=0, atol=1e-5)
        branch = "momentum" if parity.method == "DINO" else "query"  # DINO grades its teacher
        assert resolve_branch(parity.peer_checkpoint, "auto") == branch
        assert resolve_branch(parity.ours_checkpoint, "auto") == branch
    kappas = {("SimCLR", "ours"): {"knn": {"val": 0.3, "test": 0.1},
                                   "linear": {"val": 0.4, "test": 0.2}},
              ("random encoder", "floor"): {"knn": {"val": 0.3, "test": 0.0},
                                            "linear": {"val": 0.4, "test": -0.05}}}
    text = format_section("smoke", scale, {"SimCLR": ("method.temperature=0.2",), "DINO": ()},
                          parities, kappas, total_min=1.25)
    assert "NT-Xent chance level (batch 16): ln(2N - 1) = 3.4340" in text
    assert text.count("| epoch | ours (mean loss) | peer (mean loss) | difference |") == 2
    simclr = epoch_means(parities[0].ours, 3)[0]
    assert f"| 1 | {simclr:.4f} |" in text
    assert "overrides: SimCLR: `method.temperature=0.2`." in text
    assert "| encoder | kNN kappa | linear kappa |" in text
    assert "| SimCLR (ours) | 0.100 | 0.200 |" in text
    assert "| random encoder (floor) | 0.000 | -0.050 |" in text
    assert "--setting smoke --out BENCHMARKS.md" in text and "Whole run: 1.2 min" in text


def test_section_names_the_scales_own_changes_beside_the_settings_overrides() -> None:
    scale = dataclasses.replace(SCALES["smoke"], method_changes={"DINO": ("optim.epochs=20",)})
    text = format_section("table", scale, {"SimCLR": ("method.temperature=0.2",), "DINO": ()},
                          [], {}, total_min=0.0)
    assert ("overrides: SimCLR: `method.temperature=0.2`; DINO: `optim.epochs=20`." in text)
    text = format_section("table", SCALES["smoke"], {"SimCLR": (), "DINO": ()}, [], {},
                          total_min=0.0)
    assert "overrides: none." in text
    # a setting's override of a key the scale changes replaces it, and only it is named
    scale = dataclasses.replace(SCALES["smoke"], method_changes={
        "SimCLR": ("method.augmentation={grayscale_p: 1.0}", "method.temperature=0.2")})
    text = format_section("paper", scale, {"SimCLR": ("method.augmentation={}",)}, [], {},
                          total_min=0.0)
    assert "overrides: SimCLR: `method.augmentation={} method.temperature=0.2`." in text


def test_last_of_each_key_keeps_the_later_override_in_the_earlier_place() -> None:
    assert last_of_each_key(("a=1", "b.c={x: 1}", "a=2", "d=")) == ("a=2", "b.c={x: 1}", "d=")
    assert last_of_each_key(()) == ()


def test_paper_setting_gives_simclr_its_papers_views_back(demo_shards, tmp_path) -> None:
    table_scale, _ = setting_of("table")
    assert "SimCLR" in table_scale.method_changes  # the table changed them; `paper` undoes it
    scale, overrides = setting_of("paper")
    plan = _pretrain_plan(scale, "SimCLR", 0, demo_shards, tmp_path / "run",
                          overrides["SimCLR"])
    views = create_method(plan.config.method, plan.config.backbone).views
    assert all(view.augmentation == SIMCLR_VIEW for view in views)
