"""One-line forms of exception messages, for errors shown to users."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message, or its type name when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def last_line(error: BaseException) -> str:
    """The last non-empty line of ``error``'s message (what a wrapped tool said last)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


TRACEBACK_HEADER = "Traceback (most recent call last):"


def traceback_tail(log_text: str, max_lines: int = 12) -> str:
    """The end of a task's error log that says why it failed: from the last traceback on (or
    the last lines when there is none), at most ``max_lines`` non-empty lines, exception last."""
    lines = [line.rstrip() for line in log_text.splitlines() if line.strip()]
    starts = [index for index, line in enumerate(lines) if line.strip() == TRACEBACK_HEADER]
    if starts:
        lines = lines[starts[-1]:]
    return "\n".join(lines[-max_lines:]) if max_lines > 0 else ""


def failure_excerpt(error_logs: Sequence[str | Path]) -> str:
    """Why a job failed, for the console: the traceback at the end of the first of its tasks'
    error logs that holds one, indented under a line naming the log; empty when none does."""
    for path in error_logs:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if TRACEBACK_HEADER in text:
            lines = traceback_tail(text).splitlines()
            return f"{path} ends with:\n" + "".join(f"  {line}\n" for line in lines)
    return ""
