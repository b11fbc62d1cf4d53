"""The BENCHMARKS.md section of the GPU check, written from its gpu-check.json record."""

from __future__ import annotations

COMMAND = "make gpu-check   # python -m benchmarks.gpu_check --out gpu-check.json"


def _number(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _verdict(part: dict) -> str:
    if part.get("skipped"):
        return f"skipped ({part['skipped']})"
    if "error" in part:
        return f"FAILED: {part['error'].splitlines()[0][:160]}"
    return "passed" if part.get("passed") else "FAILED"


def _pipeline_lines(part: dict) -> list[str]:
    lines = ["| per-GPU batch | images/s (2 views + maps each) | device memory (GiB) |",
             "| --- | --- | --- |"]
    for row in part.get("throughput", []):
        lines.append(f"| {row['batch']} | {_number(row['images_per_s'])} "
                     f"| {_number(row['device_memory_gib'], 2)} |")
    geometry = part.get("geometry") or {}
    comparison = (part.get("statistics") or {}).get("comparison") or {}
    held = part.get("held_batch") or {}
    lines += [
        "",
        f"Kept batch intact while the next ones are made: {held.get('passed', '-')}. "
        f"Image/map agreement: |r| {_number(geometry.get('own_mean'), 3)} with its own map "
        f"(worst {_number(geometry.get('own_worst'), 3)}), "
        f"{_number(geometry.get('other_view_mean'), 3)} with the other view's "
        f"({'passed' if geometry.get('passed') else 'FAILED'}). CPU vs GPU outputs: largest "
        f"per-channel mean gap {_number(comparison.get('worst_channel_mean_gap'), 3)} "
        f"({'passed' if comparison.get('passed') else 'FAILED'}).",
    ]
    return lines


def _peak(flops: object) -> str:
    return "not in the table" if not isinstance(flops, float) else f"{flops / 1e12:,.0f} TFLOP/s"


def _model_lines(part: dict) -> list[str]:
    lines = [
        f"Model FLOPs per image (forward + backward, both views): "
        f"{_number(part.get('flops_per_image', 0) / 1e9, 1)} GFLOP; precision "
        f"{part.get('precision')}; bf16 peak of this GPU: {_peak(part.get('bf16_peak_flops'))}.",
        "",
        "| batch | torch.compile | images/s | peak memory (GiB) | fits a 40 GB A100 "
        "| share of bf16 peak |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in part.get("rows", []):
        if "skipped" in row:
            lines.append(f"| {row['batch']} | {row['compiled']} | skipped | - | - | - |")
            continue
        share = row.get("share_of_bf16_peak")
        lines.append(
            f"| {row['batch']} | {row['compiled']} | {_number(row['images_per_s'])} "
            f"| {_number(row['peak_memory_gib'], 1)} | {_number(row['fits_a100_40gb'])} "
            f"| {'-' if share is None else f'{100 * share:.0f} %'} |")
    return lines


def _pretrain_lines(part: dict) -> list[str]:
    resume = part.get("pipeline_resume") or {}
    return [
        f"{_number(part.get('steps'))} of {_number(part.get('total_steps'))} steps; USR2 sent "
        f"after step {_number(part.get('signal_sent_after_step'))}, stopped at step "
        f"{_number(part.get('stopped_at_step'))} (mid-epoch: {resume.get('mid_epoch', '-')}), "
        f"resumed: {part.get('resumed', '-')}; losses finite: {part.get('losses_finite', '-')}; "
        f"restored pipeline gives the uninterrupted batches: {resume.get('passed', '-')}; "
        f"{_number(part.get('training_s'), 1)} s of training, "
        f"{_number(part.get('seconds'), 0)} s in all.",
    ]


def _grade_lines(part: dict) -> list[str]:
    lines = []
    for result in part.get("results", []):
        test = next(iter((result.get("test") or {}).values()), {})
        lines.append(f"{result.get('protocol')} of {result.get('encoder')} on "
                     f"{result.get('dataset')} at {result.get('img_size')} px: test kappa "
                     f"{_number(test.get('kappa'), 3)}, accuracy "
                     f"{_number(test.get('accuracy'), 3)} "
                     f"(one epoch on synthetic data: checks the job, not the model).")
    return lines


def format_section(record: dict) -> str:
    """Markdown for the ``gpu-check`` section of BENCHMARKS.md."""
    machine = record.get("machine", {})
    parts = record.get("parts", {})
    smoke = record.get("mode") == "cpu-smoke"
    where = ("CPU smoke run (tiny sizes; figures mean nothing)" if smoke
             else f"1 x {machine.get('gpu')} ({_number(machine.get('gpu_memory_gib'), 0)} GiB)")
    lines = [
        "### GPU check",
        "",
        f"Run {record.get('started', '-')} on {where}, torch {machine.get('torch')}, CUDA "
        f"{machine.get('cuda')}: {'passed' if record.get('passed') else 'FAILED'} in "
        f"{_number(record.get('seconds'), 0)} s. Details: gpu-check.json.",
        "",
    ]
    titles = {"shards": "Synthetic shards", "pipeline": "DALI pipeline on the GPU",
              "model": "Training step of the loop",
              "pretrain": "Preempted and resumed pre-training through the launcher",
              "grade": "Fine-tuning job through the grading launcher"}
    detail = {"pipeline": _pipeline_lines, "model": _model_lines, "pretrain": _pretrain_lines,
              "grade": _grade_lines}
    for name, title in titles.items():
        if name not in parts:
            continue
        part = parts[name]
        lines += [f"**{title}**: {_verdict(part)}.", ""]
        if name in detail and "error" not in part and not part.get("skipped"):
            lines += [*detail[name](part), ""]
    lines.append(f"Command: `{COMMAND}`")
    return "\n".join(lines)
