"""Peer parity: our SimCLR and DINO beside an independent training built from ``lightly``.

For each method, OURS is planned exactly as the methods table plans it (``_pretrain_plan``,
the same validation as ``launch/pretrain.py --local``) and trained by our loop; the PEER
(``benchmarks.peer_training``) reads the very same planned configuration and trains with
lightly's heads, losses and momentum update in a plain loop of its own. Both start from the
same weights and read the same views from our pipeline, so their losses should agree step by
step up to floating-point rounding; the section shows the mean loss of every epoch side by
side and grades both encoders (kNN and a linear probe) beside the random floor.

MoCo v3 is left out: lightly has no loss of its form (InfoNCE of the query encoder against the
momentum encoder's keys, both directions, scaled by 2 x temperature), so a peer would be our
own loss rewritten rather than an independent one.

Settings (``--setting``): each is a scale of the methods table (set sizes, epochs, backbone)
plus per-method overrides; ``smoke`` checks the wiring only.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from benchmarks.methods_table import (
    FLOOR_GRADING,
    MILD_VIEWS,
    PROTOCOLS,
    REPO,
    SCALES,
    Scale,
    _grade,
    _make_sets,
    _pretrain_plan,
    _slug,
)

logger = logging.getLogger(__name__)

SECTION_KEY = "peer_parity"
COMMAND = "python -m benchmarks.peer_parity --setting {setting} --out BENCHMARKS.md"
COMPARED = ("SimCLR", "DINO")
# setting: (scale of the methods table, compared method -> its overrides after the table's own)
SETTINGS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "smoke": ("smoke", {"SimCLR": (), "DINO": ()}),
    # the methods table's own CPU setting (SimCLR in grey views)
    "table": ("cpu-long", {"SimCLR": (), "DINO": ()}),
    # SimCLR with mild views (crop 0.5-1 and flip only), where instance discrimination is easy
    "mild": ("cpu-long", {"SimCLR": (f"method.augmentation={MILD_VIEWS}",)}),
    # SimCLR with its paper's views (the empty override undoes the table's grey views)
    "paper": ("cpu-long", {"SimCLR": ("method.augmentation={}",)}),
}
DEFAULT_SETTING = "table"
# Our loop then writes every step's loss to TensorBoard (logging only; training is the same).
EVERY_STEP = ("log.every_steps=1",)
SEED = 0
PROTOCOL_NAMES = {"knn": "kNN", "linear": "linear"}


@dataclass(frozen=True)
class Parity:
    """One method trained by our loop and by the peer: every step's loss of each."""

    method: str
    batch_size: int
    steps_per_epoch: int
    ours: list[float]
    peer: list[float]
    ours_checkpoint: str
    peer_checkpoint: str
    minutes: tuple[float, float]  # ours, peer


def setting_of(name: str) -> tuple[Scale, dict[str, tuple[str, ...]]]:
    """The methods-table scale and per-method overrides of setting ``name``."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r} (known: {', '.join(SETTINGS)})")
    scale, overrides = SETTINGS[name]
    return SCALES[scale], overrides


def section_key(setting: str = DEFAULT_SETTING) -> str:
    """The BENCHMARKS.md section of ``setting``."""
    return SECTION_KEY if setting == DEFAULT_SETTING else f"{SECTION_KEY}_{setting}"


def last_of_each_key(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The ``key=value`` overrides that take effect: a later one of a key replaces an earlier."""
    effective = {override.split("=", 1)[0]: override for override in overrides}
    return tuple(effective.values())


def epoch_means(losses: list[float], steps_per_epoch: int) -> list[float]:
    """The mean of each epoch's ``steps_per_epoch`` consecutive step losses."""
    if steps_per_epoch < 1 or not losses or len(losses) % steps_per_epoch:
        raise ValueError(f"{len(losses)} step losses are not whole epochs of "
                         f"{steps_per_epoch} steps")
    return [sum(losses[start:start + steps_per_epoch]) / steps_per_epoch
            for start in range(0, len(losses), steps_per_epoch)]


def nt_xent_chance(batch_size: int) -> float:
    """NT-Xent of projections that tell nothing apart: ``ln(2N - 1)`` for a batch of N
    images (each of the 2N views against the 2N - 1 others)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    return math.log(2 * batch_size - 1)


def step_losses(tensorboard: Path) -> list[float]:
    """The ``train/loss`` scalars our loop wrote under ``tensorboard``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in sorted(events.Scalars("train/loss"), key=lambda e: e.step)]


def compare(scale: Scale, method: str, shards: Path, work: Path,
            overrides: tuple[str, ...] = ()) -> Parity:
    """Train ``method`` on ``shards`` by our loop (``work/ours``) and by the peer
    (``work/peer``) from one planned configuration."""
    from benchmarks.peer_training import train_peer
    from ssit.train.engine import pretrain

    started = time.perf_counter()
    plan = _pretrain_plan(scale, method, SEED, shards, work / "ours", (*overrides, *EVERY_STEP))
    outcome = pretrain(plan.config, plan.run_dir)
    if outcome.status != "completed" or outcome.checkpoint is None:
        raise RuntimeError(f"{method} stopped at step {outcome.step} ({plan.run_dir})")
    ours = step_losses(plan.run_dir / "tensorboard")
    trained = time.perf_counter()
    peer = train_peer(plan.config, work / "peer")
    if len(ours) != len(peer.losses):
        raise RuntimeError(f"{method}: our loop logged {len(ours)} steps, the peer trained "
                           f"{len(peer.losses)}")
    return Parity(method, plan.config.optim.batch_size, peer.steps_per_epoch, ours,
                  peer.losses, str(outcome.checkpoint), str(peer.checkpoint),
                  ((trained - started) / 60, (time.perf_counter() - trained) / 60))


def run(setting: str = DEFAULT_SETTING, work: Path | None = None) -> str:
    """Train and grade both sides of every compared method under ``work`` (default
    ``runs/bench-peer-<setting>``); return the markdown section."""
    scale, overrides = setting_of(setting)
    work = work or REPO / "runs" / f"bench-peer-{setting}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # the methods table's own sets (made there if missing): the same images as its runs
    pretrain_shards, grade_shards = _make_sets(scale, work.parent / f"bench-methods-{scale.name}")
    parities, kappas = [], {}
    for method in overrides:
        folder = work / _slug(method)
        parity = compare(scale, method, pretrain_shards, folder, overrides.get(method, ()))
        parities.append(parity)
        for side, checkpoint in (("ours", parity.ours_checkpoint),
                                 ("peer", parity.peer_checkpoint)):
            kappas[(method, side)] = _grade(scale, checkpoint, SEED, grade_shards,
                                            folder / f"grade-{side}")
            logger.info("%s %s: %s", method, side, kappas[(method, side)])
    kappas[("random encoder", "floor")] = _grade(scale, "random", SEED, grade_shards,
                                                 work / "grade-random", FLOOR_GRADING)
    return format_section(setting, scale, overrides, parities, kappas,
                          (time.perf_counter() - started) / 60)


def _method_table(parity: Parity) -> list[str]:
    ours = epoch_means(parity.ours, parity.steps_per_epoch)
    peer = epoch_means(parity.peer, parity.steps_per_epoch)
    lines = [f"### {parity.method}", ""]
    if parity.method == "SimCLR":
        lines += [f"NT-Xent chance level (batch {parity.batch_size}): ln(2N - 1) = "
                  f"{nt_xent_chance(parity.batch_size):.4f}.", ""]
    largest = max(abs(a - b) for a, b in zip(parity.ours, parity.peer, strict=True))
    lines += [f"First step: ours {parity.ours[0]:.6f}, peer {parity.peer[0]:.6f}; largest "
              f"per-step |difference| {largest:.2e}; "
              f"final-epoch |difference| {abs(ours[-1] - peer[-1]):.2e}. Minutes: ours "
              f"{parity.minutes[0]:.1f}, peer {parity.minutes[1]:.1f}.", "",
              "| epoch | ours (mean loss) | peer (mean loss) | difference |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {epoch} | {a:.4f} | {b:.4f} | {a - b:+.2e} |"
              for epoch, (a, b) in enumerate(zip(ours, peer, strict=True), start=1)]
    return [*lines, ""]


def format_section(setting: str, scale: Scale, overrides: dict[str, tuple[str, ...]],
                   parities: list[Parity], kappas: dict[tuple[str, str], dict[str, float]],
                   total_min: float) -> str:
    """Markdown: per-epoch losses of ours and the peer for each method, then every encoder's
    kappas (``kappas[(row, side)]`` per protocol)."""
    # the scale's own changes of a compared method's recipe, then the setting's overrides
    changes = {method: last_of_each_key((*scale.method_changes.get(method, ()), *values))
               for method, values in overrides.items()}
    changed = "; ".join(f"{method}: `{' '.join(values)}`" for method, values in changes.items()
                        if values) or "none"
    lines = [
        "## Peer parity: our SimCLR and DINO beside an independent lightly training",
        "",
        f"Command: `{COMMAND.format(setting=setting)}`. Setting `{setting}`: methods-table "
        f"scale `{scale.name}` ({scale.pretrain_images} pre-training images, {scale.epochs} "
        f"epoch(s), the first a warm-up, backbone `{' '.join(scale.backbone)}`), seed {SEED}; "
        f"overrides: {changed}. Ours: the methods table's plan and our loop. Peer "
        f"(`benchmarks/peer_training.py`): lightly {version('lightly')}'s projection heads "
        "and losses "
        "(`SimCLRProjectionHead` without BatchNorm, `NTXentLoss`; `DINOProjectionHead`, "
        "`DINOLoss`, `update_momentum`, `cosine_schedule`) in a plain AdamW loop with the same "
        "learning rate, weight decay, clipping and schedules, from the same initial weights "
        "and on the same views (our pipeline, our seed). MoCo v3 is not compared: lightly "
        "has no loss of its form. Grading as in the methods table; the floor is a random "
        f"encoder graded with BatchNorm refresh. Whole run: {total_min:.1f} min.",
        "",
    ]
    for parity in parities:
        lines += _method_table(parity)
    lines += ["| encoder | " + " | ".join(f"{PROTOCOL_NAMES[p]} kappa" for p in PROTOCOLS) + " |",
              "| --- | " + " | ".join("---" for _ in PROTOCOLS) + " |"]
    for (row, side), graded in kappas.items():
        cells = " | ".join(f"{graded[p]['test']:.3f}" for p in PROTOCOLS)
        lines.append(f"| {row} ({side}) | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import replace_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=SETTINGS, default=DEFAULT_SETTING,
                        help=f"setting (default {DEFAULT_SETTING})")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the section into this file (e.g. BENCHMARKS.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    section = run(args.setting)
    print(section)
    if args.out is not None:
        document = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
        args.out.write_text(replace_section(document, section_key(args.setting), section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
