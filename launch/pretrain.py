"""Submit SSiT pre-training to SLURM through submitit (or run it here with --local).

    python launch/pretrain.py --nodes 4 --partition gpu --time 1440 --output runs/ssit-vits16
    python launch/pretrain.py --local --cpu --config demo_tiny_cpu --output runs/demo
    python launch/pretrain.py --nodes 2 --dry-run optim.lr=5e-4

Resubmitting with the same --output resumes the run from its newest checkpoint; a run folder that
trained before but has no checkpoint left is refused unless --restart says to train from step 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ssit.cli import run_launcher
from ssit.cluster.executor import LaunchError
from ssit.cluster.submit import add_pretrain_arguments, launch_pretrain
from ssit.config import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and submit (or dry-run, or run locally) the pre-training job."""
    return run_launcher(__doc__.split("\n\n")[0], add_pretrain_arguments, launch_pretrain,
                        (ConfigError, LaunchError), argv)


if __name__ == "__main__":
    sys.exit(main())
