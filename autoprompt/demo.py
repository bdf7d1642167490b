"""``make demo``: the whole path on the bundled Hippocampus sample, in minutes on a CPU.

plan-and-preprocess -> train a short run -> predict the held-back cases -> evaluate -> print the Dice table
-> save a PNG with overlays (image, reference, prediction) of a few slices.

Everything is written under ``demo_output/`` (``--output``); a second run reuses what is finished.
Run ``python -m autoprompt.demo --help`` for the options.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from autoprompt.allocator import retain_freed_memory
from autoprompt.cli import silence_dependency_warnings
from autoprompt.errors import AutoPromptError
from pipeline.files import atomic_path, load_json, save_json

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "Dataset904_HippocampusSample"
# The LiteMedSAM encoder pass per slice dominates on a CPU (docs/results.md): to keep the demo short it
# trains on the first NUM_TRAIN_CASES cases (fold 0 of their 5 folds) and predicts the last NUM_TEST_CASES.
NUM_TRAIN_CASES = 8
NUM_TEST_CASES = 3


def split_sample(sample: Path, raw_root: Path, *, num_train: int, num_test: int) -> Path:
    """Copy the first ``num_train`` sample cases to imagesTr/labelsTr and the last ``num_test`` to imagesTs/labelsTs.

    Returns:
        The raw dataset folder.
    """
    target = raw_root / sample.name
    if (target / "dataset.json").is_file():
        return target
    dataset_json = load_json(sample / "dataset.json")
    ending = dataset_json["file_ending"]
    cases = sorted(p.name[: -len(ending)] for p in (sample / "labelsTr").glob(f"*{ending}"))
    if len(cases) < num_train + num_test:
        raise AutoPromptError(f"{sample}: needs {num_train + num_test} cases for the demo, has {len(cases)}")
    staging = raw_root / f".{sample.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    chosen = [(case, False) for case in cases[:num_train]] + [(case, True) for case in cases[-num_test:]]
    for case, test in chosen:
        images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        for folder in (images, labels):
            (staging / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(sample / "imagesTr" / f"{case}_0000{ending}", staging / images / f"{case}_0000{ending}")
        shutil.copy2(sample / "labelsTr" / f"{case}{ending}", staging / labels / f"{case}{ending}")
    save_json({**dataset_json, "numTraining": num_train}, staging / "dataset.json")
    staging.rename(target)
    return target


def overlay_grid(
    image_file: Path, reference_file: Path, prediction_file: Path, output: Path, *, rows: int = 3
) -> None:
    """Save a PNG: ``rows`` slices (those with the most reference foreground), columns image | reference | prediction."""
    from autoprompt.serve.render import class_colors, intensity_window, render_slice
    from pipeline.io import read_image

    image, geometry = read_image(image_file)
    reference, _ = read_image(reference_file)
    prediction, _ = read_image(prediction_file)
    colors = class_colors(np.union1d(np.unique(reference), np.unique(prediction)).astype(int).tolist())
    window = intensity_window(image)
    spacing_xy = (geometry.spacing[0], geometry.spacing[1])
    chosen = np.argsort((reference > 0).reshape(reference.shape[0], -1).sum(axis=1))[::-1][:rows]
    tiles = []
    for z in sorted(chosen):
        row = [
            render_slice(image[z], window=window, spacing_xy=spacing_xy),
            render_slice(image[z], window=window, spacing_xy=spacing_xy, labels=reference[z], colors=colors),
            render_slice(image[z], window=window, spacing_xy=spacing_xy, labels=prediction[z], colors=colors),
        ]
        tiles.append([Image.open(io.BytesIO(png)).convert("RGB") for png in row])
    width, height = tiles[0][0].size
    sheet = Image.new("RGB", (3 * width, len(tiles) * height))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * width, r * height))
    with atomic_path(output) as tmp:
        sheet.save(tmp, format="PNG")


def run_demo(
    output: Path, *, epochs: int, iterations_per_epoch: int, tta: bool, device: str, config: str | None = None
) -> dict:
    """Run the demo pipeline under ``output``; returns the evaluation summary."""
    from autoprompt import api
    from pipeline.evaluation import format_table

    started = time.monotonic()
    raw = split_sample(SAMPLE, output / "raw", num_train=NUM_TRAIN_CASES, num_test=NUM_TEST_CASES)
    _step("plan and preprocess", started)
    api.plan_and_preprocess(raw, output / "preprocessed", configurations=("2d",))
    _step("train (fold 0, short run)", started)
    result = api.train(
        raw.name,
        0,
        preprocessed=output / "preprocessed",
        results=output / "results",
        configuration="2d",
        config=config,
        # no augmented views: they would add one encoder pass per view and window to a demo of minutes
        overrides=["views.count=1"],
        epochs=epochs,
        iterations_per_epoch=iterations_per_epoch,
        device=device,
        resume=(output / "results").is_dir(),
    )
    _step(f"predict {NUM_TEST_CASES} held-back cases", started)
    predictions = output / "predictions"
    predicted = api.predict(
        result.model_folder, raw / "imagesTs", predictions, folds=[0], tta=tta or None, device=device
    )
    for note in predicted.notes:  # how the model ran, e.g. with the int8 encoder
        print(note, flush=True)
    _step("evaluate", started)
    labels = {k: v for k, v in load_json(raw / "dataset.json")["labels"].items() if v != 0}
    summary = api.evaluate(raw / "labelsTs", predictions, labels=labels, output_json=output / "summary.json")
    print(format_table(summary))
    first = sorted((raw / "labelsTs").iterdir())[0].name
    case = first[: -len(".nii.gz")]
    overlay_grid(
        raw / "imagesTs" / f"{case}_0000.nii.gz",
        raw / "labelsTs" / first,
        predictions / first,
        output / "overlay.png",
    )
    _step(f"done: {output / 'summary.json'}, {output / 'overlay.png'}", started)
    return summary


def _step(message: str, started: float) -> None:
    print(f"[demo {time.monotonic() - started:6.0f} s] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoprompt.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("demo_output"),
        help="where everything goes (default: demo_output)",
    )
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    parser.add_argument(
        "--iterations-per-epoch", type=int, default=25, help="iterations per epoch (default: 25)"
    )
    parser.add_argument(
        "--tta", action="store_true", help="mirror test-time augmentation (4x slower on a CPU)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--config", help="trainer preset (default: 2d_frozen; 'tiny' checks the pipeline in ~2 minutes)"
    )
    args = parser.parse_args(argv)
    silence_dependency_warnings()
    retain_freed_memory()
    try:
        run_demo(
            args.output,
            epochs=args.epochs,
            iterations_per_epoch=args.iterations_per_epoch,
            tta=args.tta,
            device=args.device,
            config=args.config,
        )
    except AutoPromptError as error:
        print(f"autoprompt demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
