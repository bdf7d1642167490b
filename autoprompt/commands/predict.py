"""``autoprompt predict``: segment images with a trained model folder."""

from __future__ import annotations

import argparse
import sys

from autoprompt.commands.common import (
    add_case_limit_arguments,
    add_decoding_arguments,
    add_device_argument,
    add_model_folder_arguments,
    add_tta_argument,
    case_limits_from_args,
    decoding_from_args,
    model_folder_from_args,
)

DESCRIPTION = """\
Segment images with a trained model: every trained fold is used and their probabilities averaged,
with mirroring test-time augmentation when the model was trained with mirroring (models trained on
cached embeddings were not; --tta/--no-tta decide yourself). Each case gets one label map in OUTPUT with exactly the input's
size, spacing, origin and direction, in the input's file type (.nii.gz for DICOM).

INPUT is a folder of images named like nnU-Net's imagesTs ({case}_0000.nii.gz, {case}_0001.nii.gz for
a second channel; plain names like scan.nii.gz for single-channel models; sub-folders holding a DICOM
series are cases too), one image file (.nii.gz .nii .mha .nrrd .png .jpg .tif), or a DICOM series folder.

The model folder is RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration> (written by
'autoprompt train'), or give it directly with --model-dir.

examples:
  autoprompt predict -i imagesTs -o preds -d 27 -c 2d
  autoprompt predict -i scan.nii.gz -o preds -d 27 -f 0 --no-tta
  autoprompt predict -i imagesTs -o preds -d 27 -f all      # the model trained on every case
  autoprompt predict -i dicom/series1 -o preds --model-dir results/Dataset027_ACDC/autoprompt__2d_frozen__2d
  autoprompt predict -i imagesTs -o preds -d 27 --part-id 0 --num-parts 2   # and --part-id 1 elsewhere
  autoprompt predict -i imagesTs -o preds -d 27 -c 2d -f 0 -chk checkpoint_final.pth --disable_tta   # nnU-Net's flags

Existing label maps are kept (skipped) unless --overwrite. A bad case (unreadable, wrong number of
channels, 4D, empty, NaN values, or over --max-case-memory-gb/--max-case-windows, which are estimated
from its header before it is read) stops the run with exit status 2; with --continue-on-error the other
cases still run and the exit status is 1 if any failed.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the predict options."""
    parser.add_argument(
        "-i", "--input", required=True, help="folder of images, one image file, or a DICOM series folder"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="folder for the label maps (created if missing)"
    )
    model = add_model_folder_arguments(parser)
    model.add_argument(
        "-f",
        "--folds",
        nargs="+",
        default=["all-trained"],
        help="folds to ensemble, e.g. -f 0 1 2 3 4, or 'all' (the fold trained on all cases); default: all-trained",
    )
    run = parser.add_argument_group("prediction")
    add_tta_argument(run)
    run.add_argument(
        "--disable_tta",
        dest="tta",
        action="store_false",
        default=argparse.SUPPRESS,
        help="nnU-Net's name for --no-tta",
    )
    run.add_argument(
        "--no-postprocessing",
        action="store_true",
        help="skip the keep-largest-component postprocessing chosen in training",
    )
    add_decoding_arguments(run)
    run.add_argument(
        "--zoom",
        action=argparse.BooleanOptionalAction,
        help="a second pass over the region of interest, enlarged to the window (the square around the first "
        "pass's foreground); default: the model's setting, zoom.second_pass",
    )
    run.add_argument(
        "--save-probabilities",
        "--save_probabilities",
        action="store_true",
        help="also write {case}.npz with float16 probabilities (K+1 x Z x Y x X)",
    )
    run.add_argument(
        "--output-format",
        help="label map file type, e.g. .nii.gz or .mha, never lossy .jpg (default: the input's; .nii.gz for "
        "DICOM, .png for JPEG)",
    )
    add_device_argument(run)
    run.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="network precision (default: auto, the precision the model was trained in where this device "
        "computes it natively, else the device's: bf16 on CPUs with AVX512-BF16/AMX and on bf16 GPUs, fp16 "
        "on other GPUs, fp32 on other CPUs; fp16 needs CUDA)",
    )
    work = parser.add_argument_group("many cases")
    work.add_argument(
        "--part-id",
        "-part_id",
        type=int,
        default=0,
        help="this run's part of the sorted cases: cases[part_id::num_parts] (default: 0)",
    )
    work.add_argument(
        "--num-parts",
        "-num_parts",
        type=int,
        default=1,
        help="number of runs sharing the cases (default: 1)",
    )
    work.add_argument("--overwrite", action="store_true", help="predict cases whose label map already exists")
    work.add_argument(
        "--continue_prediction",
        dest="overwrite",
        action="store_false",
        default=argparse.SUPPRESS,
        help="nnU-Net's flag: keep finished label maps (the default here; undoes --overwrite)",
    )
    work.add_argument(
        "--continue-on-error",
        action="store_true",
        help="record a bad case (printed when it fails) and go on; exit status 1 if any failed",
    )
    add_case_limit_arguments(work)


def run(args: argparse.Namespace) -> int:
    """Predict, print the summary; 0 = all done, 1 = some cases failed (with --continue-on-error)."""
    from pipeline.inference.predict_folder import predict

    summary = predict(
        model_folder_from_args(args),
        args.input,
        args.output,
        folds=args.folds,
        checkpoint=args.checkpoint,
        device=args.device,
        tta=args.tta,
        precision=args.precision,
        use_postprocessing=not args.no_postprocessing,
        decoding=decoding_from_args(args),
        zoom=args.zoom,
        save_probabilities=args.save_probabilities,
        output_suffix=_suffix(args.output_format),
        part_id=args.part_id,
        num_parts=args.num_parts,
        overwrite=args.overwrite,
        continue_on_error=args.continue_on_error,
        limits=case_limits_from_args(args),
    )
    for note in summary.notes:
        print(note, file=sys.stderr)
    if summary.ignored:
        names = ", ".join(path.name for path in summary.ignored[:5])
        more = f" and {len(summary.ignored) - 5} more" if len(summary.ignored) > 5 else ""
        print(f"ignored {len(summary.ignored)} non-image entries: {names}{more}")
    print(summary.describe())
    return summary.exit_code


def _suffix(output_format: str | None) -> str | None:
    if output_format is None:
        return None
    return output_format if output_format.startswith(".") else f".{output_format}"
