"""``autoprompt benchmark``: autoprompt against nnU-Net v2 on the same cases, budget and metrics."""

from __future__ import annotations

import argparse

from autoprompt.benchmarking.report import BASELINES
from autoprompt.commands.common import add_device_argument, data_roots
from autoprompt.paths import dataset_folder_name

DESCRIPTION = """\
Train autoprompt and nnU-Net v2 (the real nnunetv2 package: its own planning, nnUNetTrainer and
predictor) on the same training cases, each within the same wall-clock training budget on the same
device; predict the same test cases with both and evaluate both with the same metric code.

Writes REPORT_DIR/report.md (per-class Dice and HD95 of both, their mean, training minutes, inference
seconds per volume, peak memory), report.json and dice_by_class.png; several training-set sizes
(--train-cases 5,10,20,all) add a data-efficiency table and data_efficiency.png.

Cases (test cases are never trained on or used to pick a checkpoint):
  --splits FILE      an nnU-Net splits_final.json-shaped file: fold 0 "train" trains, "val" tests
  --train-cases / --test-cases   comma-separated case ids (a missing list = every other case)
  default            fold 0 of a 5-fold split made with --seed (and --group-regex)
--train-cases with numbers draws nested subsets of the training cases (seeded); with --group-regex a
number counts groups (patients), e.g. ACDC's two frames per patient.

Resumable: each finished part (method x training size: preprocessed, trained, predicted, evaluated)
leaves a stamp in REPORT_DIR/work and is not run again; re-run the same command after an interruption.
Each method works in its own folders under REPORT_DIR/work; the raw dataset is only read.

examples:
  autoprompt benchmark -d 27 --raw data --splits data/Dataset027_ACDC/splits_patient_70_10.json \\
      --group-regex '^(patient\\d+)_frame\\d+$' --budget 60 -o bench_acdc
  autoprompt benchmark -d 4 --raw data --budget 60 -o bench_hippocampus
  autoprompt benchmark -d 27 --raw data --splits data/Dataset027_ACDC/splits_patient_70_10.json \\
      --group-regex '^(patient\\d+)_frame\\d+$' --train-cases 5,20 --budget 60 -o bench_acdc_curve
  autoprompt benchmark -d 27 --raw data --splits data/Dataset027_ACDC/splits_patient_70_10.json \\
      --group-regex '^(patient\\d+)_frame\\d+$' --budget 60 --vs none -o bench_acdc_alone
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark options."""
    parser.add_argument(
        "-d", "--dataset", required=True, help="dataset id or folder name under --raw, e.g. 27"
    )
    parser.add_argument(
        "-o", "--output", help="report folder (default: ./benchmark_<DatasetXXX_Name>); re-use it to resume"
    )
    cases = parser.add_argument_group("cases")
    cases.add_argument(
        "--splits", metavar="FILE", help="splits_final.json-shaped file; fold 0 train/val = train/test"
    )
    cases.add_argument(
        "--train-cases",
        metavar="LIST|N",
        help="comma-separated training case ids, or training-set sizes like 5,10,20,all (default: all)",
    )
    cases.add_argument("--test-cases", metavar="LIST", help="comma-separated test case ids")
    cases.add_argument(
        "--group-regex",
        metavar="REGEX",
        help="cases with equal regex group 1 form a group (patient) that stays on one side and counts once "
        "in a size, e.g. '^(patient\\d+)_frame\\d+$' for ACDC",
    )
    cases.add_argument(
        "--seed", type=int, default=12345, help="seed of the default split and the subsets (default: 12345)"
    )
    run = parser.add_argument_group("training and prediction")
    run.add_argument(
        "--budget",
        type=float,
        default=60.0,
        metavar="MINUTES",
        help="wall-clock minutes of training epochs per method (default: 60)",
    )
    run.add_argument(
        "-c",
        "--configuration",
        choices=("2d", "3d"),
        default="2d",
        help="autoprompt configuration (default: 2d)",
    )
    run.add_argument(
        "--vs",
        choices=BASELINES,
        default="nnunet",
        help="the baseline: nnunet (nnU-Net v2, default) or none (autoprompt alone; a later run with --vs "
        "nnunet in the same -o folder adds nnU-Net and reuses autoprompt's parts)",
    )
    run.add_argument(
        "--nnunet-config",
        choices=("2d", "3d_fullres"),
        help="nnU-Net configuration (default: 2d for -c 2d, 3d_fullres for -c 3d)",
    )
    add_device_argument(run)
    run.add_argument(
        "--autoprompt-config",
        metavar="PRESET",
        help="autoprompt trainer preset or YAML (default: 2d_frozen; 3d: 3d_adapter on CUDA, else 3d_frozen)",
    )
    run.add_argument(
        "--autoprompt-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="autoprompt trainer setting, repeatable, e.g. --autoprompt-set model.adapter_dim=16",
    )
    run.add_argument(
        "--nnunet-iterations",
        type=int,
        metavar="N",
        help="nnU-Net iterations per epoch (default: nnU-Net's 250, cut after a few timed steps so that "
        "10 epochs fit the budget, as on a CPU)",
    )
    run.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mirroring test-time augmentation for both (default: on)",
    )
    run.add_argument(
        "-np",
        "--num-processes",
        type=int,
        default=2,
        help="processes for planning and evaluation (default: 2)",
    )
    parser.add_argument(
        "--raw",
        help="folder holding DatasetXXX_Name raw datasets (default: AUTOPROMPT_RAW, else nnUNet_raw, else ./autoprompt_data/raw)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print where the report is."""
    from autoprompt.benchmarking.cases import ALL, parse_train_cases
    from autoprompt.benchmarking.runner import run_benchmark

    raw = data_roots(args).raw
    name = dataset_folder_name(args.dataset, raw)
    train_cases, sizes = parse_train_cases(args.train_cases) if args.train_cases else (None, [ALL])
    test_cases = [c.strip() for c in args.test_cases.split(",") if c.strip()] if args.test_cases else None
    output = args.output or f"benchmark_{name}"
    report = run_benchmark(
        raw / name,
        output,
        train_cases=train_cases,
        train_sizes=sizes,
        test_cases=test_cases,
        splits_file=args.splits,
        group_regex=args.group_regex,
        seed=args.seed,
        budget_minutes=args.budget,
        configuration=args.configuration,
        nnunet_configuration=args.nnunet_config,
        device=args.device,
        autoprompt_config=args.autoprompt_config,
        autoprompt_overrides=args.autoprompt_set,
        nnunet_iterations_per_epoch=args.nnunet_iterations,
        tta=args.tta,
        num_processes=args.num_processes,
        baseline=args.vs,
    )
    for run_ in report["runs"]:
        dice = run_["mean"]["dice"]
        print(
            f"{run_['method']:>10}  training size {run_['train_size']:>4}: mean Dice "
            f"{'-' if dice is None else f'{dice:.4f}'}, {run_['training_minutes']:.1f} min training"
        )
    print(f"wrote {output}/report.md, report.json and plots")
    return 0
