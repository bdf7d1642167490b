"""``autoprompt convert``: official ACDC / AMOS downloads -> nnU-Net v2 raw datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprompt.paths import roots_from_environment

DESCRIPTION = """\
Convert an official dataset download into the nnU-Net v2 raw format that every other command reads.
Files are copied (one at a time, atomically); running it again resumes.

  acdc  ACDC_DIR/training/patientNNN/ (Info.cfg, patientNNN_frameMM[_gt].nii.gz) and testing/
        -> DatasetXXX_ACDC (default id 27): the ED and ES frames named in Info.cfg, labels 1 RV, 2 MYO, 3 LV;
        testing ground truth goes to labelsTs.
  amos  amos22/ (dataset.json, imagesTr, labelsTr, imagesVa, labelsVa, imagesTs)
        -> DatasetXXX_AMOS2022_postChallenge_task2 (CT and MRI, default id 219) or, with --ct-only,
        _task1 (CT cases amos_0001..amos_0500, default id 218); validation cases join the training
        cases, as in nnU-Net; the 15 organ labels come from AMOS's dataset.json.

examples:
  autoprompt convert acdc ~/Downloads/ACDC -o autoprompt_data/raw
  autoprompt convert amos ~/Downloads/amos22 --ct-only
  autoprompt plan-and-preprocess -d 27 --group-regex '^(patient\\d+)_frame\\d+$'
"""


def configure(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    acdc = sources.add_parser("acdc", help="ACDC cardiac cine MRI (training/ and testing/ patient folders)")
    acdc.add_argument(
        "folder",
        type=Path,
        metavar="ACDC_DIR",
        help="the extracted ACDC download (holding training/ and testing/)",
    )
    acdc.add_argument(
        "--dataset-id", type=int, default=27, metavar="ID", help="nnU-Net dataset id (default: 27)"
    )
    amos = sources.add_parser("amos", help="AMOS 2022 abdominal CT/MRI (the amos22 folder)")
    amos.add_argument(
        "folder", type=Path, metavar="AMOS_DIR", help="the extracted amos22 folder (holding dataset.json)"
    )
    amos.add_argument("--ct-only", action="store_true", help="keep only the CT cases (ids up to 500)")
    amos.add_argument(
        "--dataset-id",
        type=int,
        metavar="ID",
        help="nnU-Net dataset id (default: 218 with --ct-only, else 219)",
    )
    for sub in (acdc, amos):
        sub.add_argument(
            "-o",
            "--output",
            metavar="RAW",
            help="raw data folder to write the dataset into (default: AUTOPROMPT_RAW, else nnUNet_raw, else ./autoprompt_data/raw)",
        )


def run(args: argparse.Namespace) -> int:
    raw = roots_from_environment(raw=args.output).raw
    if args.source == "acdc":
        from pipeline.convert.acdc import convert_acdc
        from pipeline.dataset import ACDC_GROUP_REGEX

        output = convert_acdc(args.folder, raw, dataset_id=args.dataset_id)
        hint = f" --group-regex '{ACDC_GROUP_REGEX}'  (keeps both frames of a patient in one fold)"
    else:
        from pipeline.convert.amos import convert_amos

        output = convert_amos(args.folder, raw, ct_only=args.ct_only, dataset_id=args.dataset_id)
        hint = ""
    print(f"wrote {output}")
    print(f"next: autoprompt plan-and-preprocess -d {output.name} --raw {raw}{hint}")
    return 0
