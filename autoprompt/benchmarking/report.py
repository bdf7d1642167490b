"""The benchmark's report: one summary per method and training size, report.md, report.json and plots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from autoprompt.benchmarking.cases import ALL, group_of
from autoprompt.benchmarking.measurement import machine_label
from pipeline.files import atomic_path, save_json

METHODS = ("autoprompt", "nnunet")
METHOD_TITLES = {"autoprompt": "autoprompt", "nnunet": "nnU-Net"}
BASELINES = ("nnunet", "none")
"""``--vs`` choices: nnU-Net v2, or none (autoprompt alone)."""
LOST_DICE = 0.1
"""A class present in a test case's reference counts as lost where its Dice is below this."""
LOST_LISTED = 6
"""The report's "classes lost" cell names this many ``case/class`` pairs at most, then gives the count."""


def summarise_run(
    *,
    method: str,
    size: str,
    train_cases: Sequence[str],
    num_groups: int,
    stamps: dict[str, dict],
    evaluation: dict,
    num_test_cases: int,
    group_regex: str | None,
) -> dict:
    """One method x training size, for report.json: metrics (Dice, HD95), their spread and costs.

    Args:
        stamps: the four part stamps (``seconds``, ``peak_rss_mib``, ``machine``; ``epochs`` in "trained").
        evaluation: the summary of :func:`pipeline.evaluation.evaluate_folders`.
        group_regex: test cases with equal regex group 1 are one group (a patient) for the worst group.
    """
    per_class = {
        name: {metric: _metric(evaluation["mean"][str(value)], metric) for metric in ("dice", "hd95")}
        for name, value in evaluation["labels"].items()
    }
    return {
        "method": method,
        "train_size": size,
        "num_train_groups": num_groups,
        "num_train_cases": len(train_cases),
        "train_cases": list(train_cases),
        "per_class": per_class,
        "mean": {metric: _metric(evaluation["foreground_mean"], metric) for metric in ("dice", "hd95")},
        **_spread(evaluation, group_regex),
        "preprocessing_minutes": stamps["preprocessed"]["seconds"] / 60.0,
        "training_minutes": stamps["trained"]["seconds"] / 60.0,
        "epochs": stamps["trained"].get("epochs"),
        "steps": stamps["trained"].get("steps"),
        "models": stamps["trained"].get("models"),  # autoprompt's ensemble members; absent from older stamps
        "inference_seconds_per_volume": stamps["predicted"]["seconds"] / num_test_cases,
        # where the budget and the timed prediction ran (absent from stamps written before it was recorded)
        "machine": {part: stamps[part].get("machine") for part in ("trained", "predicted")},
        "peak_rss_mib": {
            part: stamps[part]["peak_rss_mib"] for part in ("preprocessed", "trained", "predicted")
        },
    }


def _spread(evaluation: dict, group_regex: str | None) -> dict:
    """``worst_group``: the test group (patient) with the lowest mean Dice over its cases and classes, and
    ``lost``: the ``case/class`` pairs where a class of the reference got a Dice below :data:`LOST_DICE`."""
    names = {str(value): name for name, value in evaluation["labels"].items()}
    by_group: dict[str, list[float]] = {}
    lost = []
    for case in evaluation["metric_per_case"]:
        dice = {label: m["Dice"] for label, m in case["metrics"].items() if label in names}
        scored = [d for d in dice.values() if d is not None and np.isfinite(d)]
        if scored:
            by_group.setdefault(group_of(case["case"], group_regex), []).append(float(np.mean(scored)))
        lost += [
            f"{case['case']}/{names[label]}"
            for label, value in dice.items()
            if case["metrics"][label]["n_ref"] > 0 and (value is None or value < LOST_DICE)
        ]
    worst = min(by_group, key=lambda group: np.mean(by_group[group]), default=None)
    return {
        "worst_group": None if worst is None else {"name": worst, "dice": float(np.mean(by_group[worst]))},
        "lost": lost,
    }


def _metric(means: dict, metric: str) -> float | None:
    """``dice``/``hd95`` from summary.json means: nnU-Net's ``Dice``/``HD95``, or the old lower-case keys
    of summaries written before the change."""
    return means[{"dice": "Dice", "hd95": "HD95"}[metric]] if metric not in means else means[metric]


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _epochs_cell(run: dict) -> str:
    if run["epochs"] is None:
        return "-"
    cell = f"{run['epochs']} ({run['steps']})" if run.get("steps") else str(run["epochs"])
    models = run.get("models") or 1
    return cell + (f" over {models} models" if models > 1 else "")


def _machine_cell(run: dict) -> str:
    """The machine of the training (and of the prediction, where another); "-" where not recorded."""
    machines = run.get("machine") or {}
    trained, predicted = machines.get("trained"), machines.get("predicted")
    if trained is None:
        return "-"
    if predicted is None or predicted == trained:
        return machine_label(trained)
    return f"training: {machine_label(trained)}; inference: {machine_label(predicted)}"


def _worst_cell(run: dict) -> str:
    worst = run.get("worst_group")  # absent from reports written before the spread was recorded
    return "-" if worst is None else f"{worst['name']} ({worst['dice']:.4f})"


def methods_in(report: dict) -> tuple[str, ...]:
    """The methods of :data:`METHODS` that have runs in ``report`` (autoprompt alone with ``--vs none``)."""
    return tuple(m for m in METHODS if any(run["method"] == m for run in report["runs"]))


def _cells(runs: dict[str, dict], methods: Sequence[str], cell: Callable[[dict], str]) -> list[str]:
    """One table cell per method: ``cell`` of its run at this training size, "-" where it has none (a merged
    curve whose sizes come from runs with and without ``--vs none``)."""
    return [cell(runs[m]) if m in runs else "-" for m in methods]


def _lost_cell(run: dict) -> str:
    """The lost ``case/class`` pairs; past :data:`LOST_LISTED` their count and the first few (all in report.json)."""
    if "lost" not in run:
        return "-"
    lost = run["lost"]
    if len(lost) <= LOST_LISTED:
        return ", ".join(lost) or "none"
    cases = len({entry.rsplit("/", 1)[0] for entry in lost})
    return (
        f"{len(lost)} in {cases} test cases: {', '.join(lost[:LOST_LISTED])} and {len(lost) - LOST_LISTED} more "
        "(report.json lists all)"
    )


def _size_title(runs: list[dict], grouped: bool) -> str:
    run = runs[0]
    unit = "groups" if grouped else "cases"
    count = f"{run['num_train_groups']} training {unit}" + (
        f" ({run['num_train_cases']} cases)" if grouped else ""
    )
    return f"{'all ' if run['train_size'] == ALL else ''}{count}"


def format_report(report: dict) -> str:
    """report.md: settings, then per training size a per-class Dice/HD95 table and a cost table."""
    settings = report["settings"]
    grouped = settings["group_regex"] is not None
    unit = "groups" if grouped else "cases"
    sizes = list(dict.fromkeys(run["train_size"] for run in report["runs"]))
    by_size = {
        size: {run["method"]: run for run in report["runs"] if run["train_size"] == size} for size in sizes
    }
    methods = methods_in(report)
    with_nnunet = "nnunet" in methods
    titles = [METHOD_TITLES[m] for m in methods]
    preset = Path(settings["autoprompt_config"]).name
    overrides = (
        f" with {', '.join(settings['autoprompt_overrides'])}" if settings["autoprompt_overrides"] else ""
    )
    lines = [
        f"# Benchmark on {settings['dataset']}: autoprompt" + (" vs nnU-Net v2" if with_nnunet else " alone"),
        "",
        f"- test cases: {len(settings['test_cases'])} ({settings['case_source']}); never used for training or "
        "checkpoint selection",
        f"- training budget: {settings['budget_minutes']:g} min of epochs per method, device {settings['device']}, "
        "all training cases (fold 'all'), final checkpoint; postprocessing: autoprompt decides it from its "
        "training labels (docs/usage.md, predict)"
        + (", nnU-Net none (its rule needs held-out cases)" if with_nnunet else ""),
        f"- autoprompt: configuration {settings['configuration']}, preset {preset}{overrides}",
        *(
            f"- merged from {source['report']} (autoprompt overrides: {', '.join(source['autoprompt_overrides']) or 'none'})"
            for source in settings.get("merged_from", [])
        ),
        *(
            [
                f"- nnU-Net v2: configuration {settings['nnunet_configuration']}, nnUNetTrainer"
                + (
                    f", {settings['nnunet_iterations_per_epoch']} iterations per epoch"
                    if settings["nnunet_iterations_per_epoch"]
                    else ""
                )
            ]
            if with_nnunet
            else []
        ),
        (
            "- mirroring test-time augmentation: on for nnU-Net (rows and columns); for autoprompt only if it trained "
            "on mirrored slices (on the fly or in its cached views: a network that never saw mirrored anatomy "
            "mislabels it), columns only when it trained on cached views"
            if settings["tta"]
            else "- mirroring test-time augmentation: off for both"
        ),
        "- metrics: pipeline.evaluation (MONAI) for both; per class the mean over the test cases, "
        "'mean' = mean over classes; HD95 in mm",
        "- training time is the wall time of the training process (start-up and autoprompt's embedding cache "
        "included); inference is the prediction process's wall time (model loading included) per test volume; "
        "peak memory is the largest resident set of the step's processes",
        "- on Linux every step of both methods runs with glibc's malloc thresholds at 1 GiB (autoprompt.allocator), "
        "unless MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ was set",
    ]
    for size in sizes:
        runs = by_size[size]
        lines += ["", f"## {_size_title(list(runs.values()), grouped)}", ""]
        lines.append("| class | " + " | ".join(f"{t} Dice" for t in titles) + " | "
                     + " | ".join(f"{t} HD95" for t in titles) + " |")  # fmt: skip
        lines.append("|---" * (1 + 2 * len(methods)) + "|")
        for name, value in report["labels"].items():
            if value == 0:
                continue
            dice = _cells(runs, methods, lambda r, n=name: _cell(r["per_class"][n]["dice"], 4))
            hd95 = _cells(runs, methods, lambda r, n=name: _cell(r["per_class"][n]["hd95"], 2))
            lines.append(f"| {name} ({value}) | " + " | ".join(dice + hd95) + " |")
        dice = _cells(runs, methods, lambda r: _cell(r["mean"]["dice"], 4))
        hd95 = _cells(runs, methods, lambda r: _cell(r["mean"]["hd95"], 2))
        lines.append("| **mean** | " + " | ".join(f"**{v}**" for v in dice + hd95) + " |")
        lines += ["", "| spread and cost | " + " | ".join(titles) + " |", "|---" * (1 + len(methods)) + "|"]
        rows = [
            (f"worst test {unit[:-1]} (its mean Dice)", _worst_cell),
            (f"classes lost (Dice < {LOST_DICE:g} where present)", _lost_cell),
            ("preprocessing (min)", lambda r: _cell(r["preprocessing_minutes"], 1)),
            ("training (min)", lambda r: _cell(r["training_minutes"], 1)),
            ("epochs trained (optimiser steps)", _epochs_cell),
            ("inference (s / volume)", lambda r: _cell(r["inference_seconds_per_volume"], 1)),
            ("peak memory, preprocessing (MiB)", lambda r: _cell(r["peak_rss_mib"]["preprocessed"], 0)),
            ("peak memory, training (MiB)", lambda r: _cell(r["peak_rss_mib"]["trained"], 0)),
            ("peak memory, inference (MiB)", lambda r: _cell(r["peak_rss_mib"]["predicted"], 0)),
            ("machine", _machine_cell),
        ]
        lines += [f"| {label} | " + " | ".join(_cells(runs, methods, cell)) + " |" for label, cell in rows]
    if len(sizes) > 1:
        lines += [
            "",
            "## Data efficiency",
            "",
            f"| training {unit} | " + " | ".join(f"{t} Dice" for t in titles) + " |",
        ]
        lines.append("|---" * (1 + len(methods)) + "|")
        for size in sizes:
            runs = by_size[size]
            count = next(iter(runs.values()))["num_train_groups"]
            dice = _cells(runs, methods, lambda r: _cell(r["mean"]["dice"], 4))
            lines.append(f"| {count} | " + " | ".join(dice) + " |")
        lines += ["", "![Dice vs training-set size](data_efficiency.png)"]
    lines += ["", "![Dice per class](dice_by_class.png)", ""]
    return "\n".join(lines)


def write_report(report: dict, report_dir: Path) -> None:
    """report.json, report.md, dice_by_class.png and (several sizes) data_efficiency.png, each atomically."""
    save_json(report, report_dir / "report.json")
    with atomic_path(report_dir / "report.md") as tmp:
        tmp.write_text(format_report(report))
    _plot_dice_bars(report, report_dir / "dice_by_class.png")
    if len({run["train_size"] for run in report["runs"]}) > 1:
        _plot_data_efficiency(report, report_dir / "data_efficiency.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_dice_bars(report: dict, path: Path) -> None:
    """Grouped bars: Dice per class and the mean, one bar per method, for the largest training size."""
    plt = _pyplot()
    largest = report["runs"][-1]["train_size"]
    runs = {run["method"]: run for run in report["runs"] if run["train_size"] == largest}
    names = [name for name, value in report["labels"].items() if value != 0]
    positions = np.arange(len(names) + 1)
    methods = [method for method in methods_in(report) if method in runs]
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(1.6 * len(positions) + 2, 4))
    for index, method in enumerate(methods):
        values = [runs[method]["per_class"][n]["dice"] for n in names] + [runs[method]["mean"]["dice"]]
        axis.bar(positions + (index - (len(methods) - 1) / 2) * width, [v or 0.0 for v in values], width,
                 label=METHOD_TITLES[method])  # fmt: skip
    axis.set_xticks(positions, [*names, "mean"])
    axis.set_ylim(0, 1)
    axis.set_ylabel("Dice")
    axis.set_title(
        f"{report['settings']['dataset']}: test Dice ({_size_title(list(runs.values()), report['settings']['group_regex'] is not None)})"
    )
    axis.legend()
    _save_figure(figure, path)


def _plot_data_efficiency(report: dict, path: Path) -> None:
    """Mean Dice against the number of training groups, one line per method."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in methods_in(report):
        runs = [run for run in report["runs"] if run["method"] == method]
        axis.plot([r["num_train_groups"] for r in runs], [r["mean"]["dice"] or 0.0 for r in runs], marker="o",
                  label=METHOD_TITLES[method])  # fmt: skip
    unit = "groups" if report["settings"]["group_regex"] is not None else "cases"
    axis.set_xlabel(f"training {unit}")
    axis.set_ylabel("mean test Dice")
    axis.set_ylim(0, 1)
    axis.set_title(f"{report['settings']['dataset']}: data efficiency")
    axis.legend()
    _save_figure(figure, path)


def _save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    _pyplot().close(figure)
