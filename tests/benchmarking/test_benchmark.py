"""``autoprompt benchmark``: case selection, subsets, the report, child-process measurement, and a real run.

The end-to-end test runs the real nnunetv2 package (planning, nnUNetTrainer, predictor) and the real
autoprompt pipeline (tiny backbone) on a tiny synthetic dataset, then runs again and checks that nothing
ran a second time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoprompt.benchmarking.cases import ALL, parse_train_cases, select_cases, training_subsets
from autoprompt.benchmarking.measurement import machine
from autoprompt.benchmarking.nnunet_baseline import PROBE_STEPS, iterations_for_budget, run_logged
from autoprompt.benchmarking.report import format_report, summarise_run, write_report
from autoprompt.cli import main
from autoprompt.errors import AutoPromptError
from pipeline.dataset import ACDC_GROUP_REGEX, make_splits
from tests.synthetic_data import make_synthetic_dataset

ACDC_LIKE = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 11) for f in (1, 2)]


# ------------------------------------------------------------------------------------ case selection
def test_parse_train_cases_sizes_and_ids():
    assert parse_train_cases("5,10, all") == (None, [5, 10, ALL])
    assert parse_train_cases("case_001,case_002") == (["case_001", "case_002"], [ALL])
    with pytest.raises(AutoPromptError, match="mixes sizes and case ids"):
        parse_train_cases("5,case_001")
    with pytest.raises(AutoPromptError, match="at least 1"):
        parse_train_cases("0,5")


def test_default_selection_is_fold_zero_with_whole_patients():
    selection = select_cases(ACDC_LIKE, group_regex=ACDC_GROUP_REGEX, seed=7)
    fold = make_splits(ACDC_LIKE, num_folds=5, seed=7, group_regex=ACDC_GROUP_REGEX)[0]
    assert selection.train == fold["train"] and selection.test == fold["val"]
    test_patients = {case.split("_")[0] for case in selection.test}
    assert not any(case.split("_")[0] in test_patients for case in selection.train)
    assert len(selection.test) == 4  # 2 of 10 patients, both frames each


def test_selection_from_splits_file_and_from_lists(tmp_path: Path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps([{"train": ACDC_LIKE[:16], "val": ACDC_LIKE[16:]}]))
    selection = select_cases(ACDC_LIKE, splits_file=splits)
    assert selection.train == sorted(ACDC_LIKE[:16]) and selection.test == sorted(ACDC_LIKE[16:])
    assert "splits.json" in selection.source

    only_test = select_cases(ACDC_LIKE, test_cases=["patient003_frame01"], group_regex=ACDC_GROUP_REGEX)
    assert only_test.test == ["patient003_frame01"]
    assert (
        "patient003_frame02" not in only_test.train and len(only_test.train) == 18
    )  # the patient's other frame is out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_cases": ["patient001_frame01"], "test_cases": ["patient001_frame01"]}, "share 1 cases"),
        (
            {
                "train_cases": ["patient001_frame01"],
                "test_cases": ["patient001_frame02"],
                "group_regex": ACDC_GROUP_REGEX,
            },
            "share 1 groups",
        ),
        ({"train_cases": ["patient001_frame01"], "test_cases": ["patient099_frame01"]}, "not in the dataset"),
    ],
)
def test_selection_errors(kwargs: dict, message: str):
    with pytest.raises(AutoPromptError, match=message):
        select_cases(ACDC_LIKE, **kwargs)


def test_splits_file_errors(tmp_path: Path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ACDC_LIKE}))
    with pytest.raises(AutoPromptError, match="splits.json: it must be a list"):
        select_cases(ACDC_LIKE, splits_file=splits)
    with pytest.raises(AutoPromptError, match="not both"):
        select_cases(ACDC_LIKE, splits_file=splits, test_cases=ACDC_LIKE[:2])


def test_training_subsets_count_patients_and_are_nested():
    train = ACDC_LIKE[4:]  # 8 patients, 16 cases
    subsets = training_subsets(train, [5, 2, ALL], group_regex=ACDC_GROUP_REGEX, seed=3)
    assert list(subsets) == ["2", "5", ALL]
    assert [len(cases) for cases in subsets.values()] == [4, 10, 16]  # both frames of each patient
    assert set(subsets["2"]) <= set(subsets["5"]) <= set(subsets[ALL]) == set(train)
    assert training_subsets(train, [5], group_regex=ACDC_GROUP_REGEX, seed=3)["5"] == subsets["5"]
    assert training_subsets(train, [8], group_regex=ACDC_GROUP_REGEX, seed=3) == {ALL: sorted(train)}
    others = [training_subsets(train, [2], group_regex=ACDC_GROUP_REGEX, seed=s)["2"] for s in range(6)]
    assert len({tuple(cases) for cases in others}) > 1  # the seed matters
    with pytest.raises(AutoPromptError, match="only 8 groups"):
        training_subsets(train, [9], group_regex=ACDC_GROUP_REGEX, seed=3)


# ------------------------------------------------------------------------------------------- report
def _evaluation(
    dice: dict[int, float | None], hd95: dict[int, float | None], per_case: list[dict] | None = None
) -> dict:
    """A summary as pipeline.evaluation writes it; ``per_case``: its metric_per_case (default: every test
    case as the mean, all classes present)."""
    mean = {
        str(k): {"Dice": dice[k], "IoU": None, "HD95": hd95[k], "ASD": None, "num_cases": 2} for k in dice
    }
    present = [v for v in dice.values() if v is not None]
    if per_case is None:
        metrics = {str(k): {"Dice": dice[k], "n_ref": 10} for k in dice}
        per_case = [{"case": f"p{i}_frame01", "metrics": metrics} for i in (1, 2)]
    return {
        "labels": {"RV": 1, "LV": 2},
        "mean": mean,
        "foreground_mean": {"Dice": sum(present) / len(present), "HD95": float(np.mean(list(hd95.values())))},
        "metric_per_case": per_case,
    }


def _stamps(
    train_seconds: float, epochs: int, steps: int | None = None, models: int | None = None
) -> dict[str, dict]:
    trained = {"seconds": train_seconds, "peak_rss_mib": 2048.0, "epochs": epochs, "steps": steps}
    return {
        "preprocessed": {"seconds": 30.0, "peak_rss_mib": 800.0},
        "trained": trained if models is None else {**trained, "models": models},
        "predicted": {"seconds": 50.0, "peak_rss_mib": 1500.4},
        "evaluated": {"summary": "x"},
    }


SETTINGS = {
    "dataset": "Dataset027_ACDC", "test_cases": ["a", "b"], "case_source": "fold 0", "budget_minutes": 60.0,
    "device": "cpu", "configuration": "2d", "autoprompt_config": "2d_frozen", "autoprompt_overrides": [],
    "nnunet_configuration": "2d", "nnunet_iterations_per_epoch": None, "tta": True, "group_regex": ACDC_GROUP_REGEX,
}  # fmt: skip
GROUP = r"^(p\d+)_frame\d+$"


def test_spread_names_the_worst_patient_and_lost_classes():
    def case(name: str, rv: float | None, lv: float, rv_present: bool = True) -> dict:
        return {
            "case": name,
            "metrics": {"1": {"Dice": rv, "n_ref": 5 if rv_present else 0}, "2": {"Dice": lv, "n_ref": 9}},
        }

    per_case = [
        case("p1_frame01", 0.9, 0.9),
        case("p1_frame02", 0.05, 0.9),  # p1: mean 0.6875, RV lost in frame02
        case("p2_frame01", 0.7, 0.7),
        case("p2_frame02", None, 0.6, rv_present=False),  # p2: 0.7 and 0.6
        case("p3_frame01", float("nan"), 0.95, rv_present=False),  # both empty: not scored, not lost
    ]
    run = summarise_run(
        method="autoprompt", size="3", train_cases=["p9_frame01"], num_groups=1, stamps=_stamps(60.0, 1),
        evaluation=_evaluation({1: 0.5, 2: 0.8}, {1: 1.0, 2: 1.0}, per_case), num_test_cases=5, group_regex=GROUP,
    )  # fmt: skip
    assert run["worst_group"] == {"name": "p2", "dice": pytest.approx(0.65)}
    assert run["lost"] == ["p1_frame02/RV"]
    by_case = summarise_run(
        method="autoprompt", size="3", train_cases=["p9_frame01"], num_groups=1, stamps=_stamps(60.0, 1),
        evaluation=_evaluation({1: 0.5, 2: 0.8}, {1: 1.0, 2: 1.0}, per_case), num_test_cases=5, group_regex=None,
    )  # fmt: skip
    assert by_case["worst_group"] == {"name": "p1_frame02", "dice": pytest.approx(0.475)}


def test_report_tables_from_given_metrics():
    settings = SETTINGS
    runs = [
        summarise_run(
            method="autoprompt", size="5", train_cases=["p1_f1", "p1_f2"] * 5, num_groups=5,
            stamps=_stamps(3600.0, 12), evaluation=_evaluation({1: 0.5, 2: 0.75}, {1: 10.0, 2: 4.0}), num_test_cases=2, group_regex=GROUP,
        ),
        summarise_run(
            method="nnunet", size="5", train_cases=["p1_f1", "p1_f2"] * 5, num_groups=5,
            stamps=_stamps(3660.0, 20, steps=380), evaluation=_evaluation({1: 0.25, 2: None}, {1: 20.0, 2: 8.0}, [
                {"case": "p1_frame01", "metrics": {"1": {"Dice": 0.5, "n_ref": 3}, "2": {"Dice": 0.0, "n_ref": 4}}},
            ]), num_test_cases=2, group_regex=GROUP,
        ),
    ]  # fmt: skip
    assert runs[0]["per_class"] == {"RV": {"dice": 0.5, "hd95": 10.0}, "LV": {"dice": 0.75, "hd95": 4.0}}
    assert runs[1]["mean"] == {"dice": 0.25, "hd95": 14.0}
    assert runs[0]["inference_seconds_per_volume"] == 25.0 and runs[1]["training_minutes"] == 61.0
    text = format_report({"settings": settings, "labels": {"background": 0, "RV": 1, "LV": 2}, "runs": runs})
    lines = text.splitlines()
    assert "## 5 training groups (10 cases)" in lines
    assert "| RV (1) | 0.5000 | 0.2500 | 10.00 | 20.00 |" in lines
    assert "| LV (2) | 0.7500 | - | 4.00 | 8.00 |" in lines
    assert "| **mean** | **0.6250** | **0.2500** | **7.00** | **14.00** |" in lines
    assert "| training (min) | 60.0 | 61.0 |" in lines
    assert "| epochs trained (optimiser steps) | 12 | 20 (380) |" in lines
    assert "| inference (s / volume) | 25.0 | 25.0 |" in lines
    assert "| peak memory, inference (MiB) | 1500 | 1500 |" in lines
    assert "| worst test group (its mean Dice) | p1 (0.6250) | p1 (0.2500) |" in lines
    assert "| classes lost (Dice < 0.1 where present) | none | p1_frame01/LV |" in lines
    assert "Data efficiency" not in text  # one size only
    assert not any("background" in line for line in lines if line.startswith("|"))


def _one_run_row(
    prefix: str, *, models: int | None = None, lost: list[str] | None = None, machines: dict | None = None
) -> str:
    """The line of a one-run report.md that starts with ``prefix``; ``machines``: part -> the machine in its stamp."""
    stamps = _stamps(60.0, 33, 1650, models)
    for part, described in (machines or {}).items():
        stamps[part] = {**stamps[part], "machine": described}
    run = summarise_run(
        method="autoprompt", size="3", train_cases=["p1_f1"], num_groups=1, stamps=stamps,
        evaluation=_evaluation({1: 0.5, 2: 0.75}, {1: 10.0, 2: 4.0}), num_test_cases=2, group_regex=GROUP,
    )  # fmt: skip
    if lost is not None:
        run["lost"] = lost
    report = {"settings": SETTINGS, "labels": {"background": 0, "RV": 1, "LV": 2}, "runs": [run]}
    return next(line for line in format_report(report).splitlines() if line.startswith(prefix))


def test_a_long_list_of_lost_classes_is_counted_and_shortened():
    def lost_row(lost: list[str]) -> str:
        return _one_run_row("| classes lost", lost=lost)

    lost = [f"p{case}_frame01/{name}" for case in range(4) for name in ("RV", "LV")]
    assert lost_row(lost) == (
        "| classes lost (Dice < 0.1 where present) | 8 in 4 test cases: p0_frame01/RV, p0_frame01/LV, "
        "p1_frame01/RV, p1_frame01/LV, p2_frame01/RV, p2_frame01/LV and 2 more (report.json lists all) |"
    )
    assert lost_row(lost[:2]) == "| classes lost (Dice < 0.1 where present) | p0_frame01/RV, p0_frame01/LV |"


def test_report_says_how_many_models_an_ensemble_trained():
    def epochs_row(models: int | None) -> str:
        return _one_run_row("| epochs trained", models=models)

    assert epochs_row(3) == "| epochs trained (optimiser steps) | 33 (1650) over 3 models |"
    assert epochs_row(1) == epochs_row(None) == "| epochs trained (optimiser steps) | 33 (1650) |"


def test_report_names_the_machine_each_run_trained_and_predicted_on():
    amd = {"cpu": "AMD EPYC", "cpu_count": 2, "bf16_instructions": ["avx512_bf16"], "gpu": None}
    intel = {
        "cpu": "Intel Xeon",
        "cpu_count": 2,
        "bf16_instructions": ["amx_bf16", "avx512_bf16"],
        "gpu": None,
    }

    def machine_row(machines: dict | None) -> str:
        return _one_run_row("| machine |", machines=machines)

    assert machine_row({"trained": amd, "predicted": amd}) == "| machine | AMD EPYC, 2 CPUs, avx512_bf16 |"
    assert machine_row({"trained": amd, "predicted": intel}) == (
        "| machine | training: AMD EPYC, 2 CPUs, avx512_bf16; inference: Intel Xeon, 2 CPUs, amx_bf16, avx512_bf16 |"
    )
    assert machine_row(None) == "| machine | - |"  # stamps written before the machine was recorded


def test_data_efficiency_table_and_plots(tmp_path: Path):
    runs = [
        summarise_run(
            method=method, size=size, train_cases=["c"] * (2 * groups), num_groups=groups,
            stamps=_stamps(60.0, 3), evaluation=_evaluation({1: dice, 2: dice}, {1: 5.0, 2: 5.0}), num_test_cases=2, group_regex=GROUP,
        )
        for size, groups, dices in (("5", 5, (0.4, 0.6)), (ALL, 70, (0.8, 0.9)))
        for method, dice in zip(("autoprompt", "nnunet"), dices, strict=True)
    ]  # fmt: skip
    report = {"settings": SETTINGS, "labels": {"background": 0, "RV": 1, "LV": 2}, "runs": runs}
    write_report(report, tmp_path)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert "## Data efficiency" in lines and "## all 70 training groups (140 cases)" in lines
    assert "| 5 | 0.4000 | 0.6000 |" in lines and "| 70 | 0.8000 | 0.9000 |" in lines
    assert json.loads((tmp_path / "report.json").read_text()) == report
    for name in ("dice_by_class.png", "data_efficiency.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*"))  # no temporary files left


# ------------------------------------------------------------------------------- child measurement
def test_run_logged_measures_peak_memory_and_reports_failures(tmp_path: Path):
    log = tmp_path / "logs" / "step.log"
    allocate = "x = b'1' * (300 * 2**20); print('allocated')"
    usage = run_logged([sys.executable, "-c", allocate], env={}, log_file=log, what="allocation")
    assert usage.peak_rss_mib >= 300 and usage.seconds > 0
    assert "allocated" in log.read_text()
    small = run_logged([sys.executable, "-c", "pass"], env={}, log_file=log, what="nothing")
    assert small.peak_rss_mib < usage.peak_rss_mib - 200  # per child, not the largest child so far
    with pytest.raises(AutoPromptError, match=r"boom failed \(exit 3\): bad input; see .*step.log"):
        run_logged(
            [sys.executable, "-c", "print('bad input'); raise SystemExit(3)"],
            env={},
            log_file=log,
            what="boom",
        )


def test_run_logged_reports_a_long_step_while_it_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    log = tmp_path / "logs" / "train.log"
    slow = "import time; print('epoch 1', flush=True); time.sleep(1.5)"
    run_logged([sys.executable, "-c", slow], env={}, log_file=log, what="slow training", heartbeat_s=0.5)
    beats = capsys.readouterr().err.splitlines()
    assert len(beats) >= 2 and all(line.startswith("slow training: running for 00:0") for line in beats)
    assert beats[-1].endswith(f"{log}: epoch 1")  # the log's last line so far
    run_logged([sys.executable, "-c", "pass"], env={}, log_file=log, what="quick", heartbeat_s=60.0)
    assert capsys.readouterr().err == ""  # a step that ends before the first beat prints nothing


# ------------------------------------------------------------------------------------- CLI errors
def test_cli_errors_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    dataset = make_synthetic_dataset(tmp_path / "raw", num_cases=4, shape=(2, 16, 16))
    base = ["benchmark", "--raw", str(tmp_path / "raw"), "-o", str(tmp_path / "report"), "--device", "cpu"]
    assert main([*base, "-d", "55"]) == 2
    assert "no folder Dataset055_*" in capsys.readouterr().err
    assert (
        main([*base, "-d", dataset.name, "--train-cases", "case_000,case_001", "--test-cases", "case_001"])
        == 2
    )
    assert "share 1 cases" in capsys.readouterr().err
    assert main([*base, "-d", dataset.name, "--test-cases", "case_009"]) == 2
    assert "case_009" in capsys.readouterr().err
    assert main([*base, "-d", dataset.name, "--autoprompt-set", "epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("budget_seconds", "seconds_per_step", "expected"),
    [
        (3600.0, 16.8, 19),  # ACDC 2d on 2 CPU cores: 3600 / (10 epochs x 16.8 s x 1.1)
        (3600.0, 0.2, 250),  # a GPU: nnU-Net's own 250 fit
        (3.0, 0.5, 1),  # never fewer than one
        (2000.0, 1.0, 181),
    ],
)
def test_iterations_for_budget(budget_seconds: float, seconds_per_step: float, expected: int):
    assert iterations_for_budget(budget_seconds, seconds_per_step) == expected


def test_iterations_for_budget_rejects_non_positive_times():
    with pytest.raises(ValueError, match="positive"):
        iterations_for_budget(60.0, 0.0)


# ------------------------------------------------------------------------------------- end to end
def _file_states(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def test_benchmark_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    dataset = make_synthetic_dataset(tmp_path / "raw", num_cases=6, shape=(4, 32, 32))
    report_dir = tmp_path / "report"
    args = [
        "benchmark", "-d", dataset.name, "--raw", str(tmp_path / "raw"), "-o", str(report_dir),
        "--test-cases", "case_004,case_005", "--budget", "0.05", "--device", "cpu", "--no-tta", "-np", "1",
        "--autoprompt-config", "tiny", "--autoprompt-set", "epochs=1", "--autoprompt-set", "iterations_per_epoch=2",
        "--autoprompt-set", "val_iterations=1",
    ]  # fmt: skip
    # autoprompt alone first (--vs none); the run with nnU-Net then reuses autoprompt's parts unchanged
    assert main([*args, "--vs", "none"]) == 0
    alone = json.loads((report_dir / "report.json").read_text())
    assert [(run["method"], run["train_size"]) for run in alone["runs"]] == [("autoprompt", ALL)]
    alone_text = (report_dir / "report.md").read_text()
    assert "autoprompt alone" in alone_text and "nnUNetTrainer" not in alone_text
    assert not (report_dir / "work" / "nnunet").exists()
    autoprompt_files = _file_states(report_dir / "work" / "autoprompt")
    assert main(args) == 0
    assert _file_states(report_dir / "work" / "autoprompt") == autoprompt_files
    report = json.loads((report_dir / "report.json").read_text())
    assert [(run["method"], run["train_size"]) for run in report["runs"]] == [
        ("autoprompt", ALL),
        ("nnunet", ALL),
    ]
    assert report["runs"][0] == alone["runs"][0]
    for run in report["runs"]:
        assert run["train_cases"] == [f"case_{i:03d}" for i in range(4)]
        assert set(run["per_class"]) == {"class1", "class2"}
        assert all(0.0 <= m["dice"] <= 1.0 and m["hd95"] >= 0.0 for m in run["per_class"].values())
        assert run["training_minutes"] > 0 and run["inference_seconds_per_volume"] > 0
        # autoprompt runs its configured epoch; nnU-Net fits as many epochs as the budget holds after its first
        assert run["epochs"] == 1 if run["method"] == "autoprompt" else run["epochs"] >= 1
        assert all(value > 100 for value in run["peak_rss_mib"].values())  # python + torch children, in MiB
        assert run["machine"]["trained"] == run["machine"]["predicted"] == machine(torch.device("cpu"))
    text = (report_dir / "report.md").read_text()
    for run in report["runs"]:
        assert f"{run['per_class']['class1']['dice']:.4f}" in text
    png = (report_dir / "dice_by_class.png").read_bytes()
    assert png.startswith(b"\x89PNG")

    work = report_dir / "work"
    predicted = json.loads((work / "autoprompt" / "train_all" / "stamps" / "predicted.json").read_text())
    assert predicted["predicted_cases"] == 2 and isinstance(
        predicted["notes"], list
    )  # e.g. the int8 encoder's
    # same test cases, same geometry as the references, for both methods
    for method in ("autoprompt", "nnunet"):
        for case in ("case_004", "case_005"):
            predicted = sitk.ReadImage(str(work / method / "train_all" / "predictions" / f"{case}.nii.gz"))
            reference = sitk.ReadImage(str(dataset / "labelsTr" / f"{case}.nii.gz"))
            assert (
                predicted.GetSize() == reference.GetSize()
                and predicted.GetSpacing() == reference.GetSpacing()
            )
    # autoprompt trained on the training cases only; nnU-Net is the real nnUNetTrainer, its 250 iterations per
    # epoch cut after PROBE_STEPS timed steps so that 10 epochs would fit the 3-second budget
    ap_splits = json.loads(
        (work / "autoprompt/train_all/preprocessed" / dataset.name / "splits_final.json").read_text()
    )
    assert ap_splits == [{"train": [f"case_{i:03d}" for i in range(4)], "val": []}]
    nn_results = work / "nnunet/train_all/nnUNet_results" / dataset.name
    assert [p.name for p in nn_results.iterdir()] == ["nnUNetTrainer__nnUNetPlans__2d"]
    fold = nn_results / "nnUNetTrainer__nnUNetPlans__2d" / "fold_all"
    assert (
        torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["trainer_name"]
        == "nnUNetTrainer"
    )
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["num_iterations_per_epoch"] == "250"  # nnU-Net's own, recorded at the start
    budget = json.loads((fold / "budget.json").read_text())
    # never fewer than the steps already taken; far fewer than 250 (10 epochs of 250 cannot fit 3 s)
    assert 1 + PROBE_STEPS <= budget["iterations_per_epoch"] < 50
    assert budget["steps"] == budget["epochs"] * budget["iterations_per_epoch"]
    assert report["runs"][1]["steps"] == budget["steps"]
    nnunet_log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"s per step -> {budget['iterations_per_epoch']} iterations per epoch" in nnunet_log
    assert sorted(
        p.name for p in (work / "nnunet/train_all/nnUNet_raw" / dataset.name / "imagesTr").iterdir()
    ) == [f"case_{i:03d}_0000.nii.gz" for i in range(4)]

    # a second run finds every stamp and runs nothing: no file under work/ changes
    before = _file_states(work)
    capsys.readouterr()
    assert main(args) == 0
    assert _file_states(work) == before
    assert "training size all: training" not in capsys.readouterr().err
    assert json.loads((report_dir / "report.json").read_text())["runs"] == report["runs"]

    # other settings in the same report folder are refused, not mixed in
    assert main([*args, "--nnunet-iterations", "3"]) == 2
    assert "other settings (nnunet_iterations_per_epoch: null -> 3)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- curve
def test_curve_merges_runs_of_several_benchmarks_in_size_order(tmp_path: Path):
    from benchmarks.curve import merge_reports

    def report(groups: int, dice: float, methods=("autoprompt", "nnunet"), **settings) -> dict:
        runs = [
            summarise_run(
                method=method, size=str(groups), train_cases=["c"] * (2 * groups), num_groups=groups,
                stamps=_stamps(60.0, 3), evaluation=_evaluation({1: d, 2: d}, {1: 5.0, 2: 5.0}),
                num_test_cases=2, group_regex=GROUP,
            )
            for method, d in (("autoprompt", dice), ("nnunet", dice - 0.1)) if method in methods
        ]  # fmt: skip
        return {
            "settings": {**SETTINGS, **settings},
            "labels": {"background": 0, "RV": 1, "LV": 2},
            "runs": runs,
        }

    merged = merge_reports([report(7, 0.8), report(3, 0.7, autoprompt_overrides=["a=1"])], ["seven", "three"])
    assert [(run["method"], run["num_train_groups"]) for run in merged["runs"]] == [
        ("autoprompt", 3), ("nnunet", 3), ("autoprompt", 7), ("nnunet", 7)
    ]  # fmt: skip
    assert merged["settings"]["merged_from"][1] == {"report": "three", "autoprompt_overrides": ["a=1"]}
    write_report(merged, tmp_path)
    assert "| 3 | 0.7000 | 0.6000 |" in (tmp_path / "report.md").read_text().splitlines()
    # a size benchmarked with --vs none: nnU-Net's cells are empty, the largest size's plot has one bar per class
    alone = merge_reports([report(3, 0.7), report(20, 0.9, methods=("autoprompt",))], ["three", "twenty"])
    write_report(alone, tmp_path / "alone")
    lines = (tmp_path / "alone" / "report.md").read_text().splitlines()
    assert "| 20 | 0.9000 | - |" in lines and "| **mean** | **0.9000** | **-** | **5.00** | **-** |" in lines
    assert (tmp_path / "alone" / "dice_by_class.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="differs from seven in budget_minutes"):
        merge_reports([report(7, 0.8), report(3, 0.7, budget_minutes=10.0)], ["seven", "three"])
    with pytest.raises(ValueError, match="given twice"):
        merge_reports([report(7, 0.8), report(7, 0.7)], ["seven", "again"])
