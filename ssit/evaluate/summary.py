"""Summary tables over grading jobs: one row per job and test set (and per role for semisup).

The dataset a job was trained on is tested on its own test split (``test``) and on each
external test set it was given; the semi-supervised protocol reports its teacher and its
student side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ssit.evaluate.report import markdown_table

# The file a finished grading job leaves in its folder; the summaries read it.
RESULTS_FILE = "results.json"
SUMMARY_COLUMNS = ("dataset", "protocol", "encoder", "tested on", "model", "kappa", "accuracy",
                   "AUC (>=2)", "sens@0.5", "spec@0.5", "n test")
SEMISUP_COLUMNS = ("role", "split", "AUC", "accuracy", "sens@0.5", "spec@0.5", "Youden thr",
                   "sens@Youden", "spec@Youden", "n", "referable")


def test_set_names(result: Mapping[str, Any]) -> list[str]:
    """``test`` and the external test sets of one job's results."""
    return ["test", *result.get("test_sets", [])]


def summary_rows(result: Mapping[str, Any]) -> list[tuple]:
    """The rows of one job: its selected setting (or each role) on each test set."""
    rows = []
    for name in test_set_names(result):
        tested = "test split" if name == "test" else name
        if result["protocol"] == "semisup":
            for role in ("teacher", "student"):
                metrics = result[role][name]
                rows.append((result["dataset"], "semisup", result["encoder"], tested, role,
                             None, metrics["accuracy"], metrics["auc"],
                             metrics["at_0.5"]["sensitivity"], metrics["at_0.5"]["specificity"],
                             metrics["num_samples"]))
            continue
        metrics = result[name][result["selected"]]
        rows.append((result["dataset"], result["protocol"], result["encoder"], tested,
                     result["selected"], metrics["kappa"], metrics["accuracy"],
                     metrics["referable_auc"], None, None, metrics["num_samples"]))
    return rows


def summary_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Test metrics of several grading jobs, one row per job, test set and role."""
    return markdown_table(SUMMARY_COLUMNS, [row for result in results
                                            for row in summary_rows(result)])


def semisup_table(result: Mapping[str, Any]) -> str:
    """Teacher and student metrics of one semi-supervised job on every evaluated split."""
    rows = []
    for name in ("val", *test_set_names(result)):
        for role in ("teacher", "student"):
            m = result[role][name]
            rows.append((role, name, m["auc"], m["accuracy"], m["at_0.5"]["sensitivity"],
                         m["at_0.5"]["specificity"], m["at_youden"]["threshold"],
                         m["at_youden"]["sensitivity"], m["at_youden"]["specificity"],
                         m["num_samples"], m["num_referable"]))
    return markdown_table(SEMISUP_COLUMNS, rows)
