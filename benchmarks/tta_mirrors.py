"""Mirroring test-time augmentation compared on cases a trained model did not see: Dice against seconds.

Mirroring TTA multiplies the work of a prediction by the number of flips (nnU-Net: every flip of both
in-plane axes, 4). Whether the last two flips pay is measured here: the same cases predicted with one fold of a
model folder three ways, each with per-class Dice and HD95, the worst patient, lost classes
(``benchmarks.few_label_cv.summarise``) and seconds per volume::

    python -m benchmarks.tta_mirrors MODEL_DIR IMAGES REFERENCES --cases CASE ... --labels 1 2 3 -o tta.json

Variants: ``none`` (one prediction per window), ``columns`` (and the left-right mirror: 2 per window),
``rows_and_columns`` (nnU-Net's rule, every flip of both in-plane axes: 4 per window). Each case is predicted
as ``autoprompt predict`` would, with the fold's postprocessing. The cases must be ones the fold was not
trained on (for ACDC: training patients outside the fold's training cases, never the test patients).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.few_label_cv import link_references, summarise
from pipeline.evaluation import evaluate_folders
from pipeline.files import save_json
from pipeline.inference.predictor import Predictor
from pipeline.io import write_image

VARIANTS: dict[str, tuple[int, ...] | None] = {
    "none": None,
    "columns": (-1,),
    "rows_and_columns": (-2, -1),
}


def compare_mirrors(
    model_dir: Path,
    images: Path,
    references: Path,
    cases: list[str],
    labels: list[int],
    fold: str,
    variants: tuple[str, ...] = tuple(VARIANTS),
) -> dict[str, dict]:
    """Summary and seconds per volume of each of ``variants`` (keys of :data:`VARIANTS`) on ``cases``."""
    missing = [case for case in cases if not (images / f"{case}_0000.nii.gz").exists()]
    if missing:
        raise SystemExit(f"{images}: no {missing[0]}_0000.nii.gz; give cases of that folder")
    predictor = Predictor.from_model_folder(model_dir, folds=[fold], device="cpu")
    results = {}
    with tempfile.TemporaryDirectory(prefix="tta_mirrors_") as work:
        matching = link_references(
            [f"{case}.nii.gz" for case in cases], references, Path(work) / "references"
        )
        for name in variants:
            axes = VARIANTS[name]
            predictor.tta = axes is not None
            predictor.mirror_axes = axes or ()
            predicted = Path(work) / name
            predicted.mkdir()
            seconds = []
            for case in cases:
                start = time.monotonic()
                prediction = predictor.predict_case([images / f"{case}_0000.nii.gz"])
                seconds.append(time.monotonic() - start)
                write_image(prediction.labels, prediction.geometry, predicted / f"{case}.nii.gz")
            summary = evaluate_folders(matching, predicted, labels=labels)
            results[name] = {
                "mirror_axes": list(axes or ()),
                "seconds_per_volume": float(np.mean(seconds)),
                **summarise(summary),
            }
            print(
                name,
                {k: results[name][k] for k in ("mean_dice", "min_case_class_dice", "seconds_per_volume")},
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=Path, help="a model folder written by 'autoprompt train'")
    parser.add_argument("images", type=Path, help="folder of {case}_0000.nii.gz images")
    parser.add_argument("references", type=Path, help="folder of {case}.nii.gz reference label maps")
    parser.add_argument("--cases", nargs="+", required=True, help="case ids the fold was not trained on")
    parser.add_argument("--labels", type=int, nargs="+", required=True, help="foreground label values")
    parser.add_argument("--fold", default="all", help="the fold to predict with (default: all)")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="(default: all)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON to write")
    args = parser.parse_args()
    results = compare_mirrors(
        args.model_dir, args.images, args.references, args.cases, args.labels, args.fold, tuple(args.variants)
    )
    save_json(
        {"model_dir": str(args.model_dir), "fold": args.fold, "cases": args.cases, "variants": results},
        args.output,
    )


if __name__ == "__main__":
    main()
