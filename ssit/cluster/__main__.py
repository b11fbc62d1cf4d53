"""``srun python -m ssit.cluster ...``: one rank of the pre-training job without submitit."""

from __future__ import annotations

import sys

from ssit.cluster.job import run_without_submitit

sys.exit(run_without_submitit())
