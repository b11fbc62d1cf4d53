"""The package is layered by pipeline stage: a lower stage never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssit"
STAGES = ("prepare", "data", "backbones", "methods", "train", "evaluate", "cluster")
ENTRY_POINTS = {"cli.py", "__main__.py"}  # the command line sits above every stage


def stage_imports(source: str) -> set[str]:
    """The ``ssit`` stages ``source`` imports, at module level or inside a function."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
    return {m.split(".")[1] for m in modules
            if m.startswith("ssit.") and m.split(".")[1] in STAGES}


def test_stage_imports_reads_every_form_of_import() -> None:
    source = ("import ssit.data.pipeline\nfrom ssit.train import engine\nimport numpy\n"
              "def f():\n    from ssit.cluster.grading import plan_grading\n"
              "from ssit.config import load_config\n")
    assert stage_imports(source) == {"data", "train", "cluster"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_stage(path: Path) -> None:
    parts = path.relative_to(PACKAGE).parts
    if parts[0] in ENTRY_POINTS:
        return
    # shared modules (configuration, atomic writes, error text) sit below every stage
    allowed = STAGES[:STAGES.index(parts[0]) + 1] if parts[0] in STAGES else ()
    higher = stage_imports(path.read_text()) - set(allowed)
    assert not higher, f"{path.relative_to(PACKAGE)} imports the higher stage(s) {higher}"
