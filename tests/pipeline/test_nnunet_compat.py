"""Working the way nnU-Net users work (issue #18): its folders, names, argument order and flags, its label
rules (consecutive values, the ignore label) and its summary.json layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt import cli
from autoprompt.errors import AutoPromptError
from autoprompt.paths import dataset_folder_name, dataset_id, roots_from_environment
from pipeline.evaluation import evaluate_case, evaluate_folders
from tests.synthetic_data import make_synthetic_dataset

HYPHENATED = "Dataset226_BraTS2024-BraTS-GLI"


def _one_line_error(capsys: pytest.CaptureFixture, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprompt: error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# ------------------------------------------------------------------------------------ folders and names
def test_nnunet_variables_come_after_flags_and_autoprompt_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUTOPROMPT_RAW", "AUTOPROMPT_PREPROCESSED", "AUTOPROMPT_RESULTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_raw", "/nn/raw")
    monkeypatch.setenv("nnUNet_preprocessed", "/nn/pre")
    monkeypatch.setenv("nnUNet_results", "/nn/results")
    roots = roots_from_environment()
    assert (roots.raw, roots.preprocessed, roots.results) == (
        Path("/nn/raw"),
        Path("/nn/pre"),
        Path("/nn/results"),
    )
    monkeypatch.setenv("AUTOPROMPT_RAW", "/ap/raw")
    roots = roots_from_environment(results="/flag/results")
    assert (roots.raw, roots.preprocessed, roots.results) == (
        Path("/ap/raw"),
        Path("/nn/pre"),
        Path("/flag/results"),
    )
    monkeypatch.delenv("nnUNet_preprocessed")
    assert roots_from_environment().preprocessed == Path("autoprompt_data") / "preprocessed"


def test_hyphenated_names_are_accepted_and_bad_names_refused_early(tmp_path: Path) -> None:
    (tmp_path / HYPHENATED).mkdir()
    assert dataset_folder_name(226, tmp_path) == HYPHENATED
    assert dataset_folder_name(HYPHENATED, tmp_path) == HYPHENATED
    assert dataset_id(HYPHENATED) == 226
    (tmp_path / "Dataset227_two words").mkdir()
    with pytest.raises(AutoPromptError, match="'Dataset227_two words' is not a dataset folder name"):
        dataset_folder_name(227, tmp_path)  # found by id, refused before any work
    for bad in ("Dataset27_ACDC", "Dataset027_", "Dataset027_a/b"):
        with pytest.raises(AutoPromptError, match="DatasetXXX_Name"):
            dataset_folder_name(bad, tmp_path)


def test_plan_and_preprocess_from_nnunet_raw_with_a_hyphenated_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in ("AUTOPROMPT_RAW", "AUTOPROMPT_PREPROCESSED", "AUTOPROMPT_RESULTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnUNet_preprocessed"))
    make_synthetic_dataset(tmp_path / "nnUNet_raw", dataset_name=HYPHENATED, num_cases=2, shape=(2, 24, 20))
    args = [
        "plan-and-preprocess",
        "-d",
        "226",
        "-c",
        "2d",
        "-np",
        "1",
        "--verify_dataset_integrity",
        "--clean",
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"{HYPHENATED}: planned and preprocessed" in out and "next: autoprompt train 226" in out
    assert (tmp_path / "nnUNet_preprocessed" / HYPHENATED / "plans.json").is_file()

    # a badly named folder is refused before anything is written
    from pipeline.experiment_planning import plan_and_preprocess

    bad = make_synthetic_dataset(
        tmp_path / "raw", dataset_name="Dataset90_Short", num_cases=2, shape=(2, 24, 20)
    )
    with pytest.raises(AutoPromptError, match="Dataset90_Short"):
        plan_and_preprocess(bad, tmp_path / "pre", configurations=("2d",), num_processes=1)
    assert not (tmp_path / "pre").exists()


# ------------------------------------------------------------------------------------ order and flags
@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace the training run by a recorder of its arguments."""
    import pipeline.training.run

    calls: list[dict] = []

    def train(dataset, fold, **kwargs):
        calls.append({"dataset": dataset, "fold": fold, **kwargs})
        return SimpleNamespace(model_folder=Path("m"), validation=None, fold_dir=Path("m/fold_0"))

    monkeypatch.setattr(pipeline.training.run, "train", train)
    return calls


def test_train_accepts_nnunet_order_and_flags(fake_train: list[dict], capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "904", "2d", "0", "--c", "-device", "cpu"]) == 0
    assert cli.main(["train", "904", "3d_fullres", "all"]) == 0
    assert cli.main(["train", "904", "1", "-c", "3d_fullres"]) == 0
    assert [(c["fold"], c["configuration"], c["resume"], c["device"]) for c in fake_train] == [
        ("0", "2d", True, "cpu"),
        ("all", "3d", False, "auto"),
        ("1", "3d", False, "auto"),
    ]
    capsys.readouterr()
    assert cli.main(["train", "904", "2d", "0", "-c", "3d"]) == 2
    _one_line_error(capsys, "configuration given twice")
    assert cli.main(["train", "904", "3d_lowres", "0"]) == 2
    _one_line_error(capsys, "3d_lowres", "no low-resolution stage")
    assert cli.main(["train", "904", "0", "1"]) == 2
    _one_line_error(capsys, "invalid configuration '0'", "DATASET CONFIGURATION FOLD")
    assert len(fake_train) == 3


def _parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser(argv).parse_args(argv)


def test_predict_accepts_nnunet_flags_and_checkpoint_names() -> None:
    args = _parse(
        "predict -i in -o out -d 27 -c 3d_fullres -f 0 1 -chk checkpoint_final.pth --disable_tta "
        "--save_probabilities --continue_prediction -num_parts 2 -part_id 1 -device cpu".split()
    )
    assert (args.configuration, args.folds, args.checkpoint, args.tta) == ("3d", ["0", "1"], "final", False)
    assert (args.save_probabilities, args.overwrite, args.num_parts, args.part_id) == (True, False, 2, 1)
    assert args.device == "cpu"
    defaults = _parse("predict -i in -o out -d 27".split())
    assert (defaults.checkpoint, defaults.tta, defaults.overwrite) == ("best", None, False)
    assert _parse("predict -i in -o out -d 27 --checkpoint latest".split()).checkpoint == "latest"
    assert (
        _parse("predict -i in -o out -d 27 --checkpoint-name checkpoint_best.pt".split()).checkpoint == "best"
    )


def test_checkpoint_means_a_file_in_segment_and_a_fold_checkpoint_in_predict(capsys) -> None:
    assert _parse("segment img.png --box 1 2 3 4 -o m.png --checkpoint w.pth".split()).checkpoint == Path(
        "w.pth"
    )
    with pytest.raises(SystemExit) as exit_info:
        _parse("predict -i in -o out -d 27 --checkpoint medsam_vit_b.pth".split())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'medsam_vit_b.pth' is not a fold checkpoint" in err and "segment/embed --checkpoint FILE" in err


def test_plan_and_preprocess_accepts_nnunet_configuration_names() -> None:
    args = _parse("plan-and-preprocess -d 4 -c 2d 3d_fullres --verify_dataset_integrity --clean".split())
    assert (args.configurations, args.verify, args.overwrite_plans) == (["2d", "3d"], True, True)
    assert _parse("plan-and-preprocess -d 4 --no-verify".split()).verify is False


# ------------------------------------------------------------------------------------------ labels
def _write(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            {"background": 0, "a": 1, "b": 3},
            "consecutive (0, 1, 2, ...; nnU-Net's rule), got [0, 1, 3]; renumber 3 -> 2",
        ),
        ({"background": 0, "ignore": 1, "a": 2}, "'ignore' label must have the highest value"),
    ],
)
def test_dataset_check_refuses_gaps_and_a_misplaced_ignore_label(
    tmp_path: Path, capsys: pytest.CaptureFixture, labels: dict, message: str
) -> None:
    folder = make_synthetic_dataset(tmp_path / "raw", num_cases=2, shape=(2, 16, 16))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["labels"] = labels
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    args = ["plan-and-preprocess", "-d", "901", "--raw", str(tmp_path / "raw"), "--verify-only", "-np", "1"]
    assert cli.main(args) == 2
    _one_line_error(capsys, str(folder / "dataset.json"), message)


def test_evaluation_leaves_ignore_voxels_out() -> None:
    reference = np.zeros((8, 8), np.uint8)
    reference[2:4, 2:6] = 1
    reference[6:8, :] = 3  # unannotated rows
    prediction = np.zeros((8, 8), np.uint8)
    prediction[2:4, 2:6] = 1
    prediction[6:8, 0:4] = 1  # a "false positive" under the ignore label: not counted
    metrics = evaluate_case(reference, prediction, labels=[1, 3], spacing=None, ignore_label=3)
    assert list(metrics) == [1]
    assert metrics[1]["Dice"] == 1.0 and metrics[1]["n_pred"] == 8
    assert (metrics[1]["TP"], metrics[1]["FP"], metrics[1]["FN"], metrics[1]["TN"]) == (8, 0, 0, 64 - 16 - 8)
    counted = evaluate_case(reference, prediction, labels=[1], spacing=None)[1]
    assert counted["FP"] == 8 and counted["Dice"] < 1.0


def test_evaluate_refuses_values_outside_the_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reference = np.zeros((6, 6), np.uint8)
    reference[1:3, 1:3] = 1
    reference[4, 4] = 7
    reference[5, 5] = 255
    _write(reference, tmp_path / "ref" / "a.png")
    _write(np.where(reference == 1, 1, 0).astype(np.uint8), tmp_path / "pred" / "a.png")
    ref, pred = str(tmp_path / "ref"), str(tmp_path / "pred")
    assert cli.main(["evaluate", "-r", ref, "-p", pred, "--labels", "1", "-np", "1"]) == 2
    _one_line_error(capsys, str(tmp_path / "ref" / "a.png"), "label value(s) 7, 255")
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "organ": 1}}))
    assert cli.main(["evaluate", ref, pred, "-djfile", str(dataset_json), "-np", "1"]) == 2
    _one_line_error(capsys, "a.png", "7, 255")

    # an unknown label value: one line, exit 2 (not an empty table)
    _write(np.zeros((6, 6), np.uint8), tmp_path / "ref" / "a.png")
    _write(np.zeros((6, 6), np.uint8), tmp_path / "pred" / "a.png")
    assert cli.main(["evaluate", ref, pred, "-l", "9", "-np", "1"]) == 2
    _one_line_error(capsys, "label(s) 9 in no file")


def test_evaluate_with_ignore_label_from_dataset_json_and_flag(tmp_path: Path, capsys) -> None:
    reference = np.zeros((6, 6), np.uint8)
    reference[0:2, 0:2] = 1
    reference[4:6, :] = 2  # ignore
    prediction = np.zeros((6, 6), np.uint8)
    prediction[0:2, 0:2] = 1
    prediction[4:6, 0:3] = 1
    _write(reference, tmp_path / "ref" / "a.nii.gz")
    _write(prediction, tmp_path / "pred" / "a.nii.gz")
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "organ": 1, "ignore": 2}}))
    ref, pred = str(tmp_path / "ref"), str(tmp_path / "pred")
    assert cli.main(["evaluate", ref, pred, "-djfile", str(dataset_json), "-np", "1"]) == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["labels"] == {"organ": 1} and summary["ignore_label"] == 2
    assert summary["foreground_mean"]["Dice"] == 1.0
    assert cli.main(["evaluate", ref, pred, "-l", "1", "-il", "2", "-np", "1"]) == 0
    assert json.loads((tmp_path / "pred" / "summary.json").read_text())["mean"]["1"]["Dice"] == 1.0
    capsys.readouterr()


# --------------------------------------------------------------------------------- summary.json layout
def test_summary_json_in_nnunet_layout(tmp_path: Path) -> None:
    reference = np.zeros((4, 10, 10), np.uint8)
    reference[1:3, 2:6, 2:6] = 1
    reference[1:3, 7:9, 7:9] = 2
    prediction = reference.copy()
    prediction[1:3, 2:6, 2:4] = 0  # half of class 1 missed
    _write(reference, tmp_path / "ref" / "c1.nii.gz")
    _write(prediction, tmp_path / "pred" / "c1.nii.gz")
    out = tmp_path / "summary.json"
    evaluate_folders(
        tmp_path / "ref", tmp_path / "pred", labels={"background": 0, "a": 1, "b": 2}, output_json=out
    )
    summary = json.loads(out.read_text())
    # what nnU-Net's own scripts read (nnunetv2.evaluation.evaluate_predictions's layout)
    assert {"metric_per_case", "mean", "foreground_mean"} <= set(summary)
    case = summary["metric_per_case"][0]
    assert case["reference_file"].endswith("ref/c1.nii.gz") and case["prediction_file"].endswith(
        "pred/c1.nii.gz"
    )
    one = case["metrics"]["1"]
    assert {"Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref", "HD95", "ASD"} <= set(one)
    assert (one["TP"], one["FP"], one["FN"], one["n_ref"], one["n_pred"]) == (16, 0, 16, 32, 16)
    assert one["TN"] == 400 - 32  # voxels in neither (class 2 included), as nnU-Net counts
    assert one["Dice"] == pytest.approx(2 * 16 / 48) and one["IoU"] == pytest.approx(0.5)
    assert summary["mean"]["2"]["Dice"] == 1.0 and summary["mean"]["1"]["TP"] == 16
    assert summary["foreground_mean"]["Dice"] == pytest.approx((2 * 16 / 48 + 1.0) / 2)
    assert set(summary["foreground_mean"]) >= {"Dice", "IoU", "HD95", "ASD"}
