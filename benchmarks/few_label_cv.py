"""Few-label cross-validation on ACDC inside the 70 training patients: the measurements defaults are chosen by.

The 10 "val" patients of ``splits_patient_70_10.json`` are the test patients and are never touched here.
From the 70 training patients (shuffled once with ``--seed``) the last ``--val-patients`` validate and
the first N train, for every N in ``--sizes`` (nested subsets). One raw copy (symbolic links) holds
those patients; its ``splits_final.json`` has one fold per size, so the embedding cache, the validation
embeddings and the augmented views are shared by every variant::

    python -m benchmarks.few_label_cv --sizes 3,7 --variant views --set views.count=null
    python -m benchmarks.few_label_cv --sizes 3 --variant no_views --set views.count=1

Each run trains fold "size" with the 2d_frozen preset and the ``--set`` overrides for ``--epochs`` x
``--iterations`` steps, validates on the validation patients through the real prediction path, and
writes ``WORK/cv_<variant>_<N>.json``: per-class Dice and HD95 (means), the worst patient's class Dice,
the number of (volume, class) pairs with Dice below 0.1 where the class is present ("lost"), steps and
seconds.
Re-running with the same variant and size reuses the finished run (``--resume`` continues a broken one).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np

from autoprompt import api
from autoprompt.allocator import retain_freed_memory
from autoprompt.benchmarking.cases import training_subsets
from pipeline.files import save_json

ROOT = Path(__file__).resolve().parents[1]

ACDC = "Dataset027_ACDC"
CV_NAME = "Dataset227_ACDCcv"  # the copy made for a run (cross-validation or --test)
LOST_DICE = 0.1  # a (volume, class) with a Dice below this, where the class is present, counts as lost
PATIENT = re.compile(r"^(patient\d+)_frame\d+$")


def patients_of(cases: list[str]) -> list[str]:
    return sorted({PATIENT.match(case)[1] for case in cases})


def cv_patients(
    raw: Path, *, sizes: list[int], val_patients: int, seed: int, test: bool
) -> tuple[dict[int, list[str]], list[str]]:
    """Training patients per size (nested) and the validation patients, all from the 70 training patients.

    With ``test`` the training patients are the benchmark's nested subsets of all 70
    (:func:`autoprompt.benchmarking.cases.training_subsets`, as ``autoprompt benchmark --train-cases`` draws
    them) and the validation patients are the 10 test patients: for reporting, after every choice is made.
    """
    split = json.loads((raw / ACDC / "splits_patient_70_10.json").read_text())[0]
    pool = patients_of(split["train"])
    if test:
        subsets = training_subsets(split["train"], sizes, group_regex=PATIENT.pattern, seed=seed)
        label = {size: str(size) if str(size) in subsets else "all" for size in sizes}
        return {size: patients_of(subsets[label[size]]) for size in sizes}, patients_of(split["val"])
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    validation = sorted(order[-val_patients:])
    if max(sizes) > len(pool) - val_patients:
        raise SystemExit(f"--sizes: at most {len(pool) - val_patients} training patients remain")
    return {size: sorted(order[:size]) for size in sizes}, validation


def make_raw_copy(raw: Path, work: Path, patients: list[str]) -> Path:
    """``WORK/raw/Dataset227_ACDCcv``: links to the ACDC files of ``patients``."""
    source = raw / ACDC
    target = work / "raw" / CV_NAME
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    cases = []
    for path in sorted((source / "labelsTr").glob("*.nii.gz")):
        case = path.name.removesuffix(".nii.gz")
        if PATIENT.match(case)[1] not in patients:
            continue
        cases.append(case)
        for sub, name in (("labelsTr", path.name), ("imagesTr", f"{case}_0000.nii.gz")):
            link = target / sub / name
            if not link.exists():
                link.symlink_to((source / sub / name).resolve())
    dataset = json.loads((source / "dataset.json").read_text())
    dataset["numTraining"] = len(cases)
    save_json(dataset, target / "dataset.json")
    return target


def link_references(names: list[str], references: Path, folder: Path) -> Path:
    """``folder`` (created) holding symbolic links to ``references/<name>`` for each of ``names``: the
    references of the predicted cases only, as ``evaluate_folders`` expects."""
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).symlink_to((references / name).resolve())
    return folder


def summarise(summary: dict) -> dict:
    """Means, worst patient and lost classes from a validation summary."""
    labels = summary["labels"]
    per_class = {name: summary["mean"][str(value)] for name, value in labels.items()}
    per_patient: dict[str, list[float]] = {}
    lost = 0
    for case in summary["metric_per_case"]:
        patient = PATIENT.match(Path(case["reference_file"]).name.removesuffix(".nii.gz"))[1]
        for value in labels.values():
            metrics = case["metrics"][str(value)]
            if metrics["Dice"] is None:
                continue
            per_patient.setdefault(patient, []).append(metrics["Dice"])
            lost += metrics["Dice"] < LOST_DICE and metrics.get("n_ref", 1) > 0
    patient_means = {patient: float(np.mean(values)) for patient, values in per_patient.items()}
    worst = min(patient_means, key=patient_means.get)
    return {
        "mean_dice": summary["foreground_mean"]["Dice"],
        "mean_hd95": summary["foreground_mean"]["HD95"],
        "dice": {name: m["Dice"] for name, m in per_class.items()},
        "hd95": {name: m["HD95"] for name, m in per_class.items()},
        "worst_patient": worst,
        "worst_patient_dice": patient_means[worst],
        "min_case_class_dice": min(
            (
                c["metrics"][str(v)]["Dice"]
                for c in summary["metric_per_case"]
                for v in labels.values()
                if c["metrics"][str(v)]["Dice"] is not None
            ),
            default=math.nan,
        ),
        "lost_case_classes": int(lost),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--raw", default=str(ROOT.parent / "shared" / "data"), help="folder holding Dataset027_ACDC"
    )
    parser.add_argument(
        "--work", default="cv_work", help="work folder (raw copy, preprocessed, results, JSON)"
    )
    parser.add_argument("--sizes", default="3,7", help="training patients per run, comma-separated (nested)")
    parser.add_argument("--pool-sizes", default="3,7,20", help="sizes the shared raw copy and folds hold")
    parser.add_argument("--val-patients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--variant", required=True, help="name of this setting (results folder and JSON)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--test", action="store_true", help="report on the 10 test patients (never for choosing settings)"
    )
    args = parser.parse_args()
    retain_freed_memory()  # as the autoprompt command: no page faults on every layer's buffers

    raw, work = Path(args.raw), Path(args.work).resolve()
    pool_sizes = sorted(int(s) for s in args.pool_sizes.split(","))
    train_sets, validation = cv_patients(
        raw, sizes=pool_sizes, val_patients=args.val_patients, seed=args.seed, test=args.test
    )
    if args.test:
        work = work / "test"
    raw_copy = make_raw_copy(raw, work, sorted(set(validation).union(*train_sets.values())))
    preprocessed = work / "preprocessed"
    folder = api.plan_and_preprocess(
        raw_copy, preprocessed, configurations=["2d"], group_regex=PATIENT.pattern
    )
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (raw_copy / "labelsTr").glob("*.nii.gz"))
    splits = [
        {
            "train": [c for c in cases if PATIENT.match(c)[1] in train_sets[size]],
            "val": [c for c in cases if PATIENT.match(c)[1] in validation],
        }
        for size in pool_sizes
    ]
    save_json(splits, folder / "splits_final.json")
    for size in (int(s) for s in args.sizes.split(",")):
        out = work / f"{'test' if args.test else 'cv'}_{args.variant}_{size}.json"
        if out.is_file() and not args.resume:
            print(f"{out} exists: skipped")
            continue
        started = time.perf_counter()
        result = api.train(
            CV_NAME,
            pool_sizes.index(size),
            preprocessed=preprocessed,
            results=work / "results" / args.variant,
            configuration="2d",
            overrides=args.overrides,
            epochs=args.epochs,
            iterations_per_epoch=args.iterations,
            device=args.device,
            resume=args.resume,
            raw=work / "raw",
        )
        report = {
            "variant": args.variant,
            "overrides": args.overrides,
            "training_patients": train_sets[size],
            "validation_patients": validation,
            "epochs": result.epochs,
            "steps": result.steps,
            "seconds": round(time.perf_counter() - started),
            "timings": result.timings,
            **summarise(result.validation),
        }
        save_json(report, out)
        print(
            json.dumps(
                {
                    k: report[k]
                    for k in ("variant", "mean_dice", "dice", "worst_patient_dice", "lost_case_classes")
                }
            )
        )


if __name__ == "__main__":
    main()
