from __future__ import annotations

import pytest

from ssit.error_text import first_line, last_line, traceback_tail


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
