"""``autoprompt evaluate``: Dice, IoU, HD95 and ASD of predicted label maps against references."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprompt.commands.common import data_roots
from autoprompt.errors import AutoPromptError
from autoprompt.paths import dataset_folder_name

DESCRIPTION = """\
Compare predicted label maps with reference label maps, case by case (files are matched by name,
e.g. labelsTs/patient101_frame01.nii.gz with preds/patient101_frame01.nii.gz), and report per class:
Dice, IoU, HD95 (95th-percentile Hausdorff distance, mm) and ASD (average surface distance, mm).

Writes summary.json (per case, per-class means, foreground mean) and summary.csv (one row per case
and class) and prints a table of the means.

Edge cases: a class absent from both files gets no metrics (null; left out of the means); a class in
only one of them gets Dice = IoU = 0 and HD95 = ASD = the image diagonal in mm.

examples:
  autoprompt evaluate -r raw/Dataset027_ACDC/labelsTs -p preds -d 27
  autoprompt evaluate -r labels -p preds --labels 1 2 3 -o results/summary.json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-r",
        "--reference",
        required=True,
        type=Path,
        metavar="REFERENCE_FOLDER",
        help="folder with the reference label maps",
    )
    parser.add_argument(
        "-p",
        "--prediction",
        required=True,
        type=Path,
        metavar="PREDICTION_FOLDER",
        help="folder with the predicted label maps",
    )
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument(
        "-d",
        "--dataset",
        metavar="DATASET",
        help="dataset id or name (27, Dataset027_ACDC) whose dataset.json names the labels (found under --raw)",
    )
    classes.add_argument(
        "--labels",
        nargs="+",
        type=int,
        metavar="VALUE",
        help="foreground label values to evaluate (default: every value found in the references)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="SUMMARY_JSON",
        help="summary JSON to write; summary.csv goes next to it (default: PREDICTION/summary.json)",
    )
    parser.add_argument(
        "-np",
        "--num-processes",
        type=int,
        default=2,
        metavar="N",
        help="cases evaluated in parallel (default: 2)",
    )
    parser.add_argument(
        "--raw",
        metavar="RAW",
        help="folder holding DatasetXXX_Name raw datasets, for -d (default: AUTOPROMPT_RAW, else ./autoprompt_data/raw)",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation import evaluate_folders, format_table
    from pipeline.files import load_json

    labels = args.labels
    if args.dataset is not None:
        raw = data_roots(args).raw
        dataset_json = raw / dataset_folder_name(args.dataset, raw) / "dataset.json"
        if not dataset_json.is_file():
            raise AutoPromptError(f"{dataset_json}: missing; the raw dataset needs its dataset.json")
        try:
            labels = load_json(dataset_json).get("labels")
        except (ValueError, AttributeError) as error:
            raise AutoPromptError(
                f"{dataset_json}: not a valid dataset.json ({error}); fix or regenerate it"
            ) from error
        if not isinstance(labels, dict):
            raise AutoPromptError(
                f"{dataset_json}: has no 'labels' mapping; add one like {{\"background\": 0, ...}}"
            )
    output = args.output or args.prediction / "summary.json"
    summary = evaluate_folders(
        args.reference, args.prediction, labels=labels, output_json=output, num_processes=args.num_processes
    )
    print(format_table(summary))
    print(f"{len(summary['per_case'])} cases; wrote {output} and {output.with_suffix('.csv')}")
    return 0
