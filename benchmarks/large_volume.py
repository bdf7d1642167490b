"""Peak memory and seconds of one AMOS-sized CT volume through plan, preprocess, train and predict (issue #17).

A synthetic abdominal CT (default 300 x 512 x 512 voxels at 0.8 x 0.8 x 1.5 mm, int16 Hounsfield-like values:
air, a body, a spine and 15 labelled organ blobs) becomes a real nnU-Net raw dataset (NIfTI through
SimpleITK, ``dataset.json`` with a channel named CT): the volume is its one training case and, as a link,
its one test image. Every step runs as a command-line child process, as a user runs it, measured by
``autoprompt.benchmarking.nnunet_baseline.run_logged`` (wall time; peak resident memory of the largest
process, ``ru_maxrss``):

1. ``autoprompt plan-and-preprocess`` (2d);
2. ``autoprompt train DATASET all`` with the 2d_frozen preset for a few steps without the embedding cache
   (quality is not the point: the model only has to be a real, trained model folder);
3. ``autoprompt predict`` on the test image (no TTA unless ``--tta``), optionally ``--save-probabilities``;
4. with ``--nnunet-model``, ``nnUNetv2_predict_from_modelfolder`` (fold ``all``, ``checkpoint_final.pth``)
   on the same image, e.g. a 3d_fullres model folder trained elsewhere.

Seconds per volume are the predict command's wall time, start-up and model loading included. The goal of
issue #17 is under 8 GB peak for ``autoprompt predict``. Writes ``benchmarks/results/large_volume_cpu.json``
(or ``--output``); the estimate ``predict`` checks cases against (``pipeline.inference.case_cost``) is
recorded next to the measurement.

    .venv/bin/python -m benchmarks.large_volume                          # 300 x 512 x 512, 15 organs
    .venv/bin/python -m benchmarks.large_volume --shape 60 512 512       # a shorter volume
    .venv/bin/python -m benchmarks.large_volume --nnunet-model RESULTS/Dataset950_LargeCT/nnUNetTrainer__nnUNetPlans__3d_fullres
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoprompt.allocator import retained_memory_environment
from autoprompt.benchmarking.nnunet_baseline import NnUNetRoots, StepUsage, run_logged
from autoprompt.benchmarking.nnunet_baseline import predict as nnunet_predict
from pipeline.files import save_json

REPO = Path(__file__).resolve().parents[1]
DATASET = "Dataset950_LargeCT"
SPACING = (0.8, 0.8, 1.5)  # SimpleITK (x, y, z), mm
NUM_ORGANS = 15
AIR, BODY, BONE = -1000, 40, 700
SLAB = 32  # slices generated at a time (bounds the generator's own memory)


def organ_blobs(
    shape: tuple[int, int, int], *, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``NUM_ORGANS`` ellipsoids inside the body: ``(centre zyx, radii zyx, HU)`` each."""
    z, y, x = shape
    blobs = []
    for organ in range(NUM_ORGANS):
        angle = 2 * np.pi * organ / NUM_ORGANS
        centre = np.array(
            [
                rng.uniform(0.3, 0.7) * z,
                y / 2 + 0.2 * y * np.sin(angle),
                x / 2 + 0.25 * x * np.cos(angle),
            ]
        )
        radii = np.array(
            [rng.uniform(0.08, 0.2) * z, rng.uniform(0.03, 0.07) * y, rng.uniform(0.03, 0.07) * x]
        )
        blobs.append((centre, np.maximum(radii, 2.0), int(rng.integers(20, 200))))
    return blobs


def write_synthetic_ct(folder: Path, shape: tuple[int, int, int], *, seed: int = 0) -> Path:
    """Write ``folder/DATASET`` (nnU-Net raw format) with one CT case ``ct_000`` and return the dataset folder.

    Args:
        folder: the raw root.
        shape: ``(Z, Y, X)`` voxels.
    """
    rng = np.random.default_rng(seed)
    dataset = folder / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
    z, y, x = shape
    image = np.full(shape, AIR, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    rows, cols = np.meshgrid(np.arange(y), np.arange(x), indexing="ij")
    body = ((rows - y / 2) / (0.42 * y)) ** 2 + ((cols - x / 2) / (0.46 * x)) ** 2 <= 1
    spine = ((rows - 0.75 * y) / (0.05 * y)) ** 2 + ((cols - x / 2) / (0.04 * x)) ** 2 <= 1
    blobs = organ_blobs(shape, rng=rng)
    for start in range(0, z, SLAB):
        stop = min(z, start + SLAB)
        slab = np.where(body, BODY, AIR).astype(np.float32)[None].repeat(stop - start, axis=0)
        slab[:, spine] = BONE
        slab_label = label[start:stop]
        depth = np.arange(start, stop)[:, None, None]
        for organ, (centre, radii, hounsfield) in enumerate(blobs, start=1):
            inside = (
                ((depth - centre[0]) / radii[0]) ** 2
                + ((rows - centre[1]) / radii[1]) ** 2
                + ((cols - centre[2]) / radii[2]) ** 2
            ) <= 1
            slab[inside] = hounsfield
            slab_label[inside] = organ
        slab += rng.normal(0.0, 15.0, size=slab.shape).astype(np.float32)
        image[start:stop] = np.clip(np.round(slab), -1024, 3071).astype(np.int16)
    for array, path in (
        (image, dataset / "imagesTr" / "ct_000_0000.nii.gz"),
        (label, dataset / "labelsTr" / "ct_000.nii.gz"),
    ):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(SPACING)
        sitk.WriteImage(itk, str(path))
    test_image = dataset / "imagesTs" / "ct_000_0000.nii.gz"
    test_image.unlink(missing_ok=True)
    test_image.symlink_to(dataset / "imagesTr" / "ct_000_0000.nii.gz")
    labels = {"background": 0, **{f"organ{k:02d}": k for k in range(1, NUM_ORGANS + 1)}}
    save_json(
        {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"},
        dataset / "dataset.json",
    )
    return dataset


def autoprompt_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "autoprompt", *arguments]


def usage(step: StepUsage) -> dict:
    return {"seconds": round(step.seconds, 1), "peak_rss_gib": round(step.peak_rss_mib / 1024, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "autoprompt_large_volume",
        help="emptied first",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "large_volume_cpu.json"
    )
    parser.add_argument("--iterations", type=int, default=2, help="training steps (default 2)")
    parser.add_argument("--tta", action="store_true", help="predict with mirroring TTA (4x the windows)")
    parser.add_argument(
        "--save-probabilities", action="store_true", help="also write the float16 probabilities"
    )
    parser.add_argument(
        "--nnunet-model", type=Path, help="an nnU-Net model folder with fold_all to predict with too"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from pipeline.inference.case_cost import estimate_case_cost
    from pipeline.io import read_image_info
    from pipeline.model_folder import ModelFolder

    shutil.rmtree(args.work, ignore_errors=True)
    roots = {name: args.work / name for name in ("raw", "preprocessed", "results")}
    dataset = write_synthetic_ct(roots["raw"], tuple(args.shape))
    env = retained_memory_environment(os.environ)
    folders = [f"--{name}={path}" for name, path in roots.items()]
    logs = args.work / "logs"
    steps = {}
    steps["plan_and_preprocess"] = run_logged(
        autoprompt_command("plan-and-preprocess", "-d", DATASET, "-c", "2d", *folders),
        env=env,
        log_file=logs / "plan_and_preprocess.log",
        what="plan-and-preprocess",
    )
    train = [
        "train", DATASET, "all", "-c", "2d", "--config", "2d_frozen", "--epochs", "1",
        "--iterations-per-epoch", str(args.iterations), "--device", args.device,
        "--set", "cache_embeddings=false", "--set", "final_validation=false", "--set", "val_iterations=0",
        "--set", "batch_size=2",
    ]  # fmt: skip
    steps["train"] = run_logged(
        autoprompt_command(*train, *folders), env=env, log_file=logs / "train.log", what="training"
    )
    model = roots["results"] / DATASET / "autoprompt__2d_frozen__2d"
    predict = ["predict", "-i", str(dataset / "imagesTs"), "-o", str(args.work / "predictions"),
               "--model-dir", str(model), "-f", "all", "--checkpoint", "final", "--device", args.device,
               "--tta" if args.tta else "--no-tta"]  # fmt: skip
    if args.save_probabilities:
        predict.append("--save-probabilities")
    steps["predict"] = run_logged(
        autoprompt_command(*predict), env=env, log_file=logs / "predict.log", what="autoprompt predict"
    )
    plans = ModelFolder(model).plans
    cost = estimate_case_cost(
        [read_image_info(dataset / "imagesTs" / "ct_000_0000.nii.gz")],
        plans,
        "2d",
        tta=args.tta,
        probabilities=args.save_probabilities,
    )
    if args.nnunet_model:
        steps["nnunet_predict"] = nnunet_predict(
            NnUNetRoots.under(args.work / "nnunet"),
            args.nnunet_model,
            dataset / "imagesTs",
            args.work / "nnunet_predictions",
            tta=args.tta,
            device=args.device,
            log_file=logs / "nnunet_predict.log",
        )
    result = {
        "volume": {"shape_zyx": list(args.shape), "spacing_xyz_mm": list(SPACING), "classes": NUM_ORGANS},
        "plan": {
            "window_size": plans.configuration("2d").window_size,
            "target_spacing": plans.configuration("2d").target_spacing,
            "inplane_rule": plans.configuration("2d").inplane_rule,
        },
        "settings": {
            "device": args.device,
            "tta": args.tta,
            "save_probabilities": args.save_probabilities,
            "training_iterations": args.iterations,
            "nnunet_model": str(args.nnunet_model) if args.nnunet_model else None,
        },
        "steps": {name: usage(step) for name, step in steps.items()},
        "predict_seconds_per_volume": round(steps["predict"].seconds, 1),
        "predict_peak_rss_gib": round(steps["predict"].peak_rss_mib / 1024, 3),
        "predict_estimate": cost.to_dict(),
        "goal_peak_gib": 8,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "command": " ".join(
            ["python -m benchmarks.large_volume", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    save_json(result, args.output)
    print(
        f"predict: {result['predict_peak_rss_gib']} GiB peak, {result['predict_seconds_per_volume']} s -> {args.output}"
    )


if __name__ == "__main__":
    main()
