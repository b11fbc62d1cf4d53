"""The error of a checkpoint that cannot be used, importable without torch."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or used (e.g. does not fit the model or the run).

    The message is one line.
    """
