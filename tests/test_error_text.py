from __future__ import annotations

import pytest

from ssit.error_text import first_line, last_line


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
