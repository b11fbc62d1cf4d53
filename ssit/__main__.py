"""``python -m ssit``: the same as the ``ssit`` command."""

from __future__ import annotations

import sys

from ssit.cli import main

if __name__ == "__main__":
    sys.exit(main())
