"""The ``ssit`` command: one subcommand per pipeline step.

A subcommand is a :class:`Subcommand` in :data:`SUBCOMMANDS`: a function that adds its options
to an ``argparse`` parser, a function that runs it, and the exception types that mean "bad
input" (reported as one ``error: ...`` line with exit status 2, no traceback). Heavy imports
happen inside the run functions so that ``ssit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ssit.evaluate.export import EXPORT_HELP, add_export_arguments, export_errors, run_export

__all__ = [
    "SUBCOMMANDS",
    "Subcommand",
    "build_parser",
    "main",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "run_launcher",
]

EXIT_USAGE = 2


@dataclass(frozen=True)
class Subcommand:
    """One ``ssit <name>`` subcommand."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    user_errors: Callable[[], tuple[type[BaseException], ...]]
    """Returns the exception types that are the user's fault (imported lazily)."""


_Number = TypeVar("_Number", int, float)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _parse_number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _parse_number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (not nan or inf)."""
    value = _parse_number(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text!r}")
    return value


def _parse_number(text: str, kind: Callable[[str], _Number], expected: str) -> _Number:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _prepare_errors() -> tuple[type[BaseException], ...]:
    from ssit.prepare.decode import BadImageError
    from ssit.prepare.shard_format import PrepareError
    from ssit.prepare.workers import WorkerDiedError

    return PrepareError, BadImageError, WorkerDiedError


# ---------------------------------------------------------------- ssit synth


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for images + labels.csv")
    parser.add_argument("--n", type=positive_int, default=300, help="number of images (300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--height", type=positive_int, nargs=2, default=(600, 1200),
                       metavar=("MIN", "MAX"), help="image height range in pixels (600 1200)")
    shape.add_argument("--sizes", default=None, metavar="WxH,...",
                       help="fixed image sizes, in turn, e.g. 2592x1944,4928x3264 "
                            "('eyepacs': the common EyePACS sizes, 5-16 MP)")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="worker processes (default: all available cores)")


def _synth_run(args: argparse.Namespace) -> int:
    from ssit.prepare.shard_format import PrepareError
    from ssit.prepare.synth import EYEPACS_SIZES, parse_sizes, synthesize

    low, high = args.height
    if not 128 <= low <= high:
        raise PrepareError(f"--height needs 128 <= MIN <= MAX, got {low} {high}")
    sizes = None
    if args.sizes == "eyepacs":
        sizes = list(EYEPACS_SIZES)
    elif args.sizes is not None:
        try:
            sizes = parse_sizes(args.sizes)
        except ValueError as error:
            raise PrepareError(f"--sizes: {error}") from None
    if args.out.exists() and not args.out.is_dir():
        raise PrepareError(f"--out exists and is not a folder: {args.out}")
    labels = synthesize(args.out, args.n, args.seed, height_range=(low, high), sizes=sizes,
                        jobs=args.jobs)
    print(f"wrote {args.n} images and {labels}")
    return 0


# ---------------------------------------------------------------- ssit shards


def _shards_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True,
                        help="folder of fundus photographs (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output shard folder")
    parser.add_argument("--labels", type=Path, default=None,
                        help="CSV with header image,level (EyePACS trainLabels.csv format)")
    parser.add_argument("--dataset", default="eyepacs",
                        help="dataset name, used in shard names (eyepacs)")
    parser.add_argument("--shard-size", type=positive_int, default=1000,
                        help="samples per shard (1000)")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="worker processes (default: all available cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order (0)")
    parser.add_argument("--fast", action="store_true",
                        help="reduced-scale recipe, several times faster; maps close to but "
                             "not equal to the SSiT authors' (default: their recipe, exactly)")
    parser.add_argument("--max-pixels", type=positive_int, default=100_000_000,
                        help="skip images with more pixels than this, before decoding them "
                             "(100000000); bounds the memory of each worker")


def _shards_run(args: argparse.Namespace) -> int:
    from ssit.prepare.shards import write_shards

    report = write_shards(
        args.input,
        args.out,
        labels=args.labels,
        dataset=args.dataset,
        shard_size=args.shard_size,
        jobs=args.jobs,
        seed=args.seed,
        max_pixels=args.max_pixels,
        progress=sys.stderr.isatty(),
        fast=args.fast,
    )
    print(report.summary())
    return 0


# ---------------------------------------------------------------- ssit preview


def _preview_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shard_dir", type=Path, help="shard folder (or a glob of .tar files)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--n", type=positive_int, default=16, help="number of samples (16)")


def _preview_run(args: argparse.Namespace) -> int:
    from ssit.prepare.preview import write_preview

    shown = write_preview(args.shard_dir, args.out, n=args.n)
    print(f"wrote {args.out} ({shown} samples)")
    return 0


# ---------------------------------------------------------------- ssit attention


def _attention_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="training checkpoint (ViT backbone) or file written by `ssit export`")
    parser.add_argument("--shards", type=Path, required=True,
                        help="shard folder (or a glob of .tar files) with saliency maps")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--n", type=positive_int, default=8, help="number of samples (8)")


def _attention_run(args: argparse.Namespace) -> int:
    from ssit.evaluate.attention import write_attention_figure

    shown = write_attention_figure(args.checkpoint, args.shards, args.out, n=args.n)
    print(f"wrote {args.out} ({shown} samples)")
    return 0


def _attention_errors() -> tuple[type[BaseException], ...]:
    from ssit.evaluate.attention import USER_ERRORS

    return (*USER_ERRORS, *_prepare_errors())


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("synth", "write synthetic graded fundus photographs and labels.csv",
               _synth_arguments, _synth_run, _prepare_errors),
    Subcommand("shards", "crop photographs, compute saliency maps and write WebDataset shards",
               _shards_arguments, _shards_run, _prepare_errors),
    Subcommand("preview", "draw a contact sheet of shard samples with their saliency maps",
               _preview_arguments, _preview_run, _prepare_errors),
    Subcommand("attention", "draw crops, saliency maps and the last block's class-token "
               "attention of a checkpoint's ViT", _attention_arguments, _attention_run,
               _attention_errors),
    Subcommand("export", EXPORT_HELP, add_export_arguments, run_export, export_errors),
]


def build_parser(subcommands: Sequence[Subcommand] = SUBCOMMANDS) -> argparse.ArgumentParser:
    """The ``ssit`` argument parser with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="ssit", description="Saliency-guided self-supervised pre-training for DR grading."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for subcommand in subcommands:
        sub = commands.add_parser(subcommand.name, help=subcommand.help,
                                  description=subcommand.help)
        subcommand.add_arguments(sub)
        sub.set_defaults(subcommand=subcommand)
    return parser


def run_launcher(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    launch: Callable[[argparse.Namespace], int],
    user_errors: tuple[type[BaseException], ...],
    argv: Sequence[str] | None = None,
) -> int:
    """Entry point of a ``launch/`` script: parse its options and run it.

    ``key=value`` overrides may stand anywhere among the options. An error in ``user_errors`` is
    reported as one ``error: ...`` line with exit status 2.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    try:
        return launch(args)
    except user_errors as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssit`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    subcommand: Subcommand = args.subcommand
    try:
        return subcommand.run(args)
    except subcommand.user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
