"""One-line forms of exception messages, for errors shown to users."""

from __future__ import annotations

import re
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


# A progress bar's redraw (tqdm: "45%|####    | 9/20 [00:03<00:04, 2.5it/s]") or a rule.
_PROGRESS = re.compile(r"\d+%\||\|\s*\d+/\d+\s*\[|\d\s*(it/s|s/it)\b|^[-=_]{4,}$")
# Lines submitit puts around a job's error stream.
_FRAMING = ("Error stream produced:",)
_ERROR = re.compile(r"\w(Error|Exception|Interrupt)\b|\berror\b|\bkilled\b|\bsignal\b|"
                    r"has not produced any output", re.IGNORECASE)


def job_error_line(error: BaseException) -> str:
    """The line of a failed job's error that says why: the last line that reads as an error,
    skipping progress-bar redraws (lines end at carriage returns too); else the last other line.
    """
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines
             if line and not _PROGRESS.search(line) and line not in _FRAMING]
    errors = [line for line in lines if _ERROR.search(line)]
    if errors:
        return errors[-1]
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
