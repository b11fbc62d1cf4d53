"""Submit grading jobs (fine-tune, linear probe, kNN, semi-supervised) to SLURM via submitit.

    python launch/grade.py --checkpoint runs/ssit/checkpoints/checkpoint-00100000.pt \
        --dataset aptos2019 messidor2 ddr --data data/aptos data/messidor2 data/ddr \
        --protocol finetune --partition gpu --time 720
    python launch/grade.py --checkpoint random --dataset shards --data shards/demo \
        --protocol knn finetune --cpu --local --config grade_tiny_cpu
    python launch/grade.py --protocol semisup --config semisup_eyepacs \
        --checkpoint runs/simclr/checkpoints/checkpoint-00100000.pt \
        --dataset eyepacs --data data/eyepacs --test-dataset messidor2 --test-data data/messidor2
    python launch/grade.py --checkpoint timm:resnet50=weights/resnet50.safetensors ...
    python launch/grade.py --summarize runs/grade-20261122-101500

Each (dataset, protocol) pair is one job with one GPU, all submitted as one job array; the
launcher waits and prints a summary table, one row per job and test set (also written to
summary.json and summary.md). Every job also tests its selected model on each --test-dataset.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ssit.cli import run_launcher
from ssit.cluster.executor import LaunchError
from ssit.cluster.grading import add_grade_arguments, launch_grading
from ssit.config import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and submit (or dry-run, or run locally) the grading jobs."""
    return run_launcher(__doc__.split("\n\n")[0], add_grade_arguments, launch_grading,
                        (ConfigError, LaunchError), argv)


if __name__ == "__main__":
    sys.exit(main())
