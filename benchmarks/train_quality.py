"""Training quality benchmark: plan, preprocess, train fold 0 on the CPU, validate; Dice and time per dataset.

    .venv/bin/python -m benchmarks.train_quality                       # ACDC and Hippocampus, preset 2d_frozen
    .venv/bin/python -m benchmarks.train_quality --datasets 27 --set cache_slice_stride=1
    .venv/bin/python -m benchmarks.train_quality --work /tmp/tq --json benchmarks/results/train_quality.json
    python -m benchmarks.train_quality --datasets 4 --raw DATA --device cuda --json train_quality_cuda.json

For ACDC (../shared/data/Dataset027_ACDC) fold 0 is the common 70/10 patient split
(``splits_patient_70_10.json``, copied as ``splits_final.json``); Hippocampus uses fold 0 of the
5 folds plan-and-preprocess makes. Everything runs on ``--device`` (default the CPU) through the public API
(``plan_and_preprocess``, ``train``); the final validation inside ``train`` predicts the validation
cases with the real Predictor and evaluates them against the raw labels.

Prints a Markdown table (per-class and mean foreground Dice of the final validation; minutes spent
preprocessing, building the embedding cache, training and validating) and writes it as JSON.
A dataset's embedding cache is reused when the work folder is reused (its time then reads ~0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# dataset id -> (folder, group regex for the folds, options of the run: ``--set`` overrides and time budget)
# The precision is ``auto``: bf16 encoder and training steps on this CPU (AVX512-BF16: encoder 1.6x, training
# step 1.7x faster, same box-prompt Dice: benchmarks/precision.py); the final validation then predicts in bf16
# too (the precision the network was trained on). ACDC: 28 training minutes keep the whole run (planning,
# cache of all 160 volumes and final validation included) within the hour of the training quality bar on 2
# cores. Hippocampus: every 4th slice is cached (~1,500 encoder passes instead of ~6,000).
DATASETS = {
    "27": ("Dataset027_ACDC", r"^(patient\d+)_frame\d+$", [], 28.0),
    "4": ("Dataset004_Hippocampus", None, ["cache_slice_stride=4"], 12.0),
}


def run_dataset(
    key: str,
    *,
    work: Path,
    preset: str,
    extra: list[str],
    budget: float | None,
    raw: Path = SHARED,
    device: str = "cpu",
) -> dict:
    from pipeline.experiment_planning import plan_and_preprocess
    from pipeline.training.run import train

    name, group_regex, overrides, default_budget = DATASETS[key]
    preprocessed, results = work / "preprocessed", work / "results"
    started = time.perf_counter()
    folder = plan_and_preprocess(
        raw / name, preprocessed, configurations=("2d",), num_processes=2, group_regex=group_regex
    )
    if name == "Dataset027_ACDC":
        shutil.copyfile(raw / name / "splits_patient_70_10.json", folder / "splits_final.json")
    preprocessing = time.perf_counter() - started
    fold_dir = results / name / f"autoprompt__{preset}__2d" / "fold_0"
    if fold_dir.exists():
        shutil.rmtree(fold_dir)  # a fresh run; the embedding cache in preprocessed/ is kept
    result = train(
        name,
        0,
        preprocessed=preprocessed,
        results=results,
        configuration="2d",
        config=preset,
        overrides=[*overrides, *extra],
        time_budget_minutes=budget if budget is not None else default_budget,
        device=device,
        raw=raw,
    )
    summary = result.validation
    return {
        "dataset": name,
        "preset": preset,
        "device": device,
        "overrides": [*overrides, *extra],
        "dice": {label: summary["mean"][str(value)]["Dice"] for label, value in summary["labels"].items()},
        "mean_dice": summary["foreground_mean"]["Dice"],
        "validation_cases": len(summary["metric_per_case"]),
        "epochs": result.epochs,
        "steps": result.steps,
        "minutes": {
            "preprocessing": preprocessing / 60,
            "embedding_cache": result.timings["cache"] / 60,
            "training": result.timings["training"] / 60,
            "validation": result.timings["validation"] / 60,
            "total": (time.perf_counter() - started) / 60,
        },
        "model_folder": str(result.model_folder),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | per-class Dice | mean Dice | epochs x steps | preprocess | cache | train | validate | total (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        dice = ", ".join(f"{label} {value:.3f}" for label, value in row["dice"].items())
        m = row["minutes"]
        lines.append(
            f"| {row['dataset']} | {dice} | **{row['mean_dice']:.3f}** | {row['epochs']} / {row['steps']} | "
            f"{m['preprocessing']:.1f} | {m['embedding_cache']:.1f} | {m['training']:.1f} | {m['validation']:.1f} | "
            f"{m['total']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--preset", default="2d_frozen", help="trainer preset (default: 2d_frozen)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--time-budget",
        type=float,
        help="training minutes per dataset (default: 28 for ACDC, 12 for Hippocampus)",
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/autoprompt_train_quality"), help="scratch folder"
    )
    parser.add_argument(
        "--raw", type=Path, default=SHARED, help=f"raw root holding the datasets (default: {SHARED})"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ... (passed to train)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "train_quality.json")
    args = parser.parse_args()
    from autoprompt.allocator import retain_freed_memory

    retain_freed_memory()  # as the autoprompt command does

    rows = []
    for key in args.datasets:
        rows.append(
            run_dataset(
                key,
                work=args.work,
                preset=args.preset,
                extra=args.overrides,
                budget=args.time_budget,
                raw=args.raw.resolve(),
                device=args.device,
            )
        )
        print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
