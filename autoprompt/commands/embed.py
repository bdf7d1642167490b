"""``autoprompt embed``: write the pretrained image encoder's embeddings of an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprompt.commands.common import add_backbone_arguments, model_options

DESCRIPTION = """\
Run the image encoder alone (LiteMedSAM by default) and save its embeddings, e.g. to train your own
head on them or to prompt the same slices many times without encoding again.

OUTPUT.npy holds an N x 256 x 64 x 64 array: N = 1 for a 2D image or with --slice, otherwise one
embedding per slice of the volume (array axis 0). OUTPUT.json beside it records the backbone and its
weights' SHA-256, the precision, the preprocessing (intensity clipping range, resized size inside the
256 x 256 input), the source image and its geometry, the slice indices, dtype and shape.

Load them with numpy.load("OUTPUT.npy", mmap_mode="r").

examples:
  autoprompt embed heart.nii.gz -o heart_emb.npy
  autoprompt embed heart.nii.gz --slice 4 --dtype float32 -o slice4.npy
  autoprompt embed xray.png -o xray_emb.npy --device cuda --precision fp16
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the embed options."""
    parser.add_argument(
        "image", type=Path, help="image file (.nii.gz .nii .mha .nrrd .png .jpg .tif) or DICOM folder"
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="embeddings file to write (.npy)")
    parser.add_argument(
        "--slice", type=int, metavar="Z", help="embed only this slice of a 3D image (default: all)"
    )
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=("float16", "float32"),
        help="stored number type (default: float16, half the size; the encoder's own error is larger)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="slices per encoder call (default: 4)")
    add_backbone_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Encode and write OUTPUT.npy and OUTPUT.json; prints the shape."""
    from autoprompt.api import embed

    embeddings = embed(
        args.image,
        output=args.output,
        slice_index=args.slice,
        model=model_options(args),
        dtype=args.dtype,
        batch_size=args.batch_size,
    )
    print(
        f"{args.output}: {' x '.join(map(str, embeddings.shape))} {embeddings.dtype} (sidecar {args.output.with_suffix('.json')})"
    )
    return 0
