from __future__ import annotations

import importlib
import types

from benchmarks import run
from benchmarks.run import read_section, replace_section


def test_replace_section_keeps_the_rest() -> None:
    document = "# B\nintro\n<!-- bench:model -->\nold\n<!-- /bench:model -->\nnotes\n"
    updated = replace_section(document, "model", "| new |")
    assert updated == "# B\nintro\n<!-- bench:model -->\n| new |\n<!-- /bench:model -->\nnotes\n"


def test_read_section_gives_back_what_replace_section_wrote() -> None:
    document = replace_section("# B\n<!-- bench:model -->\nold\n<!-- /bench:model -->\n",
                               "train", "| a |\n| b |")
    assert read_section(document, "train") == "| a |\n| b |"
    assert read_section(document, "model") == "old"
    assert read_section(document, "pipeline") is None


def test_replace_section_appends_a_missing_stage() -> None:
    updated = replace_section("# B\n", "train", "x")
    assert updated.endswith("<!-- bench:train -->\nx\n<!-- /bench:train -->\n")
    assert replace_section(updated, "train", "y").count("<!-- bench:train -->") == 1


def test_a_stage_may_name_its_own_section(tmp_path, monkeypatch) -> None:
    stages = {
        "model": types.SimpleNamespace(run=lambda: "| model |"),
        "methods_table": types.SimpleNamespace(run=lambda: "| table |",
                                               section_key=lambda: "methods_table_cpu"),
    }
    monkeypatch.setattr(importlib, "import_module",
                        lambda name: stages[name.removeprefix("benchmarks.")])
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# B\n<!-- bench:methods_table_cpu -->\nold\n"
                   "<!-- /bench:methods_table_cpu -->\n")
    assert run.main(["--out", str(out), "--only", "model", "methods_table"]) == 0
    text = out.read_text()
    assert "<!-- bench:methods_table_cpu -->\n| table |\n<!-- /bench:methods_table_cpu -->" in text
    assert "<!-- bench:model -->\n| model |\n<!-- /bench:model -->" in text
    assert "bench:methods_table -->" not in text and "old" not in text
