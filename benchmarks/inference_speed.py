"""Seconds per volume and peak memory of ``autoprompt predict`` next to nnU-Net's predictor.

Both tools run as command-line programs on the same volumes (one input folder of ``{case}_0000`` links),
on the same device, with the same TTA setting, for one fold and for five. Each run is a child process
(``autoprompt.benchmarking.nnunet_baseline.run_logged``): its wall time divided by the number of volumes
(start-up and model loading included, as a user meets them) and its peak resident memory (the largest process).

Five folds need five trained folds; where a model folder has fewer, the missing ``fold_K`` are links to
a trained one. The work per volume is that of five folds; the answers are not meant to be compared.

Models: pass a trained autoprompt model folder and an nnU-Net model folder. Without them the script makes
what it needs, for timing only: an autoprompt model folder with the real LiteMedSAM backbone and
untrained heads (planned on the benchmark cases with ``plan_and_preprocess``), and a short nnU-Net 2d
training (``nnUNetTrainer_1epoch`` by default, ``-device cpu``) through the nnunetv2 command line, or
with ``--nnunet-iterations N`` one epoch of N iterations (cheaper; the network and its inference cost are
the same, only the weights are barely trained).

    # ACDC, the 20 validation volumes of the 70/10 patient split, trained models:
    .venv/bin/python -m benchmarks.inference_speed --raw ../shared/data/Dataset027_ACDC \\
        --splits ../shared/data/Dataset027_ACDC/splits_patient_70_10.json --fold 0 \\
        --autoprompt-model RESULTS/Dataset027_ACDC/autoprompt__2d_frozen__2d \\
        --nnunet-model NNUNET_RESULTS/Dataset027_ACDC/nnUNetTrainer__nnUNetPlans__2d
    # Hippocampus, 20 volumes, models made here (timing only):
    .venv/bin/python -m benchmarks.inference_speed --raw ../shared/data/Dataset004_Hippocampus --cases 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from autoprompt.benchmarking.measurement import load_average, machine_info, machine_label
from autoprompt.benchmarking.nnunet_baseline import TRAINER_NAME, NnUNetRoots, link_raw_subset, run_logged
from autoprompt.benchmarking.nnunet_baseline import plan_and_preprocess as nnunet_plan_and_preprocess
from autoprompt.benchmarking.nnunet_baseline import train as nnunet_train
from autoprompt.devices import resolve_device
from autoprompt.paths import dataset_id
from pipeline.checkpoint import checkpoint_path, save_checkpoint
from pipeline.dataset import load_raw_dataset
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.files import load_json, save_json
from pipeline.inference.predictor import ALL_TRAINED, Predictor
from pipeline.model_folder import ModelFolder
from pipeline.trainer_config import DEFAULT_PRESETS, load_trainer_config

REPO = Path(__file__).resolve().parents[1]


def candidate_cases(raw: Path, *, splits: Path | None, fold: int) -> list[str]:
    """The validation cases of ``fold`` in ``splits`` (sorted), or every case of the dataset."""
    return sorted(load_json(splits)[fold]["val"]) if splits else sorted(load_raw_dataset(raw).cases)


def link_inputs(raw: Path, cases: list[str], folder: Path) -> Path:
    """``folder/{case}_XXXX<ending>`` links to the raw images of ``cases`` (both tools read this folder)."""
    dataset = load_raw_dataset(raw)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in cases:
        for image in dataset.cases[case].images:
            (folder / image.name).symlink_to(image.resolve())
    return folder


def untrained_autoprompt_model(raw_subset: Path, work: Path, *, configuration: str, preset: str) -> Path:
    """A model folder of ``preset`` with untrained heads (fold 0), planned on ``raw_subset``: timing only."""
    preprocessed = plan_and_preprocess(
        raw_subset, work / "autoprompt_preprocessed", configurations=(configuration,)
    )
    trainer_config = load_trainer_config(preset)
    folder = ModelFolder.create(
        work / "autoprompt_untrained" / f"autoprompt__{preset}__{configuration}",
        plans_file=preprocessed / "plans.json",
        dataset_json_file=preprocessed / "dataset.json",
        fingerprint_file=preprocessed / "fingerprint.json",
        trainer_config=trainer_config,
        configuration=configuration,
    )
    model = folder.build_model(device="cpu")
    backbone = model.backbone
    metadata = {
        "backbone": backbone.name,
        "backbone_checksum": backbone.checksum,
        "note": "untrained, timing only",
    }
    save_checkpoint(
        {"model": model.trainable_state_dict(), "metadata": metadata},
        checkpoint_path(folder.fold_dir(0), "best"),
    )
    return folder.path


def short_nnunet_model(
    roots: NnUNetRoots, dataset_name: str, *, trainer: str, iterations: int | None, log: Path
) -> Path:
    """Plan, preprocess and briefly train nnU-Net 2d on the linked subset (fold ``all``, CPU).

    ``iterations`` None: ``nnUNetv2_train ... -tr <trainer>`` (e.g. nnUNetTrainer_1epoch, 250 iterations).
    Otherwise one epoch of that many iterations of nnUNetTrainer (``nnunet_baseline.train``).
    """
    name = TRAINER_NAME if iterations else trainer
    model = roots.results / dataset_name / f"{name}__nnUNetPlans__2d"
    if (model / "fold_all" / "checkpoint_final.pth").is_file():
        return model
    number = dataset_id(dataset_name)
    nnunet_plan_and_preprocess(roots, number, configuration="2d", num_processes=2, log_file=log)
    if iterations:
        nnunet_train(roots, number, configuration="2d", budget_minutes=0.01, device="cpu", log_file=log,
                     num_iterations_per_epoch=iterations)  # fmt: skip
    else:
        command = [
            console_script("nnUNetv2_train"),
            str(number),
            "2d",
            "all",
            "-tr",
            trainer,
            "-device",
            "cpu",
        ]
        run_logged(command, env=roots.environment(), log_file=log, what="nnU-Net training")
    return model


def with_five_folds(model: Path, work: Path) -> Path:
    """``model`` if it has ``fold_0`` ... ``fold_4``; else a folder of links where missing folds point to a trained one."""
    folds = sorted(p for p in model.iterdir() if p.is_dir() and p.name.startswith("fold_"))
    if not folds:
        raise SystemExit(f"{model}: no fold_* folders; pass a trained model folder")
    if all((model / f"fold_{k}").is_dir() for k in range(5)):
        return model
    linked = work / f"{model.name}__5folds"
    shutil.rmtree(linked, ignore_errors=True)
    linked.mkdir(parents=True)
    for entry in model.iterdir():
        if not entry.name.startswith("fold_"):
            (linked / entry.name).symlink_to(entry.resolve())
    for k in range(5):
        source = model / f"fold_{k}" if (model / f"fold_{k}").is_dir() else folds[0]
        (linked / f"fold_{k}").symlink_to(source.resolve())
    return linked


def encoder_run(model: Path, *, precision: str, device: str) -> str:
    """``int8`` where ``autoprompt predict --precision PRECISION`` runs the model folder's int8 encoder on this
    machine, else the precision it runs the encoder in."""
    predictor = Predictor.from_model_folder(model, folds=ALL_TRAINED, precision=precision, device=device)
    return "int8" if predictor.models[0].backbone.int8_encoder is not None else predictor.precision.value


def console_script(name: str) -> str:
    """The console script ``name`` (``nnUNetv2_predict``, ...) installed next to this Python, else the bare name."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset folder (nnU-Net format)")
    parser.add_argument("--cases", type=int, default=20, help="number of volumes (default 20)")
    parser.add_argument(
        "--splits", type=Path, help="splits_final.json-style file: take the validation cases of --fold"
    )
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument(
        "--configuration", default="2d", choices=("2d", "3d"), help="autoprompt configuration"
    )
    parser.add_argument(
        "--autoprompt-model",
        type=Path,
        help="trained autoprompt model folder (default: untrained, timing only)",
    )
    parser.add_argument(
        "--nnunet-model", type=Path, help="trained nnU-Net model folder (nnUNetTrainer__nnUNetPlans__2d)"
    )
    parser.add_argument(
        "--preset",
        help="trainer preset of the untrained model made without --autoprompt-model (default: 2d_frozen/3d_adapter)",
    )
    parser.add_argument("--nnunet-checkpoint", default="checkpoint_final.pth")
    parser.add_argument(
        "--train-nnunet",
        default="nnUNetTrainer_1epoch",
        help="trainer for the short nnU-Net training without --nnunet-model",
    )
    parser.add_argument(
        "--nnunet-iterations",
        type=int,
        help="instead of --train-nnunet: one epoch of this many iterations of nnUNetTrainer (cheaper, timing only)",
    )
    parser.add_argument("--no-nnunet", action="store_true", help="time autoprompt only")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 5], choices=(1, 5))
    parser.add_argument("--tta", nargs="+", default=["on", "off"], choices=("on", "off"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autoprompt predict's --precision (default auto, as a user runs it: the precision the model "
        "was trained in, and its int8 encoder on CPUs where int8 pays)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/autoprompt_inference_speed"),
        help="scratch folder (kept for reuse)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="JSON results (default benchmarks/results/inference_speed_<dataset>.json)",
    )
    args = parser.parse_args(argv)
    load_before = load_average()

    raw = args.raw.resolve()
    work = args.work / raw.name
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    candidates = candidate_cases(raw, splits=args.splits, fold=args.fold)
    cases = candidates[: args.cases]
    inputs = link_inputs(raw, cases, work / "input")
    roots = NnUNetRoots.under(work / "nnunet")
    # models made here are planned/trained on at least 5 cases (5 folds need them), the timed ones first
    raw_subset = link_raw_subset(raw, candidates[: max(args.cases, 5)], roots.raw, raw.name)
    autoprompt_model = args.autoprompt_model or untrained_autoprompt_model(
        raw_subset,
        work,
        configuration=args.configuration,
        preset=args.preset or DEFAULT_PRESETS[args.configuration],
    )
    tools = {"autoprompt": with_five_folds(autoprompt_model, work)}
    if not args.no_nnunet:
        nnunet_model = args.nnunet_model or short_nnunet_model(
            roots, raw.name, trainer=args.train_nnunet, iterations=args.nnunet_iterations, log=log
        )
        tools["nnU-Net"] = with_five_folds(nnunet_model, work)

    rows = []
    for tta in args.tta:
        for num_folds in args.folds:
            folds = [str(k) for k in range(num_folds)]
            for tool, model in tools.items():
                output = work / "output" / f"{tool}_{num_folds}folds_tta_{tta}"
                shutil.rmtree(output, ignore_errors=True)
                if tool == "autoprompt":
                    command = [sys.executable, "-m", "autoprompt", "predict", "-i", str(inputs), "-o", str(output),
                               "--model-dir", str(model), "-f", *folds, "--device", args.device]  # fmt: skip
                    command += ["--no-tta" if tta == "off" else "--tta", "--precision", args.precision]
                    env = dict(os.environ)
                else:
                    command = [console_script("nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", str(output),
                               "-m", str(model), "-f", *folds, "-chk", args.nnunet_checkpoint, "-device", args.device,
                               "-npp", "1", "-nps", "1", "--disable_progress_bar"]  # fmt: skip
                    command += ["--disable_tta"] if tta == "off" else []
                    env = roots.environment()
                usage = run_logged(command, env=env, log_file=log, what=f"{tool} prediction")
                seconds, peak = usage.seconds, usage.peak_rss_mib
                rows.append({"tool": tool, "folds": num_folds, "tta": tta == "on", "seconds_per_volume": seconds / len(cases),
                             "seconds_total": seconds, "peak_rss_mib": peak})  # fmt: skip
                print(
                    f"{tool:10s} folds={num_folds} tta={tta:3s} {seconds / len(cases):7.2f} s/volume  peak {peak:7.0f} MiB",
                    flush=True,
                )

    result = {
        "dataset": raw.name,
        "cases": cases,
        "device": args.device,
        "machine": machine_info(resolve_device(args.device), load_average_before=load_before),
        "autoprompt_model": str(autoprompt_model),
        "autoprompt_model_trained": args.autoprompt_model is not None,
        "autoprompt_precision": args.precision,
        "autoprompt_encoder": encoder_run(autoprompt_model, precision=args.precision, device=args.device),
        "nnunet_model": None if args.no_nnunet else str(args.nnunet_model or short_training(args)),
        "rows": rows,
    }
    output_json = args.output or REPO / "benchmarks" / "results" / f"inference_speed_{raw.name}.json"
    save_json(result, output_json)
    print(f"\n{raw.name}, {len(cases)} volumes, device {args.device}: {machine_label(result['machine'])}\n")
    print("| tool | folds | TTA | s / volume | peak RSS (MiB) |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['tool']} | {row['folds']} | {'on' if row['tta'] else 'off'} | {row['seconds_per_volume']:.2f} | {row['peak_rss_mib']:.0f} |"
        )
    print(f"\nwritten {output_json}")


def short_training(args: argparse.Namespace) -> str:
    """What trained the nnU-Net model made here, for the JSON."""
    if args.nnunet_iterations:
        return f"short training: one epoch of {args.nnunet_iterations} iterations of nnUNetTrainer"
    return f"short training: {args.train_nnunet}"


if __name__ == "__main__":
    main()
