"""Keep-largest-component rules compared on one folder of predictions made without postprocessing.

A model trained on every case (fold ``all``) cannot choose its postprocessing on held-out cases, so the rule
it applies is chosen here, on cross-validation predictions (e.g. ``fold_K/validation/`` of a
``benchmarks.few_label_cv`` run, which the trainer writes before any postprocessing)::

    python -m benchmarks.postprocessing_rules PREDICTIONS REFERENCES --labels 1 2 3 -o rules.json

Rules compared (each a list of steps for :func:`pipeline.inference.postprocessing.apply_postprocessing`):
``none``; ``foreground`` (all labels as one region); ``per_class`` (each class on its own);
``foreground_then_per_class`` (both, in that order). For each: per-class Dice and HD95, the worst patient,
the lowest (volume, class) Dice and the number of lost (volume, class) pairs, as ``few_label_cv`` reports.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.few_label_cv import link_references, summarise
from pipeline.evaluation import evaluate_folders
from pipeline.files import save_json
from pipeline.inference.postprocessing import apply_postprocessing
from pipeline.io import read_image, write_image


def rules_for(labels: list[int]) -> dict[str, list[list[int]]]:
    """The compared rules as postprocessing steps over ``labels``."""
    per_class = [[label] for label in labels]
    return {
        "none": [],
        "foreground": [list(labels)],
        "per_class": per_class,
        "foreground_then_per_class": [list(labels), *per_class],
    }


def compare_rules(predictions: Path, references: Path, labels: list[int]) -> dict[str, dict]:
    """Summary (see :func:`benchmarks.few_label_cv.summarise`) of every rule of :func:`rules_for`."""
    files = sorted(p for p in predictions.iterdir() if p.name.endswith(".nii.gz"))
    if not files:
        raise SystemExit(
            f"{predictions}: no .nii.gz predictions; give the folder predicted without postprocessing"
        )
    results = {}
    with tempfile.TemporaryDirectory(prefix="postprocessing_rules_") as work:
        matching = link_references([file.name for file in files], references, Path(work) / "references")
        predicted = Path(work) / "predictions"
        predicted.mkdir()
        label_maps = [(file.name, *read_image(file)) for file in files]
        for name, steps in rules_for(labels).items():
            for file_name, label_map, geometry in label_maps:
                write_image(
                    apply_postprocessing(label_map, {"steps": steps}), geometry, predicted / file_name
                )
            summary = evaluate_folders(matching, predicted, labels=labels)
            results[name] = {"steps": steps, **summarise(summary)}
            print(
                name, {k: results[name][k] for k in ("mean_dice", "min_case_class_dice", "lost_case_classes")}
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("predictions", type=Path, help="label maps predicted without postprocessing")
    parser.add_argument("references", type=Path, help="the reference label maps (same file names)")
    parser.add_argument("--labels", type=int, nargs="+", required=True, help="foreground label values")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON to write")
    args = parser.parse_args()
    results = compare_rules(args.predictions, args.references, args.labels)
    save_json({"predictions": str(args.predictions), "rules": results}, args.output)


if __name__ == "__main__":
    main()
