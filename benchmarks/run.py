"""Run every benchmark and write each one's section into BENCHMARKS.md.

Each module ``benchmarks/<stage>.py`` has ``run() -> str`` returning a markdown section. This
script replaces the text between ``<!-- bench:<key> -->`` and ``<!-- /bench:<key> -->`` in
the output file and leaves everything else in it as it was; the key is the stage's name, or what
its module's ``section_key()`` returns (a stage whose setting depends on the machine).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import time
from pathlib import Path

STAGES = ("prepare", "pipeline", "model", "train", "methods", "backbones", "methods_table",
          "peer_parity")


def replace_section(document: str, stage: str, body: str) -> str:
    """Return ``document`` with the ``stage`` section's body replaced (appended if absent)."""
    start, end = f"<!-- bench:{stage} -->", f"<!-- /bench:{stage} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return document.rstrip() + "\n\n" + block + "\n"


def read_section(document: str, stage: str) -> str | None:
    """The body of the ``stage`` section of ``document``, or None where it has none."""
    start, end = f"<!-- bench:{stage} -->", f"<!-- /bench:{stage} -->"
    found = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), document, re.DOTALL)
    return found.group(1) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    document = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
    for stage in args.only:
        started = time.perf_counter()
        print(f"== benchmark: {stage}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"benchmarks.{stage}")
        section = module.run()
        print(section, flush=True)
        print(f"== {stage} took {time.perf_counter() - started:.0f} s", file=sys.stderr)
        key = module.section_key() if hasattr(module, "section_key") else stage
        document = replace_section(document, key, section)
        args.out.write_text(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
