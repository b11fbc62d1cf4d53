from __future__ import annotations

import pytest

from ssit.error_text import first_line, job_error_line, last_line, traceback_tail


@pytest.mark.parametrize(
    ("error", "first", "last"),
    [
        (ValueError("one"), "one", "one"),
        (RuntimeError("\n  head  \n\nmiddle\n tail \n"), "head", "tail"),
        (KeyError(), "KeyError", "KeyError"),
        (OSError("   \n  "), "OSError", "OSError"),
    ],
)
def test_first_and_last_non_empty_lines(error: BaseException, first: str, last: str) -> None:
    assert first_line(error) == first
    assert last_line(error) == last


LOG = """\
starting
Traceback (most recent call last):
  File "a.py", line 1, in <module>
KeyError: 'old'
more output

Traceback (most recent call last):
  File "job.py", line 7, in run
    load(shard)
  File "reader.py", line 3, in load
ValueError: shard demo-000001.tar is truncated
"""


def test_traceback_tail_keeps_the_last_traceback() -> None:
    assert traceback_tail(LOG) == "\n".join(LOG.splitlines()[6:])
    assert traceback_tail(LOG, max_lines=2) == (
        '  File "reader.py", line 3, in load\nValueError: shard demo-000001.tar is truncated')
    assert traceback_tail(LOG, max_lines=0) == ""


def test_traceback_tail_without_a_traceback_gives_the_last_lines() -> None:
    assert traceback_tail("one\n\ntwo\nthree\n", max_lines=2) == "two\nthree"
    assert traceback_tail("") == ""


KILLED_JOB = (
    "Job 16138 (task: 0) with path /runs/a/submitit/16138_0_result.pkl\n"
    "has not produced any output (state: FINISHED)\n"
    "Error stream produced:\n"
    "----------------------------------------\n"
    "2026-12-07 01:40:13,676 vm rank 0 INFO ssit.cluster.job: rank 0 of 1 on vm (pid 16139)\n"
    "\rpretrain:   0%|          | 0/2400 [00:00<?, ?step/s]"
    "\rpretrain:   1%|          | 15/2400 [01:20<4:02:52,  6.11s/step, loss=13.9, img/s=4.487]"
)


def test_job_error_line_skips_progress_bar_redraws() -> None:
    assert "%|" in last_line(RuntimeError(KILLED_JOB))
    assert job_error_line(RuntimeError(KILLED_JOB)) == (
        "has not produced any output (state: FINISHED)")


def test_job_error_line_prefers_the_last_error_of_the_stream() -> None:
    raised = KILLED_JOB.replace(
        "\rpretrain:   0%", "RuntimeError: DataLoader worker (pid 17) is killed by signal\r"
        "pretrain:   0%")
    assert job_error_line(RuntimeError(raised)) == (
        "RuntimeError: DataLoader worker (pid 17) is killed by signal")
    assert job_error_line(RuntimeError("\r 45%|####  | 9/20 [00:03<00:04, 2.5it/s]")) == (
        "RuntimeError")
    assert job_error_line(RuntimeError("plain words\n\r 9/20 [00:03<00:04, 2.5it/s]")) == (
        "plain words")
