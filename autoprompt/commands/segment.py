"""``autoprompt segment``: promptable segmentation of one image from a box or points (MedSAM style)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from autoprompt.commands.common import add_backbone_arguments, model_options
from autoprompt.errors import AutoPromptError

DESCRIPTION = """\
Segment one object with the pretrained promptable model (LiteMedSAM by default; no training, no dataset):
give a box around it, and/or points on it (label 1) or beside it (label 0). LiteMedSAM was trained with
boxes: give it a box (points only refine one); the SAM ViT backbones also answer points alone.

Coordinates are pixels of the image as stored (x = column, y = row, 0-based, as shown by ITK-SNAP's
or 3D Slicer's voxel coordinates); a 3D image's slice index is array axis 0 (Z).

  2D image (PNG, JPEG, TIFF, 2D NIfTI):   --box X1 Y1 X2 Y2 [--points X Y LABEL ...]
  one slice of a 3D image:               --slice Z --box X1 Y1 X2 Y2 [--points ...]
  an object through a 3D image:          --box3d X1 Y1 Z1 X2 Y2 Z2
      the middle slice of Z1..Z2 (inclusive) is segmented from the box, then each next slice up and
      down from the bounding box of its neighbour's mask (LiteMedSAM's 3D inference).

The mask (0/1, uint8) is written to OUTPUT in the input's geometry: a slice of a 3D image gives a 3D
mask with only that slice filled. Use .nii.gz for 3D masks; .png works for 2D ones.

Preprocessing is LiteMedSAM's: intensities clipped at the 0.5/99.5 percentiles (of the volume; 8-bit
pictures are not clipped), longest side resized to 256, scaled to [0, 1], padded to 256 x 256.

examples:
  autoprompt segment chest.png --box 120 80 210 190 -o chest_mask.png
  autoprompt segment heart.nii.gz --slice 4 --box 79 99 136 157 -o lv.nii.gz
  autoprompt segment heart.nii.gz --slice 4 --box 79 99 136 157 --points 100 120 1 60 60 0 -o lv.nii.gz
  autoprompt segment heart.nii.gz --box3d 79 99 0 136 157 9 -o lv3d.nii.gz
  autoprompt segment scan.nii.gz --slice 40 --box 10 10 90 90 --backbone medsam_vit_b \\
      --checkpoint medsam_vit_b.pth -o mask.nii.gz
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the segment options."""
    parser.add_argument(
        "image", type=Path, help="image file (.nii.gz .nii .mha .nrrd .png .jpg .tif) or DICOM folder"
    )
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="mask file to write (.nii.gz, .png, ...)"
    )
    prompts = parser.add_argument_group("prompts (--box and/or --points for one slice, or --box3d)")
    prompts.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("X1", "Y1", "X2", "Y2"),
        help="box around the object, in pixels",
    )
    prompts.add_argument(
        "--points",
        nargs="+",
        type=float,
        metavar="X Y LABEL",
        help="one or more point triples: X Y 1 on the object, X Y 0 on the background",
    )
    prompts.add_argument(
        "--slice", type=int, metavar="Z", help="slice of a 3D image (array axis 0); not for 2D images"
    )
    prompts.add_argument(
        "--box3d",
        nargs=6,
        type=float,
        metavar=("X1", "Y1", "Z1", "X2", "Y2", "Z2"),
        help="3D box (Z1..Z2 inclusive): segment the object through the volume",
    )
    add_backbone_arguments(parser)


def _points(values: list[float] | None) -> list[tuple[float, float, int]] | None:
    if values is None:
        return None
    if len(values) % 3:
        raise AutoPromptError(
            f"--points takes triples X Y LABEL, got {len(values)} numbers; e.g. --points 100 120 1"
        )
    if not all(math.isfinite(value) for value in values):
        raise AutoPromptError(
            f"--points {' '.join(f'{v:g}' for v in values)}: not all finite numbers; give X Y LABEL in pixels"
        )
    return [(values[i], values[i + 1], int(values[i + 2])) for i in range(0, len(values), 3)]


def run(args: argparse.Namespace) -> int:
    """Segment and write the mask; prints where it went and how many voxels it has."""
    from autoprompt.api import segment, segment_volume

    model = model_options(args)
    if args.box3d is not None:
        if args.box is not None or args.points is not None or args.slice is not None:
            raise AutoPromptError(
                f"{args.image}: --box3d segments through the volume on its own; leave out --box, --points and --slice"
            )
        mask = segment_volume(args.image, box3d=args.box3d, output=args.output, model=model)
    else:
        mask = segment(
            args.image,
            box=args.box,
            points=_points(args.points),
            slice_index=args.slice,
            output=args.output,
            model=model,
        )
    print(f"{args.output}: {int(mask.sum())} foreground voxels")
    return 0
