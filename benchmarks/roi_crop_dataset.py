"""An nnU-Net raw dataset cropped around each case's labelled foreground, and predictions pasted back.

The question behind it: would a model trained only on the region of interest, at the slices' own scale, keep
the Dice of a model trained on whole windows? Such a model's windows are a fraction of the backbone's, so
each encoder pass costs a fraction (a pass costs about the window's area). A cascade would find the region
first; here the ground truth finds it, shifted at random to stand in for a localiser's error::

    python -m benchmarks.roi_crop_dataset crop RAW/Dataset027_ACDC CROPPED/Dataset027_ACDC --margin 1.4 --shift 0.1
    autoprompt benchmark -d 27 --raw CROPPED ...          # trains on the crops as on any dataset
    python -m benchmarks.roi_crop_dataset crop CV_FOLDER CV_CROPPED --images imagesTs --labels labelsTs ...
    autoprompt predict -i CV_CROPPED/imagesTs -o PRED ...
    python -m benchmarks.roi_crop_dataset paste CV_CROPPED/crops.json PRED PASTED
    autoprompt evaluate -r CV_FOLDER/labelsTs -p PASTED ...  # Dice of the full volumes

With ``--boxes-from COARSE_PREDICTIONS --shift 0`` the squares come from another model's label maps instead of
the ground truth (a cascade's first stage: a model of coarse, small windows over the whole slices).

The crop of a case is one square in the plane of the slices (the two axes of finer spacing) for all its
slices: the smallest square around the foreground of every slice together, ``margin`` times larger, its centre
moved by up to ``shift`` of its side along each axis (a generator seeded by ``--seed`` and the case's name).
Parts outside the image are filled with the image's minimum (label 0). ``crops.json`` keeps where each crop
came from, which ``paste`` uses to put a prediction back into the case's full grid (0 outside the crop).
"""

from __future__ import annotations

import argparse
import shutil
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.files import load_json, save_json
from pipeline.roi_zoom import foreground_box


def crop_box(
    label: np.ndarray, *, margin: float, shift: float, rng: np.random.Generator
) -> tuple[int, int, int]:
    """``(top, left, side)`` in pixels of the slices of ``label`` (``S x H x W``): the square around the
    foreground grown by ``margin`` and moved by up to ``shift`` of its side (may reach outside the slice);
    without foreground, the square around the whole slice."""
    tight = foreground_box(label > 0)
    if tight is None:
        height, width = label.shape[1:]
        side = max(height, width)
        return (height - side) // 2, (width - side) // 2, side
    box = tight.grown(margin)
    box = box.shifted(*(rng.uniform(-shift, shift, size=2) * box.side))
    side = int(np.ceil(box.side))
    return round(box.top + (box.side - side) / 2), round(box.left + (box.side - side) / 2), side


def _overlap(top: int, left: int, side: int, shape: tuple[int, ...]) -> tuple[tuple, tuple]:
    """The part of the square inside ``... x H x W`` slices: its index there and in the square's own grid."""
    rows = slice(max(top, 0), min(top + side, shape[-2]))
    cols = slice(max(left, 0), min(left + side, shape[-1]))
    own = (slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left))
    return (..., rows, cols), (..., *own)


def cut(array: np.ndarray, top: int, left: int, side: int, fill: float) -> np.ndarray:
    """``array[:, top:top+side, left:left+side]`` (``S x H x W``) with ``fill`` where that reaches outside."""
    out = np.full((array.shape[0], side, side), fill, dtype=array.dtype)
    inside, own = _overlap(top, left, side, array.shape)
    out[own] = array[inside]
    return out


def paste(crop: np.ndarray, top: int, left: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The inverse of :func:`cut` for a label map: ``crop`` (``S x side x side``) in zeros of ``shape``."""
    out = np.zeros(shape, dtype=crop.dtype)
    inside, own = _overlap(top, left, crop.shape[1], shape)
    out[inside] = crop[own]
    return out


def _slice_axis(image: sitk.Image) -> int:
    """The numpy axis (``z, y, x`` order) of the coarsest spacing: the one the slices are stacked along."""
    return 2 - int(np.argmax(image.GetSpacing()))


def _as_slices(array: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(array, axis, 0)


def _cropped_image(image: sitk.Image, array: np.ndarray, axis: int, top: int, left: int) -> sitk.Image:
    """``array`` (numpy order of ``image``) as an image whose first voxel sits where the crop began."""
    start = [0, 0, 0]
    plane = [a for a in range(3) if a != axis]
    start[2 - plane[0]], start[2 - plane[1]] = top, left
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(image.GetDirection())
    out.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([float(s) for s in start]))
    return out


def crop_folder(
    source: Path,
    target: Path,
    *,
    images: str,
    labels: str,
    margin: float,
    shift: float,
    seed: int,
    boxes_from: Path | None = None,
) -> None:
    """Crop every case of ``source/labels`` (and its ``source/images/CASE_0000`` image) into ``target``, each
    around its own foreground or, with ``boxes_from``, that of ``boxes_from/CASE.nii.gz`` (same grid);
    copies ``dataset.json`` and ``splits*.json`` when there; writes ``target/crops.json``."""
    (target / images).mkdir(parents=True, exist_ok=True)
    (target / labels).mkdir(parents=True, exist_ok=True)
    for extra in [*source.glob("dataset.json"), *source.glob("splits*.json")]:
        shutil.copy(extra, target / extra.name)
    crops = {}
    for label_path in sorted((source / labels).glob("*.nii.gz")):
        case = label_path.name.removesuffix(".nii.gz")
        label_image = sitk.ReadImage(str(label_path))
        axis = _slice_axis(label_image)
        label = _as_slices(sitk.GetArrayFromImage(label_image), axis)
        rng = np.random.default_rng([seed, zlib.crc32(case.encode())])
        boxed = label
        if boxes_from is not None:
            boxed = _as_slices(
                sitk.GetArrayFromImage(sitk.ReadImage(str(boxes_from / label_path.name))), axis
            )
        top, left, side = crop_box(boxed, margin=margin, shift=shift, rng=rng)
        image_path = source / images / f"{case}_0000.nii.gz"
        image_image = sitk.ReadImage(str(image_path))
        image = _as_slices(sitk.GetArrayFromImage(image_image), axis)
        for array, fill, reference, path in (
            (label, 0, label_image, target / labels / label_path.name),
            (image, image.min(), image_image, target / images / image_path.name),
        ):
            cropped = np.moveaxis(cut(array, top, left, side, fill), 0, axis)
            sitk.WriteImage(_cropped_image(reference, cropped, axis, top, left), str(path), True)
        crops[case] = {"top": top, "left": left, "side": side, "slice_axis": axis, "shape": list(label.shape)}
        crops[case]["reference"] = str(label_path.resolve())
    boxes = "ground truth" if boxes_from is None else str(boxes_from.resolve())
    save_json(
        {"margin": margin, "shift": shift, "seed": seed, "boxes_from": boxes, "cases": crops},
        target / "crops.json",
    )
    print(f"{len(crops)} cases cropped into {target}")


def paste_folder(crops_json: Path, predictions: Path, target: Path) -> None:
    """Each ``predictions/CASE.nii.gz`` put back into its case's full grid, written to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    record = load_json(crops_json)["cases"]
    for path in sorted(predictions.glob("*.nii.gz")):
        crop = record[path.name.removesuffix(".nii.gz")]
        reference = sitk.ReadImage(crop["reference"])
        axis = crop["slice_axis"]
        predicted = _as_slices(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), axis)
        full = np.moveaxis(paste(predicted, crop["top"], crop["left"], tuple(crop["shape"])), 0, axis)
        out = sitk.GetImageFromArray(full.astype(np.uint8))
        out.CopyInformation(reference)
        sitk.WriteImage(out, str(target / path.name), True)
    print(f"pasted into {target}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    crop = commands.add_parser("crop", help="crop a folder of cases around their labelled foreground")
    crop.add_argument("source", type=Path)
    crop.add_argument("target", type=Path)
    crop.add_argument("--images", default="imagesTr")
    crop.add_argument("--labels", default="labelsTr")
    crop.add_argument("--margin", type=float, default=1.4, help="crop side over the foreground square's side")
    crop.add_argument("--shift", type=float, default=0.1, help="largest move of the centre, in crop sides")
    crop.add_argument("--seed", type=int, default=0)
    crop.add_argument(
        "--boxes-from", type=Path, help="label maps (CASE.nii.gz) whose foreground places the crops"
    )
    put_back = commands.add_parser("paste", help="put predictions on crops back into the full volumes")
    put_back.add_argument("crops", type=Path, help="crops.json written by crop")
    put_back.add_argument("predictions", type=Path)
    put_back.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    if args.command == "paste":
        paste_folder(args.crops, args.predictions, args.target)
        return
    options = ("images", "labels", "margin", "shift", "seed", "boxes_from")
    crop_folder(args.source, args.target, **{name: getattr(args, name) for name in options})


if __name__ == "__main__":
    main()
