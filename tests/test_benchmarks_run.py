from __future__ import annotations

from benchmarks.run import replace_section


def test_replace_section_keeps_the_rest() -> None:
    document = "# B\nintro\n<!-- bench:model -->\nold\n<!-- /bench:model -->\nnotes\n"
    updated = replace_section(document, "model", "| new |")
    assert updated == "# B\nintro\n<!-- bench:model -->\n| new |\n<!-- /bench:model -->\nnotes\n"


def test_replace_section_appends_a_missing_stage() -> None:
    updated = replace_section("# B\n", "train", "x")
    assert updated.endswith("<!-- bench:train -->\nx\n<!-- /bench:train -->\n")
    assert replace_section(updated, "train", "y").count("<!-- bench:train -->") == 1
