"""``autoprompt plan-and-preprocess``: verify, fingerprint, plan and preprocess a raw dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprompt.commands.common import CONFIGURATIONS, add_data_root_arguments, configuration_name, data_roots
from autoprompt.paths import dataset_folder_name, dataset_id
from planners.plans import Plans

DESCRIPTION = """\
Prepare a raw dataset (nnU-Net v2 format: dataset.json, imagesTr/, labelsTr/) for training:

  1. verify   every case has all channels and a label, geometries agree, label values are declared
              (all problems are listed; nothing is written until they are fixed)
  2. fingerprint.json  spacing, shapes and foreground intensities of every case
  3. plans.json        slice axis, in-plane target spacing (fitted to the backbone's windows: 256x256
                       for LiteMedSAM, 1024x1024 for SAM/MedSAM ViT, --backbone),
                       normalisation to [0, 1], "2d" and "3d" (stacks of neighbouring slices)
                       configurations, batch size, whether to cache encoder embeddings
  4. preprocessed cases  PREPROCESSED/DatasetXXX_Name/<data_identifier>/{case}.npy, _seg.npy, .json
  5. splits_final.json   5 cross-validation folds (--folds N); fewer case groups than folds: one fold per
                         group (leave-one-group-out); a single group: no folds, train fold 'all'

Re-running resumes: finished cases are skipped. plans.json may be edited by hand (e.g. target_spacing,
batch_size, stack_depth, normalization bounds); the next run keeps the edit and preprocesses again the
cases that are older than plans.json. --overwrite-plans plans from scratch.

examples:
  autoprompt plan-and-preprocess -d 4
  autoprompt plan-and-preprocess -d 27 --group-regex '^(patient\\d+)_frame\\d+$'   # both ACDC frames of a patient share a fold
  autoprompt plan-and-preprocess -d Dataset027_ACDC --verify-only
  autoprompt plan-and-preprocess -d 27 --folds 3                                   # 3 folds instead of 5
  autoprompt plan-and-preprocess -d 27 --backbone sam_vit_b --overwrite-plans      # 1024 windows for SAM ViT-B
  autoprompt plan-and-preprocess -d 27 -c 2d -np 4 --raw data/raw --preprocessed data/preprocessed
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-d", "--dataset", required=True, help="dataset id or folder name, e.g. 27 or Dataset027_ACDC"
    )
    parser.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        type=configuration_name,
        choices=CONFIGURATIONS,
        default=["2d", "3d"],
        help="configurations to preprocess; they share one preprocessing (default: 2d 3d)",
    )
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check the dataset before planning (default: on; --no-verify skips it)",
    )
    parser.add_argument(
        "--verify_dataset_integrity",
        dest="verify",
        action="store_true",
        default=argparse.SUPPRESS,
        help="nnU-Net's flag; checking is the default here",
    )
    parser.add_argument("--verify-only", action="store_true", help="only check the dataset, write nothing")
    parser.add_argument(
        "--group-regex",
        metavar="REGEX",
        help="cases whose regex group 1 is equal share a fold, e.g. '^(patient\\d+)_frame\\d+$' for ACDC",
    )
    parser.add_argument(
        "--seed", type=int, default=12345, help="seed of the cross-validation folds (default: 12345)"
    )
    parser.add_argument(
        "--folds",
        type=int,
        metavar="N",
        help="number of cross-validation folds, at least 2 (default: 5); with fewer case groups every group "
        "is a fold (leave-one-group-out), and a single group gets none (train fold 'all')",
    )
    parser.add_argument(
        "--overwrite-plans",
        "--clean",
        action="store_true",
        help="plan again even if fingerprint.json/plans.json exist (drops edits to plans.json)",
    )
    parser.add_argument(
        "--backbone",
        default="litemedsam",
        help="the backbone the plans are for; its input is the window size (default: litemedsam, 256; "
        "sam_vit_b|l|h and medsam_vit_b: 1024; train with the same model.backbone)",
    )
    add_data_root_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from autoprompt import api
    from pipeline.experiment_planning import check_dataset

    roots = data_roots(args)
    raw_folder = roots.raw / dataset_folder_name(args.dataset, roots.raw)
    if args.verify_only:
        raw = check_dataset(raw_folder, num_processes=args.num_processes)
        print(f"{raw.name}: {len(raw.cases)} cases, no problems found")
        return 0
    folder = api.plan_and_preprocess(
        raw_folder,
        roots.preprocessed,
        configurations=args.configurations,
        num_processes=args.num_processes,
        verify=args.verify,
        group_regex=args.group_regex,
        seed=args.seed,
        num_folds=args.folds,
        overwrite_plans=args.overwrite_plans,
        backbone=args.backbone,
    )
    print("\n".join(summary_lines(Plans.load(folder / "plans.json"), folder)))
    return 0


def summary_lines(plans: Plans, folder: Path) -> list[str]:
    """A short, human-readable account of the plans."""
    lines = [f"{plans.dataset_name}: planned and preprocessed in {folder}"]
    for name, plan in plans.configurations.items():
        spacing = " x ".join(f"{s:.3g}" for s in plan.target_spacing[1:])
        shape = "x".join(map(str, plan.median_shape))
        lines.append(
            f"  {name}: slice axis {plan.slice_axis} ({'ZYX'[plan.slice_axis]}), in-plane {spacing} mm "
            f"({plan.inplane_rule}), median shape {shape}, {plan.window_size[0]}x{plan.window_size[1]} windows, "
            f"stack {plan.stack_depth}, batch {plan.batch_size}"
        )
    plan = next(iter(plans.configurations.values()))
    cache = "cache" if plan.cache_embeddings else "do not cache"
    lines.append(f"  encoder embeddings: {cache} (~{plan.estimated_cache_gib:.1f} GiB in fp16)")
    for index, norm in enumerate(plans.normalization):
        what = "intensities" if norm.scheme == "ct" else "percentiles per image"
        lines.append(
            f"  channel {index} ({plans.channel_names[str(index)]}): {norm.scheme}, {what} {norm.lower:g}..{norm.upper:g} -> 0..1"
        )
    from pipeline.dataset import describe_folds

    folds = _folds(folder)
    if folds:
        lines.append(f"  folds: {describe_folds(folds)} (splits_final.json) and all (every case)")
    else:
        lines.append("  folds: none in splits_final.json (a single case group), only all (every case)")
    lines.append(
        f"next: autoprompt train {dataset_id(plans.dataset_name)} {folds[0] if folds else 'all'} -c 2d   "
        f"(edit {folder}/plans.json to change a plan)"
    )
    return lines


def _folds(folder: Path) -> list[int]:
    """The trainable folds of ``folder/splits_final.json`` (none when the file is missing)."""
    from pipeline.dataset import SPLITS_FILE, fold_indices, read_splits

    path = folder / SPLITS_FILE
    if not path.is_file():
        return []
    return fold_indices(read_splits(path, "fix it or delete it to have the folds made again"))
