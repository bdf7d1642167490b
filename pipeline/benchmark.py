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
same way for both methods (:func:`pipeline.nnunet_baseline.run_logged`). A finished part leaves a JSON
stamp and is never run again; a run that stopped resumes where it stopped.

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
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoprompt.allocator import retained_memory_environment
from autoprompt.errors import AutoPromptError
from autoprompt.paths import dataset_id
from pipeline import nnunet_baseline
from pipeline.dataset import RawDataset, load_raw_dataset, make_splits
from pipeline.files import atomic_path, load_json, save_json

METHODS = ("autoprompt", "nnunet")
METHOD_TITLES = {"autoprompt": "autoprompt", "nnunet": "nnU-Net"}
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
ALL = "all"


@dataclass(frozen=True)
class CaseSelection:
    """The cases of a benchmark.

    Attributes:
        train: the training pool (sorted); a data-efficiency subset is drawn from it.
        test: the test cases (sorted); never used for training or checkpoint selection.
        source: where the lists came from, for the report.
    """

    train: list[str]
    test: list[str]
    source: str


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


def parse_train_cases(text: str) -> tuple[list[str] | None, list[int | str]]:
    """``--train-cases``: ``"5,10,all"`` -> sizes; ``"case_a,case_b"`` -> case ids.

    Returns:
        ``(case ids or None, sizes)``: sizes are ints and ``"all"``; ids come with the size ``["all"]``.

    Raises:
        AutoPromptError: empty, or sizes mixed with case ids, or a size below 1.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise AutoPromptError(
            "--train-cases is empty; pass sizes like 5,10,all or case ids like case_000,case_001"
        )
    is_size = [item.isdigit() or item == ALL for item in items]
    if all(is_size):
        sizes: list[int | str] = [ALL if item == ALL else int(item) for item in items]
        if any(size == 0 for size in sizes):
            raise AutoPromptError("--train-cases: a training-set size must be at least 1")
        return None, sizes
    if any(is_size):
        raise AutoPromptError(
            f"--train-cases {text!r} mixes sizes and case ids; pass either sizes (5,10,all) or case ids"
        )
    return items, [ALL]


def group_of(case_id: str, group_regex: str | None) -> str:
    """The group (e.g. ACDC patient) of a case: regex group 1, or the case itself without a regex.

    Raises:
        AutoPromptError: the case does not match the regex.
    """
    if group_regex is None:
        return case_id
    match = re.match(group_regex, case_id)
    if match is None or match.lastindex is None:
        raise AutoPromptError(
            f"case {case_id}: does not match the group regex {group_regex!r} (group 1 names the group); "
            "fix --group-regex"
        )
    return match[1]


def select_cases(
    case_ids: Sequence[str],
    *,
    splits_file: str | os.PathLike | None = None,
    train_cases: Sequence[str] | None = None,
    test_cases: Sequence[str] | None = None,
    group_regex: str | None = None,
    seed: int = 12345,
) -> CaseSelection:
    """Choose the training pool and the test cases.

    ``splits_file`` (nnU-Net's splits_final.json shape): fold 0's "train" / "val". Otherwise the given
    lists; a missing list is every other case (whole groups only). With neither: fold 0 of
    :func:`pipeline.dataset.make_splits` (5 folds, ``seed``, ``group_regex``).

    Raises:
        AutoPromptError: a malformed splits file, a splits file together with case lists, an unknown
            case, an empty list, or a case (or, with ``group_regex``, a group) in both lists.
    """
    known = set(case_ids)
    if splits_file is not None:
        if train_cases is not None or test_cases is not None:
            raise AutoPromptError("pass either --splits or --train-cases/--test-cases case lists, not both")
        train, test = _fold_zero(Path(splits_file))
        source = f"fold 0 of {Path(splits_file).name} ('train' -> training, 'val' -> test)"
    elif train_cases is None and test_cases is None:
        fold = make_splits(sorted(known), num_folds=5, seed=seed, group_regex=group_regex)[0]
        train, test = fold["train"], fold["val"]
        source = f"fold 0 of a 5-fold split (seed {seed}): 'train' -> training, 'val' -> test"
    else:
        given = train_cases if train_cases is not None else test_cases
        _check_known(given, known, "--train-cases" if train_cases is not None else "--test-cases")
        taken = {group_of(case, group_regex) for case in given}
        rest = [case for case in sorted(known) if group_of(case, group_regex) not in taken]
        train = list(train_cases) if train_cases is not None else rest
        test = list(test_cases) if test_cases is not None else rest
        if train_cases is not None and test_cases is not None:
            source = "--train-cases and --test-cases"
        elif train_cases is not None:
            source = "--train-cases; every other case tests"
        else:
            source = "--test-cases; every other case trains"
    _check_known(train, known, "training cases")
    _check_known(test, known, "test cases")
    if not train or not test:
        raise AutoPromptError(f"{'no training' if not train else 'no test'} cases selected; give both sets")
    overlap = sorted({group_of(c, group_regex) for c in train} & {group_of(c, group_regex) for c in test})
    if overlap:
        what = "groups" if group_regex else "cases"
        raise AutoPromptError(
            f"training and test share {len(overlap)} {what} ({', '.join(overlap[:5])}); "
            "the test cases must never be trained on; remove them from one list"
        )
    return CaseSelection(train=sorted(set(train)), test=sorted(set(test)), source=source)


def _fold_zero(path: Path) -> tuple[list[str], list[str]]:
    fix = 'it must be a list of {"train": [case ids], "val": [case ids]} like nnU-Net\'s splits_final.json'
    if not path.is_file():
        raise AutoPromptError(f"{path}: splits file not found; pass an existing file to --splits")
    try:
        splits = load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AutoPromptError(f"{path}: not valid JSON ({error}); {fix}") from error
    fold = splits[0] if isinstance(splits, list) and splits else None
    if not (isinstance(fold, dict) and all(isinstance(fold.get(k), list) for k in ("train", "val"))):
        raise AutoPromptError(f"{path}: {fix}")
    return list(fold["train"]), list(fold["val"])


def _check_known(cases: Sequence[str], known: set[str], what: str) -> None:
    unknown = sorted(set(cases) - known)
    if unknown:
        raise AutoPromptError(
            f"{what}: {len(unknown)} case(s) not in the dataset ({', '.join(unknown[:5])}); check the names "
            "against imagesTr/labelsTr"
        )


def training_subsets(
    train: Sequence[str], sizes: Sequence[int | str], *, group_regex: str | None, seed: int
) -> dict[str, list[str]]:
    """The training cases of each size: N = number of groups (patients with a regex, else cases).

    The groups are shuffled once with ``seed`` and each subset takes the first N, so smaller subsets are
    part of larger ones and the same call always gives the same subsets. A size equal to the pool is "all".

    Returns:
        ``{"5": [...], "all": [...]}`` in increasing size, case ids sorted.

    Raises:
        AutoPromptError: a size larger than the number of groups in the pool.
    """
    groups: dict[str, list[str]] = {}
    for case in sorted(train):
        groups.setdefault(group_of(case, group_regex), []).append(case)
    order = [sorted(groups)[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    unit = "groups" if group_regex else "cases"
    subsets: dict[str, list[str]] = {}
    for size in sorted(sizes, key=lambda s: len(groups) if s == ALL else int(s)):
        count = len(groups) if size == ALL else int(size)
        if count > len(groups):
            raise AutoPromptError(
                f"--train-cases {size}: the training pool has only {len(groups)} {unit}; use at most {len(groups)}"
            )
        label = ALL if count == len(groups) else str(count)
        subsets[label] = sorted(case for group in order[:count] for case in groups[group])
    return subsets


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
            the budget (``pipeline.nnunet_baseline.iterations_for_budget``); a number fixes them.
        tta: mirroring test-time augmentation: nnU-Net's; autoprompt's where its model was trained with
            mirroring (``predict(tta=None)``). False: off for both.
        num_processes: worker processes for planning and evaluation.

    Returns:
        The report (also written to ``report_dir/report.json``).

    Raises:
        AutoPromptError: unknown dataset or case, overlapping train/test cases, bad options, a report
            folder made with other settings, or a failed step (naming its log).
    """
    from autoprompt.devices import resolve_device
    from pipeline.training.config import DEFAULT_PRESETS, load_trainer_config

    raw = load_raw_dataset(raw_dataset_folder)
    dataset_id(raw.name)  # nnU-Net needs a DatasetXXX_Name folder
    if configuration not in NNUNET_CONFIGURATIONS:
        raise AutoPromptError(f"unknown configuration '{configuration}'; choose 2d or 3d")
    if budget_minutes <= 0:
        raise AutoPromptError(f"--budget {budget_minutes}: the training budget must be positive (minutes)")
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
    preset = autoprompt_config or DEFAULT_PRESETS[configuration]
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
        for method in METHODS
    ]
    runs = []
    with tqdm(total=len(parts) * len(PARTS), desc="benchmark", unit="step", disable=None) as bar:
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


def _encoder_precision(settings: BenchmarkSettings) -> str:
    """The precision the trained network saw its cached embeddings in: prediction uses the same."""
    from pipeline.training.config import load_trainer_config
    from pipeline.training.trainer import resolve_encoder_precision

    config = load_trainer_config(
        settings.autoprompt_config,
        _autoprompt_overrides(settings.budget_minutes, settings.configuration, settings.autoprompt_overrides),
    )
    return resolve_encoder_precision(config.encoder_precision).value


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
        bar.set_description(f"{part.method} train_{part.size}: {name}")
        if not stamp.is_file():
            tqdm.write(
                f"{METHOD_TITLES[part.method]}, training size {part.size}: {STEP_TITLES[name]} "
                f"(logs in {part.folder / 'logs'})",
                file=sys.stderr,
            )
            save_json(actions[name](), stamp)
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
    """autoprompt's steps, each a ``python -m pipeline.benchmark STEP`` child process."""

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
            # None: mirroring only if the model was trained with it (not on cached embeddings)
            "tta": None if self.context.settings.tta else False,
            "precision": _encoder_precision(self.context.settings),
        }
        return self._child("predict", kwargs, "autoprompt prediction")

    def _child(self, step: str, kwargs: dict, what: str) -> dict:
        result_file = self.part.folder / "logs" / f"{step}.result.json"
        command = [sys.executable, "-m", "pipeline.benchmark", step, json.dumps(kwargs), str(result_file)]
        usage = nnunet_baseline.run_logged(
            command, env=retained_memory_environment(os.environ), log_file=self.part.log(step), what=what
        )
        return {**_usage(usage), **load_json(result_file)}


class _NnUNetSteps:
    """nnU-Net v2's own steps (:mod:`pipeline.nnunet_baseline`)."""

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


# ------------------------------------------------------------------------------------------- report
def summarise_run(
    *,
    method: str,
    size: str,
    train_cases: Sequence[str],
    num_groups: int,
    stamps: dict[str, dict],
    evaluation: dict,
    num_test_cases: int,
) -> dict:
    """One method x training size, for report.json: metrics (Dice, HD95) and costs.

    Args:
        stamps: the four part stamps (``seconds``, ``peak_rss_mib``; ``epochs`` in "trained").
        evaluation: the summary of :func:`pipeline.evaluation.evaluate_folders`.
    """
    per_class = {
        name: {metric: evaluation["mean"][str(value)][metric] for metric in ("dice", "hd95")}
        for name, value in evaluation["labels"].items()
    }
    return {
        "method": method,
        "train_size": size,
        "num_train_groups": num_groups,
        "num_train_cases": len(train_cases),
        "train_cases": list(train_cases),
        "per_class": per_class,
        "mean": {metric: evaluation["foreground_mean"][metric] for metric in ("dice", "hd95")},
        "preprocessing_minutes": stamps["preprocessed"]["seconds"] / 60.0,
        "training_minutes": stamps["trained"]["seconds"] / 60.0,
        "epochs": stamps["trained"].get("epochs"),
        "steps": stamps["trained"].get("steps"),
        "inference_seconds_per_volume": stamps["predicted"]["seconds"] / num_test_cases,
        "peak_rss_mib": {
            part: stamps[part]["peak_rss_mib"] for part in ("preprocessed", "trained", "predicted")
        },
    }


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _epochs_cell(run: dict) -> str:
    if run["epochs"] is None:
        return "-"
    return f"{run['epochs']} ({run['steps']})" if run.get("steps") else str(run["epochs"])


def _size_title(runs: list[dict], grouped: bool) -> str:
    run = runs[0]
    unit = "groups" if grouped else "cases"
    count = f"{run['num_train_groups']} training {unit}" + (
        f" ({run['num_train_cases']} cases)" if grouped else ""
    )
    return f"{'all ' if run['train_size'] == ALL else ''}{count}"


def format_report(report: dict) -> str:
    """report.md: settings, then per training size a per-class Dice/HD95 table and a cost table."""
    settings = report["settings"]
    grouped = settings["group_regex"] is not None
    sizes = list(dict.fromkeys(run["train_size"] for run in report["runs"]))
    by_size = {
        size: {run["method"]: run for run in report["runs"] if run["train_size"] == size} for size in sizes
    }
    titles = [METHOD_TITLES[m] for m in METHODS]
    preset = Path(settings["autoprompt_config"]).name
    overrides = (
        f" with {', '.join(settings['autoprompt_overrides'])}" if settings["autoprompt_overrides"] else ""
    )
    lines = [
        f"# Benchmark on {settings['dataset']}: autoprompt vs nnU-Net v2",
        "",
        f"- test cases: {len(settings['test_cases'])} ({settings['case_source']}); never used for training or "
        "checkpoint selection",
        f"- training budget: {settings['budget_minutes']:g} min of epochs per method, device {settings['device']}, "
        "all training cases (fold 'all'), final checkpoint",
        f"- autoprompt: configuration {settings['configuration']}, preset {preset}{overrides}",
        f"- nnU-Net v2: configuration {settings['nnunet_configuration']}, nnUNetTrainer"
        + (
            f", {settings['nnunet_iterations_per_epoch']} iterations per epoch"
            if settings["nnunet_iterations_per_epoch"]
            else ""
        ),
        (
            "- mirroring test-time augmentation: on for nnU-Net; for autoprompt only if it trained with mirror "
            "augmentation (not on cached embeddings: a network that never saw mirrored anatomy mislabels it)"
            if settings["tta"]
            else "- mirroring test-time augmentation: off for both"
        ),
        "- metrics: pipeline.evaluation (MONAI) for both; per class the mean over the test cases, "
        "'mean' = mean over classes; HD95 in mm",
        "- training time is the wall time of the training process (start-up and autoprompt's embedding cache "
        "included); inference is the prediction process's wall time (model loading included) per test volume; "
        "peak memory is the largest resident set of the step's processes",
        "- on Linux every step of both methods runs with glibc's malloc thresholds at 1 GiB (autoprompt.allocator), "
        "unless MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ was set",
    ]
    for size in sizes:
        runs = by_size[size]
        lines += ["", f"## {_size_title(list(runs.values()), grouped)}", ""]
        lines.append("| class | " + " | ".join(f"{t} Dice" for t in titles) + " | "
                     + " | ".join(f"{t} HD95" for t in titles) + " |")  # fmt: skip
        lines.append("|---" * (1 + 2 * len(METHODS)) + "|")
        for name, value in report["labels"].items():
            if value == 0:
                continue
            dice = [_cell(runs[m]["per_class"][name]["dice"], 4) for m in METHODS]
            hd95 = [_cell(runs[m]["per_class"][name]["hd95"], 2) for m in METHODS]
            lines.append(f"| {name} ({value}) | " + " | ".join(dice + hd95) + " |")
        dice = [_cell(runs[m]["mean"]["dice"], 4) for m in METHODS]
        hd95 = [_cell(runs[m]["mean"]["hd95"], 2) for m in METHODS]
        lines.append("| **mean** | " + " | ".join(f"**{v}**" for v in dice + hd95) + " |")
        lines += ["", "| cost | " + " | ".join(titles) + " |", "|---" * (1 + len(METHODS)) + "|"]
        costs = [
            ("preprocessing (min)", lambda r: _cell(r["preprocessing_minutes"], 1)),
            ("training (min)", lambda r: _cell(r["training_minutes"], 1)),
            ("epochs trained (optimiser steps)", _epochs_cell),
            ("inference (s / volume)", lambda r: _cell(r["inference_seconds_per_volume"], 1)),
            ("peak memory, preprocessing (MiB)", lambda r: _cell(r["peak_rss_mib"]["preprocessed"], 0)),
            ("peak memory, training (MiB)", lambda r: _cell(r["peak_rss_mib"]["trained"], 0)),
            ("peak memory, inference (MiB)", lambda r: _cell(r["peak_rss_mib"]["predicted"], 0)),
        ]
        lines += [
            f"| {label} | " + " | ".join(cell(runs[m]) for m in METHODS) + " |" for label, cell in costs
        ]
    if len(sizes) > 1:
        unit = "groups" if grouped else "cases"
        lines += [
            "",
            "## Data efficiency",
            "",
            f"| training {unit} | " + " | ".join(f"{t} Dice" for t in titles) + " |",
        ]
        lines.append("|---" * (1 + len(METHODS)) + "|")
        for size in sizes:
            runs = by_size[size]
            count = runs[METHODS[0]]["num_train_groups"]
            lines.append(
                f"| {count} | " + " | ".join(_cell(runs[m]["mean"]["dice"], 4) for m in METHODS) + " |"
            )
        lines += ["", "![Dice vs training-set size](data_efficiency.png)"]
    lines += ["", "![Dice per class](dice_by_class.png)", ""]
    return "\n".join(lines)


def write_report(report: dict, report_dir: Path) -> None:
    """report.json, report.md, dice_by_class.png and (several sizes) data_efficiency.png, each atomically."""
    save_json(report, report_dir / "report.json")
    with atomic_path(report_dir / "report.md") as tmp:
        tmp.write_text(format_report(report))
    _plot_dice_bars(report, report_dir / "dice_by_class.png")
    if len({run["train_size"] for run in report["runs"]}) > 1:
        _plot_data_efficiency(report, report_dir / "data_efficiency.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_dice_bars(report: dict, path: Path) -> None:
    """Grouped bars: Dice per class and the mean, one bar per method, for the largest training size."""
    plt = _pyplot()
    largest = report["runs"][-1]["train_size"]
    runs = {run["method"]: run for run in report["runs"] if run["train_size"] == largest}
    names = [name for name, value in report["labels"].items() if value != 0]
    positions = np.arange(len(names) + 1)
    width = 0.8 / len(METHODS)
    figure, axis = plt.subplots(figsize=(1.6 * len(positions) + 2, 4))
    for index, method in enumerate(METHODS):
        values = [runs[method]["per_class"][n]["dice"] for n in names] + [runs[method]["mean"]["dice"]]
        axis.bar(positions + (index - (len(METHODS) - 1) / 2) * width, [v or 0.0 for v in values], width,
                 label=METHOD_TITLES[method])  # fmt: skip
    axis.set_xticks(positions, [*names, "mean"])
    axis.set_ylim(0, 1)
    axis.set_ylabel("Dice")
    axis.set_title(
        f"{report['settings']['dataset']}: test Dice ({_size_title(list(runs.values()), report['settings']['group_regex'] is not None)})"
    )
    axis.legend()
    _save_figure(figure, path)


def _plot_data_efficiency(report: dict, path: Path) -> None:
    """Mean Dice against the number of training groups, one line per method."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        runs = [run for run in report["runs"] if run["method"] == method]
        axis.plot([r["num_train_groups"] for r in runs], [r["mean"]["dice"] or 0.0 for r in runs], marker="o",
                  label=METHOD_TITLES[method])  # fmt: skip
    unit = "groups" if report["settings"]["group_regex"] is not None else "cases"
    axis.set_xlabel(f"training {unit}")
    axis.set_ylabel("mean test Dice")
    axis.set_ylim(0, 1)
    axis.set_title(f"{report['settings']['dataset']}: data efficiency")
    axis.legend()
    _save_figure(figure, path)


def _save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    _pyplot().close(figure)


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
    return {"model_folder": str(result.model_folder), "epochs": result.epochs, "steps": result.steps}


def _predict_step(**kwargs) -> dict:
    from pipeline.inference.predict_folder import predict

    summary = predict(**kwargs, progress=False)
    return {"predicted_cases": len(summary.done)}


_CHILD_STEPS: dict[str, Callable[..., dict]] = {
    "plan": _plan_step,
    "train": _train_step,
    "predict": _predict_step,
}


def main(argv: list[str] | None = None) -> int:
    """Child-process entry point: ``python -m pipeline.benchmark STEP KWARGS_JSON RESULT_JSON``."""
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
