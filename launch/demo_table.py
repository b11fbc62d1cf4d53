"""Gather the grading runs of ``make demo`` into one table: encoder, protocol, test kappa,
accuracy and referable AUC, with the gain of the pre-trained encoder over the random one.

    python launch/demo_table.py runs/demo/grade

Reads ``<run>/<encoder>/summary.json`` (one grading run per encoder, written by launch/grade.py)
and writes the joined results to ``<run>/summary.json`` and the table to ``<run>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssit.evaluate.report import markdown_table, write_json

COLUMNS = ("encoder", "protocol", "test kappa", "accuracy", "referable AUC", "n test",
           "selected")


def encoder_results(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The results of each encoder's grading run under ``run_dir``, by folder name."""
    found = {path.parent.name: json.loads(path.read_text())
             for path in sorted(run_dir.glob("*/summary.json"))}
    if not found:
        raise FileNotFoundError(f"no grading run under {run_dir} (no */summary.json)")
    return found


def table_rows(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[tuple]:
    """One row per encoder and protocol: the selected setting's metrics on the test split."""
    rows = []
    for encoder, jobs in results.items():
        for job in jobs:
            test = job["test"][job["selected"]]
            rows.append((encoder, job["protocol"], test["kappa"], test["accuracy"],
                         test["referable_auc"], test["num_samples"], job["selected"]))
    return rows


def kappa_gains(rows: Sequence[tuple], encoder: str, floor: str = "random") -> dict[str, float]:
    """Test kappa of ``encoder`` minus that of ``floor``, per protocol both were graded with."""
    kappa = {(row[0], row[1]): row[2] for row in rows}
    return {protocol: kappa[(encoder, protocol)] - kappa[(floor, protocol)]
            for (name, protocol) in kappa if name == encoder and (floor, protocol) in kappa}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="folder holding one grading run per encoder")
    parser.add_argument("--encoder", default="pretrained",
                        help="encoder compared with the random one (default: pretrained)")
    args = parser.parse_args(argv)
    try:
        results = encoder_results(args.run_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = table_rows(results)
    table = markdown_table(COLUMNS, rows)
    write_json([dict(zip(COLUMNS, row, strict=True)) for row in rows],
               args.run_dir / "summary.json")
    (args.run_dir / "summary.md").write_text(table + "\n")
    print(table)
    for protocol, gain in kappa_gains(rows, args.encoder).items():
        print(f"{args.encoder} - random, {protocol}: test kappa {gain:+.3f}")
    print(f"written: {args.run_dir / 'summary.md'} and {args.run_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
