"""One data-efficiency report from several ``autoprompt benchmark`` runs at different training sizes.

Each size of the few-label curve is its own benchmark run (one 30-minute budget per method and size, so
the runs span sessions); this merges their ``report.json`` files into one report (table per size, the
data-efficiency table and plot) written by the benchmark's own report code. The runs must share the
dataset, the test cases, the budget, the device and the configurations; a training size given twice is
an error::

    python -m benchmarks.curve bench_acdc_3/report.json bench_acdc_7/report.json -o benchmarks/results/acdc_curve_cpu

Writes ``OUT/report.json`` (with ``merged_from``: each source and its autoprompt overrides),
``OUT/report.md``, ``OUT/dice_by_class.png`` and ``OUT/data_efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autoprompt.benchmarking.report import write_report

SHARED_SETTINGS = (
    "dataset", "test_cases", "budget_minutes", "device", "configuration", "nnunet_configuration",
    "autoprompt_config", "tta", "group_regex",
)  # fmt: skip
"""Settings every merged run must agree on."""


def merge_reports(reports: list[dict], sources: list[str]) -> dict:
    """The runs of all ``reports`` in one report, ordered by training-set size.

    Raises:
        ValueError: the reports differ in a setting of :data:`SHARED_SETTINGS` or repeat a training size.
    """
    first = reports[0]["settings"]
    for report, source in zip(reports[1:], sources[1:], strict=True):
        differing = [key for key in SHARED_SETTINGS if report["settings"][key] != first[key]]
        if differing:
            raise ValueError(f"{source}: differs from {sources[0]} in {', '.join(differing)}; cannot merge")
    runs = [run for report in reports for run in report["runs"]]
    sizes = [(run["method"], run["num_train_groups"]) for run in runs]
    repeated = sorted({size for size in sizes if sizes.count(size) > 1})
    if repeated:
        raise ValueError(f"training size given twice: {repeated}; pass each size's report once")
    settings = {
        **first,
        "autoprompt_overrides": [],
        "merged_from": [
            {"report": source, "autoprompt_overrides": report["settings"]["autoprompt_overrides"]}
            for report, source in zip(reports, sources, strict=True)
        ],
    }
    runs.sort(key=lambda run: run["num_train_groups"])
    return {"settings": settings, "labels": reports[0]["labels"], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files of benchmark runs")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the merged report")
    args = parser.parse_args()
    try:
        reports = [json.loads(path.read_text()) for path in args.reports]
        merged = merge_reports(reports, [str(path) for path in args.reports])
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(merged, args.out)
    print(f"{args.out / 'report.md'}: {len(merged['runs'])} runs")


if __name__ == "__main__":
    main()
