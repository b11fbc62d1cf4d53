"""Jobs on a SLURM cluster through submitit: shared launcher options, the pre-training job.

``executor`` builds submitit executors from the options every launcher shares, ``job`` is the
pre-training job that runs on every rank and survives preemption, ``submit`` checks and submits
it (``launch/pretrain.py``). ``python -m ssit.cluster`` runs one rank without submitit, under
``srun`` (``slurm/pretrain.sbatch``).
"""

from __future__ import annotations

from ssit.cluster.executor import (
    JobResources,
    LaunchError,
    add_slurm_arguments,
    make_executor,
    sbatch_preview,
    slurm_parameters,
)

__all__ = [
    "JobResources",
    "LaunchError",
    "add_slurm_arguments",
    "make_executor",
    "sbatch_preview",
    "slurm_parameters",
]
