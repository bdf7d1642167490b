"""Mirroring test-time augmentation (and region decoding) compared on cases a trained model did not see:
Dice against seconds.

Mirroring TTA multiplies the work of a prediction by the number of flips (nnU-Net: every flip of both
in-plane axes, 4). Whether the last two flips pay is measured here: the same cases predicted with one fold of a
model folder three ways, each with per-class Dice and HD95, the worst patient, lost classes
(``benchmarks.few_label_cv.summarise``) and seconds per volume::

    python -m benchmarks.tta_mirrors MODEL_DIR IMAGES REFERENCES --cases CASE ... --labels 1 2 3 -o tta.json
    python -m benchmarks.tta_mirrors ... --variants columns --region-tokens 0 32 -o regions.json
    python -m benchmarks.tta_mirrors ... --variants columns --box-refinement 1 2 -o refinement.json

Variants: ``none`` (one prediction per window), ``columns`` (and the left-right mirror: 2 per window),
``rows_and_columns`` (nnU-Net's rule, every flip of both in-plane axes: 4 per window). Each case is predicted
as ``autoprompt predict`` would, with the fold's postprocessing. ``--region-tokens`` predicts each variant once
per value of ``model.inference_region_tokens`` (0: whole windows), ``--box-refinement`` once per value of
``model.box_refinement`` (and per combination when both are given), in turn, case by case. The cases must be
ones the fold was not trained on (for ACDC: training patients outside the fold's training cases, never the
test patients).
"""

from __future__ import annotations

import argparse
import itertools
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


DECODING_OPTIONS = {"inference_region_tokens": "region", "box_refinement": "refinement"}
"""Decoding settings a comparison can vary (the model attribute -> its word in a result key)."""


def compare_mirrors(
    model_dir: Path,
    images: Path,
    references: Path,
    cases: list[str],
    labels: list[int],
    folds: list[str],
    variants: tuple[str, ...] = tuple(VARIANTS),
    decoding: dict[str, tuple[int, ...]] | None = None,
    checkpoint: str = "best",
) -> dict[str, dict]:
    """Summary and seconds per volume of each of ``variants`` (keys of :data:`VARIANTS`) on ``cases``; with
    ``decoding`` (values to compare per key of :data:`DECODING_OPTIONS`), of each variant and combination of
    values (keys like ``"columns, region 32, refinement 1"``). Unvaried settings stay as each model has them."""
    missing = [case for case in cases if not (images / f"{case}_0000.nii.gz").exists()]
    if missing:
        raise SystemExit(f"{images}: no {missing[0]}_0000.nii.gz; give cases of that folder")
    predictor = Predictor.from_model_folder(model_dir, folds=folds, checkpoint=checkpoint, device="cpu")
    varied = {key: values for key, values in (decoding or {}).items() if values}
    settings = [dict(zip(varied, values, strict=True)) for values in itertools.product(*varied.values())]
    runs = [(name, setting) for name in variants for setting in settings]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tta_mirrors_") as work:
        matching = link_references(
            [f"{case}.nii.gz" for case in cases], references, Path(work) / "references"
        )
        seconds: dict[int, list[float]] = {run: [] for run in range(len(runs))}
        for run in range(len(runs)):
            (Path(work) / str(run)).mkdir()
        for case in cases:  # the runs in turn, case by case: a machine slowing down slows them alike
            for run, (name, setting) in enumerate(runs):
                axes = VARIANTS[name]
                predictor.tta = axes is not None
                predictor.mirror_axes = axes or ()
                for model in predictor.models:
                    for key, value in setting.items():
                        setattr(model, key, value)
                start = time.monotonic()
                prediction = predictor.predict_case([images / f"{case}_0000.nii.gz"])
                seconds[run].append(time.monotonic() - start)
                write_image(prediction.labels, prediction.geometry, Path(work) / str(run) / f"{case}.nii.gz")
        for run, (name, setting) in enumerate(runs):
            key = ", ".join([name, *(f"{DECODING_OPTIONS[k]} {v}" for k, v in setting.items())])
            summary = evaluate_folders(matching, Path(work) / str(run), labels=labels)
            results[key] = {
                "mirror_axes": list(VARIANTS[name] or ()),
                **setting,
                "seconds_per_volume": float(np.mean(seconds[run])),
                **summarise(summary),
            }
            print(
                key,
                {k: results[key][k] for k in ("mean_dice", "min_case_class_dice", "seconds_per_volume")},
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
    parser.add_argument(
        "--fold",
        nargs="+",
        default=["all"],
        help="the fold(s) to predict with, several as an ensemble (default: all)",
    )
    parser.add_argument(
        "--checkpoint", choices=("best", "final", "latest"), default="best", help="(default: best)"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="(default: all)"
    )
    parser.add_argument(
        "--region-tokens",
        type=int,
        nargs="+",
        metavar="T",
        help="also compare model.inference_region_tokens values (0: whole windows; default: as trained)",
    )
    parser.add_argument(
        "--box-refinement",
        type=int,
        nargs="+",
        metavar="R",
        help="also compare model.box_refinement values (extra decoder passes; default: as trained)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON to write")
    args = parser.parse_args()
    results = compare_mirrors(
        args.model_dir,
        args.images,
        args.references,
        args.cases,
        args.labels,
        args.fold,
        tuple(args.variants),
        {
            "inference_region_tokens": tuple(args.region_tokens or ()),
            "box_refinement": tuple(args.box_refinement or ()),
        },
        args.checkpoint,
    )
    save_json(
        {
            "model_dir": str(args.model_dir),
            "folds": args.fold,
            "checkpoint": args.checkpoint,
            "cases": args.cases,
            "variants": results,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
