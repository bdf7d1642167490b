"""``benchmark``: autoprompt against nnU-Net v2 on the same cases, the same budget and the same metrics.

    from autoprompt import api
    report = api.benchmark("raw/Dataset027_ACDC", "bench_acdc", budget_minutes=60,
                           splits_file="raw/Dataset027_ACDC/splits_patient_70_10.json")
    report["runs"][0]["mean"]["dice"]

For every training-set size (one, or several for a data-efficiency curve) and each method, four parts
run in order: ``preprocessed`` (the method's own planning of the training cases), ``trained`` (fold
"all", all training cases, epochs fitted to the same wall-clock budget), ``predicted`` (the same test
cases, the final checkpoint) and ``evaluated`` (:func:`pipeline.evaluation.evaluate_folders` for both).
Every step but the evaluation runs in a child process, so wall time and peak memory are measured the
same way for both methods (:func:`autoprompt.benchmarking.nnunet_baseline.run_logged`). A finished part
leaves a JSON stamp (with the machine it ran on: a run resumed elsewhere says so) and is never run again; a
run that stopped resumes where it stopped. The cases come from
:mod:`autoprompt.benchmarking.cases`, the report from :mod:`autoprompt.benchmarking.report`.

Layout of ``REPORT_DIR``::

    report.md  report.json  dice_by_class.png  [data_efficiency.png]
    work/settings.json                         the settings every part was made with
    work/test/imagesTs, labelsTs               links to the raw test cases (the same for both methods)
    work/<method>/train_<size>/                method "autoprompt" or "nnunet", size "all" or N
        raw/ preprocessed/ results/            autoprompt's folders (nnUNet_raw/... for nnU-Net)
        predictions/  evaluation/summary.json  logs/<step>.log  stamps/<part>.json
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from autoprompt.allocator import retained_memory_environment
from autoprompt.benchmarking import nnunet_baseline
from autoprompt.benchmarking.cases import ALL, group_of, select_cases, training_subsets
from autoprompt.benchmarking.measurement import machine
from autoprompt.benchmarking.report import BASELINES, METHOD_TITLES, METHODS, summarise_run, write_report
from autoprompt.errors import AutoPromptError
from autoprompt.paths import dataset_id
from autoprompt.progress import progress
from pipeline.dataset import RawDataset, load_raw_dataset
from pipeline.files import load_json, save_json

PARTS = ("preprocessed", "trained", "predicted", "evaluated")
STEP_TITLES = {
    "preprocessed": "planning and preprocessing",
    "trained": "training",
    "predicted": "predicting the test cases",
    "evaluated": "evaluating",
}
NNUNET_CONFIGURATIONS = {"2d": "2d", "3d": "3d_fullres"}
MAX_EPOCHS = 1000
"""Epoch cap for autoprompt under a budget: nnU-Net's own number of epochs (the budget normally ends earlier)."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything a part's result depends on, besides its training-set size (saved in work/settings.json)."""

    dataset: str
    source_folder: str
    configuration: str
    nnunet_configuration: str
    budget_minutes: float
    device: str
    autoprompt_config: str
    autoprompt_overrides: list[str]
    nnunet_iterations_per_epoch: int | None
    tta: bool
    seed: int
    group_regex: str | None
    train_pool: list[str]
    test_cases: list[str]
    case_source: str


# ------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Part:
    """One method trained on one training-set size."""

    method: str
    size: str
    train_cases: list[str]
    folder: Path

    def stamp(self, part: str) -> Path:
        return self.folder / "stamps" / f"{part}.json"

    def log(self, step: str) -> Path:
        return self.folder / "logs" / f"{step}.log"

    @property
    def predictions(self) -> Path:
        return self.folder / "predictions"


@dataclass(frozen=True)
class _Context:
    """What every step needs: the settings and the shared test folders."""

    settings: BenchmarkSettings
    source: Path
    test_images: Path
    test_labels: Path
    labels: dict[str, int]
    num_processes: int


def run_benchmark(
    raw_dataset_folder: str | os.PathLike,
    report_dir: str | os.PathLike,
    *,
    train_cases: Sequence[str] | None = None,
    train_sizes: Sequence[int | str] = (ALL,),
    test_cases: Sequence[str] | None = None,
    splits_file: str | os.PathLike | None = None,
    group_regex: str | None = None,
    seed: int = 12345,
    budget_minutes: float = 60.0,
    configuration: str = "2d",
    nnunet_configuration: str | None = None,
    device: str = "auto",
    autoprompt_config: str | None = None,
    autoprompt_overrides: Sequence[str] = (),
    nnunet_iterations_per_epoch: int | None = None,
    tta: bool = True,
    num_processes: int = 2,
    baseline: str = "nnunet",
) -> dict:
    """Train, predict and evaluate autoprompt and nnU-Net v2 on the same cases; write the report.

    Args:
        raw_dataset_folder: ``.../DatasetXXX_Name`` in nnU-Net v2 raw format (read only).
        report_dir: where report.md, report.json, the plots and ``work/`` go.
        train_cases: training case ids (see :func:`select_cases`); None: from the splits or the default fold.
        train_sizes: training-set sizes (numbers of groups, or "all"); several give a data-efficiency curve.
        test_cases: test case ids.
        splits_file: an nnU-Net splits_final.json-shaped file; fold 0 "train" trains, "val" tests.
        group_regex: cases with equal regex group 1 are one group (a patient): kept on one side of the
            split and counted once in a size (ACDC: ``pipeline.dataset.ACDC_GROUP_REGEX``).
        seed: seed of the default split and of the subsets.
        budget_minutes: wall-clock training budget of each method (its epochs; start-up and
            autoprompt's one-off embedding cache are outside it and reported in the training time).
        configuration: autoprompt's configuration, "2d" or "3d".
        nnunet_configuration: nnU-Net's ("2d", "3d_fullres"); None: "2d" for 2d, "3d_fullres" for 3d.
        device: "auto", "cpu" or "cuda" (both methods use the same).
        autoprompt_config: trainer preset or YAML; None: the configuration's default preset.
        autoprompt_overrides: ``key=value`` trainer settings (``model.backbone=tiny``).
        nnunet_iterations_per_epoch: None: nnU-Net's 250, or fewer where 10 epochs of 250 would not fit
            the budget (``nnunet_baseline.iterations_for_budget``); a number fixes them.
        tta: mirroring test-time augmentation: nnU-Net's; autoprompt's where its model was trained with
            mirroring (``predict(tta=None)``). False: off for both.
        num_processes: worker processes for planning and evaluation.
        baseline: "nnunet", or "none" for autoprompt alone (nnU-Net's parts are skipped; a later run
            with "nnunet" in the same report folder adds them and reuses autoprompt's).

    Returns:
        The report (also written to ``report_dir/report.json``).

    Raises:
        AutoPromptError: unknown dataset or case, overlapping train/test cases, bad options, a report
            folder made with other settings, or a failed step (naming its log).
    """
    from autoprompt.devices import resolve_device
    from pipeline.trainer_config import default_preset, load_trainer_config

    raw = load_raw_dataset(raw_dataset_folder)
    dataset_id(raw.name)  # nnU-Net needs a DatasetXXX_Name folder
    if configuration not in NNUNET_CONFIGURATIONS:
        raise AutoPromptError(f"unknown configuration '{configuration}'; choose 2d or 3d")
    if not budget_minutes > 0 or budget_minutes == float("inf"):  # NaN compares false
        raise AutoPromptError(
            f"--budget {budget_minutes}: the training budget must be a positive finite number (minutes)"
        )
    if baseline not in BASELINES:
        raise AutoPromptError(f"--vs {baseline}: choose one of {', '.join(BASELINES)}")
    if nnunet_iterations_per_epoch is not None and nnunet_iterations_per_epoch < 1:
        raise AutoPromptError(
            f"--nnunet-iterations {nnunet_iterations_per_epoch}: pass at least 1 (nnU-Net: 250)"
        )
    torch_device = resolve_device(device)
    if torch_device.index is not None:
        raise AutoPromptError(
            f"--device {device}: both methods need the same device by name; "
            f"select the GPU with CUDA_VISIBLE_DEVICES={torch_device.index} and pass --device cuda"
        )
    preset = autoprompt_config or default_preset(configuration, torch_device.type)
    load_trainer_config(preset, _autoprompt_overrides(budget_minutes, configuration, autoprompt_overrides))
    selection = select_cases(
        list(raw.cases),
        splits_file=splits_file,
        train_cases=train_cases,
        test_cases=test_cases,
        group_regex=group_regex,
        seed=seed,
    )
    _check_labelled(raw, selection.train + selection.test)
    subsets = training_subsets(selection.train, train_sizes, group_regex=group_regex, seed=seed)
    settings = BenchmarkSettings(
        dataset=raw.name,
        source_folder=str(raw.folder.resolve()),
        configuration=configuration,
        nnunet_configuration=nnunet_configuration or NNUNET_CONFIGURATIONS[configuration],
        budget_minutes=float(budget_minutes),
        device=torch_device.type,
        autoprompt_config=str(preset),
        autoprompt_overrides=list(autoprompt_overrides),
        nnunet_iterations_per_epoch=nnunet_iterations_per_epoch,
        tta=tta,
        seed=seed,
        group_regex=group_regex,
        train_pool=selection.train,
        test_cases=selection.test,
        case_source=selection.source,
    )
    report_dir = Path(report_dir)
    work = report_dir / "work"
    _check_settings(settings, work / "settings.json")
    context = _Context(
        settings=settings,
        source=raw.folder,
        test_images=work / "test" / "imagesTs",
        test_labels=work / "test" / "labelsTs",
        labels=raw.labels,
        num_processes=num_processes,
    )
    nnunet_baseline.link_cases(raw.folder, selection.test, context.test_images, context.test_labels)
    parts = [
        Part(method, size, cases, work / method / f"train_{size}")
        for size, cases in subsets.items()
        for method in (METHODS if baseline == "nnunet" else ("autoprompt",))
    ]
    runs = []
    with progress(total=len(parts) * len(PARTS), desc="benchmark", unit="step", eta=False) as bar:
        for part in parts:
            stamps = _run_part(part, context, bar)
            evaluation = load_json(stamps["evaluated"]["summary"])
            runs.append(
                summarise_run(
                    method=part.method,
                    size=part.size,
                    train_cases=part.train_cases,
                    num_groups=len({group_of(c, group_regex) for c in part.train_cases}),
                    stamps=stamps,
                    evaluation=evaluation,
                    num_test_cases=len(selection.test),
                    group_regex=group_regex,
                )
            )
    report = {"settings": asdict(settings), "labels": raw.labels, "runs": runs}
    write_report(report, report_dir)
    return report


def _autoprompt_overrides(budget_minutes: float, configuration: str, user: Sequence[str]) -> list[str]:
    """The budget settings first, so the user's ``key=value`` overrides win."""
    return [
        f"epochs={MAX_EPOCHS}",
        f"time_budget_minutes={budget_minutes}",
        f"configuration={configuration}",
        *user,
    ]


def _check_labelled(raw: RawDataset, cases: Sequence[str]) -> None:
    for case in cases:
        files = raw.cases[case]
        missing = [path for path in files.images if not path.is_file()]
        if files.label is None or missing:
            path = missing[0] if missing else raw.folder / "labelsTr" / f"{case}{raw.file_ending}"
            raise AutoPromptError(
                f"{path}: missing; case {case} needs all its images and its label for the benchmark"
            )


def _check_settings(settings: BenchmarkSettings, path: Path) -> None:
    """Save the settings, or check that an existing report folder was made with the same ones."""
    current = asdict(settings)
    if not path.is_file():
        save_json(current, path)
        return
    saved = load_json(path)
    changed = [key for key in current if saved.get(key) != current[key]]
    if changed:
        details = "; ".join(
            f"{key}: {_short(saved.get(key))} -> {_short(current[key])}" for key in changed[:3]
        )
        raise AutoPromptError(
            f"{path}: this report folder holds a benchmark with other settings ({details}); "
            "choose another -o REPORT_DIR, or delete the folder to start again"
        )


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _run_part(part: Part, context: _Context, bar: tqdm) -> dict[str, dict]:
    """The four stamps of a part, running the steps whose stamp is missing."""
    steps = _AutoPromptSteps(part, context) if part.method == "autoprompt" else _NnUNetSteps(part, context)
    actions: dict[str, Callable[[], dict]] = {
        "preprocessed": steps.preprocess,
        "trained": steps.train,
        "predicted": steps.predict,
        "evaluated": lambda: _evaluate(part, context),
    }
    stamps = {}
    for name in PARTS:
        stamp = part.stamp(name)
        bar.set_description(f"{part.method} train_{part.size}: {STEP_TITLES[name]}")
        if not stamp.is_file():
            tqdm.write(
                f"{METHOD_TITLES[part.method]}, training size {part.size}: {STEP_TITLES[name]} "
                f"(logs in {part.folder / 'logs'})",
                file=sys.stderr,
            )
            save_json({**actions[name](), "machine": machine(torch.device(context.settings.device))}, stamp)
        stamps[name] = load_json(stamp)
        bar.update()
    return stamps


def _usage(usage: nnunet_baseline.StepUsage) -> dict:
    return {"seconds": usage.seconds, "peak_rss_mib": usage.peak_rss_mib}


def _fresh(folder: Path) -> Path:
    """Remove what an unfinished earlier attempt of a step left, so it starts clean."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


class _AutoPromptSteps:
    """autoprompt's steps, each a ``python -m autoprompt.benchmarking.runner STEP`` child process."""

    def __init__(self, part: Part, context: _Context) -> None:
        self.part, self.context = part, context
        self.raw = part.folder / "raw"
        self.preprocessed = part.folder / "preprocessed"
        self.results = part.folder / "results"

    def preprocess(self) -> dict:
        name = self.context.settings.dataset
        _fresh(self.raw)
        raw = nnunet_baseline.link_raw_subset(self.context.source, self.part.train_cases, self.raw, name)
        # fold "all" trains on the union of the folds: exactly the training cases, no test case
        save_json(
            [{"train": self.part.train_cases, "val": []}],
            _fresh(self.preprocessed) / name / "splits_final.json",
        )
        kwargs = {
            "raw_dataset_folder": str(raw),
            "preprocessed_root": str(self.preprocessed),
            "configurations": [self.context.settings.configuration],
            "num_processes": self.context.num_processes,
        }
        return self._child("plan", kwargs, "autoprompt planning and preprocessing")

    def train(self) -> dict:
        settings = self.context.settings
        kwargs = {
            "dataset": settings.dataset,
            "fold": ALL,
            "preprocessed": str(self.preprocessed),
            "results": str(_fresh(self.results)),
            "config": settings.autoprompt_config,
            "overrides": _autoprompt_overrides(
                settings.budget_minutes, settings.configuration, settings.autoprompt_overrides
            ),
            "device": settings.device,
        }
        return self._child("train", kwargs, "autoprompt training")

    def predict(self) -> dict:
        kwargs = {
            "model_folder": load_json(self.part.stamp("trained"))["model_folder"],
            "input_path": str(self.context.test_images),
            "output_folder": str(_fresh(self.part.predictions)),
            "folds": [ALL],
            "checkpoint": "final",
            "device": self.context.settings.device,
            # None: mirroring only if the model trained on mirrored slices (checkpoint's mirror_augmented)
            "tta": None if self.context.settings.tta else False,
            "precision": "auto",  # the precision the network was trained in (its checkpoint records it)
        }
        return self._child("predict", kwargs, "autoprompt prediction")

    def _child(self, step: str, kwargs: dict, what: str) -> dict:
        result_file = self.part.folder / "logs" / f"{step}.result.json"
        command = [
            sys.executable,
            "-m",
            "autoprompt.benchmarking.runner",
            step,
            json.dumps(kwargs),
            str(result_file),
        ]
        usage = nnunet_baseline.run_logged(
            command, env=retained_memory_environment(os.environ), log_file=self.part.log(step), what=what
        )
        return {**_usage(usage), **load_json(result_file)}


class _NnUNetSteps:
    """nnU-Net v2's own steps (:mod:`autoprompt.benchmarking.nnunet_baseline`)."""

    def __init__(self, part: Part, context: _Context) -> None:
        self.part, self.context = part, context
        self.roots = nnunet_baseline.NnUNetRoots.under(part.folder)
        self.id = dataset_id(context.settings.dataset)

    def preprocess(self) -> dict:
        for folder in (self.roots.raw, self.roots.preprocessed):
            _fresh(folder)
        nnunet_baseline.link_raw_subset(
            self.context.source, self.part.train_cases, self.roots.raw, self.context.settings.dataset
        )
        usage = nnunet_baseline.plan_and_preprocess(
            self.roots,
            self.id,
            configuration=self.context.settings.nnunet_configuration,
            num_processes=self.context.num_processes,
            log_file=self.part.log("plan"),
        )
        return _usage(usage)

    def train(self) -> dict:
        settings = self.context.settings
        _fresh(self.roots.results)
        usage = nnunet_baseline.train(
            self.roots,
            self.id,
            configuration=settings.nnunet_configuration,
            budget_minutes=settings.budget_minutes,
            device=settings.device,
            log_file=self.part.log("train"),
            num_iterations_per_epoch=settings.nnunet_iterations_per_epoch,
        )
        folder = nnunet_baseline.model_folder(self.roots, self.id, settings.nnunet_configuration)
        budget = load_json(folder / "fold_all" / "budget.json")
        return {
            **_usage(usage),
            "model_folder": str(folder),
            "epochs": budget["epochs"],
            "steps": budget["steps"],
        }

    def predict(self) -> dict:
        usage = nnunet_baseline.predict(
            self.roots,
            Path(load_json(self.part.stamp("trained"))["model_folder"]),
            self.context.test_images,
            _fresh(self.part.predictions),
            tta=self.context.settings.tta,
            device=self.context.settings.device,
            log_file=self.part.log("predict"),
        )
        return _usage(usage)


def _evaluate(part: Part, context: _Context) -> dict:
    from pipeline.evaluation import evaluate_folders

    summary_file = part.folder / "evaluation" / "summary.json"
    evaluate_folders(
        context.test_labels,
        part.predictions,
        labels=context.labels,
        output_json=summary_file,
        num_processes=context.num_processes,
    )
    return {"summary": str(summary_file)}


# ------------------------------------------------------------------------------- child-process steps
def _plan_step(
    *, raw_dataset_folder: str, preprocessed_root: str, configurations: list[str], num_processes: int
) -> dict:
    from pipeline.experiment_planning import plan_and_preprocess

    folder = plan_and_preprocess(
        raw_dataset_folder, preprocessed_root, configurations=configurations, num_processes=num_processes
    )
    return {"preprocessed": str(folder)}


def _train_step(**kwargs) -> dict:
    from pipeline.training.run import train

    result = train(**kwargs)
    return {
        "model_folder": str(result.model_folder),
        "epochs": result.epochs,
        "steps": result.steps,
        "models": result.members,
    }


def _predict_step(**kwargs) -> dict:
    from pipeline.inference.predict_folder import predict

    summary = predict(**kwargs, progress=False)
    return {"predicted_cases": len(summary.done), "notes": summary.notes}


_CHILD_STEPS: dict[str, Callable[..., dict]] = {
    "plan": _plan_step,
    "train": _train_step,
    "predict": _predict_step,
}


def main(argv: list[str] | None = None) -> int:
    """Child-process entry point: ``python -m autoprompt.benchmarking.runner STEP KWARGS_JSON RESULT_JSON``."""
    step, kwargs, result_file = sys.argv[1:] if argv is None else argv
    try:
        result = _CHILD_STEPS[step](**json.loads(kwargs))
    except AutoPromptError as error:
        print(f"autoprompt: error: {error}", file=sys.stderr)
        return 2
    save_json(result, result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
