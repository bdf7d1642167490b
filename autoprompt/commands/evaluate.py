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

Writes summary.json in nnU-Net's layout (metric_per_case, mean per class, foreground_mean; Dice, IoU,
TP, FP, FN, TN, n_ref, n_pred, plus HD95 and ASD) and summary.csv (one row per case and class) and
prints a table of the means.

Edge cases: a class absent from both files gets no metrics (null; left out of the means); a class in
only one of them gets Dice = IoU = 0 and HD95 = ASD = the image diagonal in mm. A label value in a file
that is not among the labels evaluated stops the run (one line naming the file). An ignore label
(dataset.json's "ignore", or --ignore-label) is not evaluated, and its voxels in the reference are left
out of every class's metrics, as in nnU-Net.

examples:
  autoprompt evaluate -r raw/Dataset027_ACDC/labelsTs -p preds -d 27
  autoprompt evaluate -r labels -p preds --labels 1 2 3 -o results/summary.json
  autoprompt evaluate labelsTs preds -l 1 2 -il 3                     # nnU-Net's evaluate_simple order
  autoprompt evaluate labelsTs preds -djfile raw/Dataset027_ACDC/dataset.json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folders",
        nargs="*",
        type=Path,
        metavar="REFERENCE_FOLDER PREDICTION_FOLDER",
        help="nnU-Net's order (nnUNetv2_evaluate_simple GT PRED): the same as -r and -p",
    )
    parser.add_argument(
        "-r",
        "--reference",
        type=Path,
        metavar="REFERENCE_FOLDER",
        help="folder with the reference label maps",
    )
    parser.add_argument(
        "-p",
        "--prediction",
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
        "-djfile",
        "--dataset-json",
        type=Path,
        metavar="DATASET_JSON",
        help="a dataset.json whose labels are evaluated (nnU-Net's -djfile)",
    )
    classes.add_argument(
        "--labels",
        "-l",
        nargs="+",
        type=int,
        metavar="VALUE",
        help="foreground label values to evaluate, every value the label maps hold (default: every value "
        "found in the references)",
    )
    parser.add_argument(
        "--ignore-label",
        "-il",
        type=int,
        metavar="VALUE",
        help="label value whose reference voxels are left out of every metric (default: dataset.json's "
        "'ignore' with -d/-djfile, else none)",
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
        help="folder holding DatasetXXX_Name raw datasets, for -d (default: AUTOPROMPT_RAW, else nnUNet_raw, else "
        "./autoprompt_data/raw)",
    )


def _folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """The reference and prediction folders from -r/-p or the two positional folders."""
    if args.folders and (args.reference is not None or args.prediction is not None):
        raise AutoPromptError(
            "folders given twice (positional and -r/-p); give REFERENCE PREDICTION or -r REFERENCE -p PREDICTION"
        )
    if args.folders:
        if len(args.folders) != 2:
            raise AutoPromptError(
                f"{len(args.folders)} positional folder(s); give two, REFERENCE_FOLDER PREDICTION_FOLDER"
            )
        return args.folders[0], args.folders[1]
    if args.reference is None or args.prediction is None:
        raise AutoPromptError("no folders given; pass -r REFERENCE_FOLDER -p PREDICTION_FOLDER")
    return args.reference, args.prediction


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation import evaluate_folders, format_table
    from pipeline.files import load_json

    reference, prediction = _folders(args)
    labels = args.labels
    if args.dataset is not None or args.dataset_json is not None:
        dataset_json = args.dataset_json
        if dataset_json is None:
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
    output = args.output or prediction / "summary.json"
    summary = evaluate_folders(
        reference,
        prediction,
        labels=labels,
        output_json=output,
        num_processes=args.num_processes,
        ignore_label=args.ignore_label,
    )
    print(format_table(summary))
    print(f"{len(summary['metric_per_case'])} cases; wrote {output} and {output.with_suffix('.csv')}")
    return 0
