"""Metrics on hand-made label maps with hand-computed answers, folder evaluation, the CLI and its errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt import api
from autoprompt.cli import main
from autoprompt.errors import AutoPromptError
from pipeline.evaluation import evaluate_case, evaluate_folders


def _write(array: np.ndarray, path: Path, spacing: tuple[float, ...]) -> Path:
    """Write a label map; ``spacing`` in SimpleITK (x, y[, z]) order."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _slabs_3d() -> tuple[np.ndarray, np.ndarray]:
    """Two 2 x 4 x 4 slabs of label 1, the prediction one voxel deeper along Z.

    Every voxel of a 2-voxel-thick slab is a boundary voxel. Half of each slab overlaps the other
    (distance 0), the other half is one Z step away from it. So Dice = 2*16/64 = 0.5, IoU = 16/48,
    HD95 = 1 * z-spacing, symmetric ASD = 0.5 * z-spacing.
    """
    reference = np.zeros((6, 8, 8), np.uint8)
    prediction = np.zeros((6, 8, 8), np.uint8)
    reference[1:3, 2:6, 2:6] = 1
    prediction[2:4, 2:6, 2:6] = 1
    return reference, prediction


def test_shifted_slabs_3d_anisotropic() -> None:
    reference, prediction = _slabs_3d()
    metrics = evaluate_case(reference, prediction, labels=[1], spacing=(3.0, 0.5, 0.7))[1]
    assert metrics["Dice"] == pytest.approx(0.5)
    assert metrics["IoU"] == pytest.approx(1 / 3)
    assert metrics["HD95"] == pytest.approx(3.0)
    assert metrics["ASD"] == pytest.approx(1.5)
    assert (metrics["n_ref"], metrics["n_pred"]) == (32, 32)


def test_shifted_bars_2d_use_row_spacing() -> None:
    # 2 x 6 bars, shifted by one row: distances are 0 (overlap row) or one row step (2.0 mm)
    reference = np.zeros((8, 10), np.int16)
    prediction = np.zeros((8, 10), np.int16)
    reference[2:4, 2:8] = 2
    prediction[3:5, 2:8] = 2
    metrics = evaluate_case(reference, prediction, labels=[2], spacing=(2.0, 0.5))[2]
    assert metrics["Dice"] == pytest.approx(0.5)
    assert metrics["IoU"] == pytest.approx(1 / 3)
    assert metrics["HD95"] == pytest.approx(2.0)
    assert metrics["ASD"] == pytest.approx(1.0)


def test_disjoint_cubes_hd95_and_asd() -> None:
    # 2x2x2 cubes 3 slices apart along Z: from each cube, 4 voxels are 2 steps and 4 are 3 steps away.
    # 95th percentile of [2,2,2,2,3,3,3,3] (linear interpolation) = 3 steps; mean = 2.5 steps.
    reference = np.zeros((9, 5, 5), np.uint8)
    prediction = np.zeros((9, 5, 5), np.uint8)
    reference[2:4, 1:3, 1:3] = 1
    prediction[5:7, 1:3, 1:3] = 1
    metrics = evaluate_case(reference, prediction, labels=[1], spacing=(4.0, 1.0, 1.0))[1]
    assert metrics["Dice"] == 0.0
    assert metrics["IoU"] == 0.0
    assert metrics["HD95"] == pytest.approx(12.0)
    assert metrics["ASD"] == pytest.approx(10.0)


def test_identical_maps_and_background_never_evaluated() -> None:
    reference, _ = _slabs_3d()
    metrics = evaluate_case(reference, reference.copy(), labels=[0, 1], spacing=None)
    assert list(metrics) == [1]
    assert (metrics[1]["Dice"], metrics[1]["IoU"], metrics[1]["HD95"], metrics[1]["ASD"]) == (
        1.0,
        1.0,
        0.0,
        0.0,
    )


def test_edge_cases_absent_in_both_and_in_one() -> None:
    shape, spacing = (4, 10, 12), (3.0, 1.0, 0.5)
    diagonal = math.sqrt(12.0**2 + 10.0**2 + 6.0**2)
    reference = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    reference[1, 2:4, 2:4] = 1  # class 1 only in the reference (missed)
    prediction[2, 5:7, 5:9] = 2  # class 2 only in the prediction (hallucinated)
    metrics = evaluate_case(reference, prediction, labels=[1, 2, 3], spacing=spacing)
    for label in (1, 2):
        assert metrics[label]["Dice"] == 0.0
        assert metrics[label]["IoU"] == 0.0
        assert metrics[label]["HD95"] == pytest.approx(diagonal)
        assert metrics[label]["ASD"] == pytest.approx(diagonal)
    assert (metrics[1]["n_ref"], metrics[1]["n_pred"], metrics[2]["n_ref"], metrics[2]["n_pred"]) == (
        4,
        0,
        0,
        8,
    )
    assert all(math.isnan(metrics[3][m]) for m in ("Dice", "IoU", "HD95", "ASD"))


def test_evaluate_case_rejects_bad_shapes_and_spacing() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(np.zeros((3, 4), np.uint8), np.zeros((4, 3), np.uint8), labels=[1], spacing=None)
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(
            np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8), labels=[1], spacing=(1.0, 1.0, 1.0)
        )


# SimpleITK (x, y, z) spacing: z is the 3 mm axis of the slabs' shift
SPACING_XYZ = (0.7, 0.5, 3.0)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two cases: "a" = shifted slabs (class 1) and class 2 absent from both; "b" = perfect class 1,
    class 2 present only in the reference."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    reference, prediction = _slabs_3d()
    _write(reference, ref / "a.nii.gz", SPACING_XYZ)
    _write(prediction, pred / "a.nii.gz", SPACING_XYZ)
    reference_b = reference.copy()
    reference_b[4, 0:2, 0:2] = 2
    _write(reference_b, ref / "b.nii.gz", SPACING_XYZ)
    _write(reference, pred / "b.nii.gz", SPACING_XYZ)
    return ref, pred


def test_evaluate_folders_summary_json_and_csv(folders: tuple[Path, Path], tmp_path: Path) -> None:
    ref, pred = folders
    out = tmp_path / "out" / "summary.json"
    summary = evaluate_folders(
        ref, pred, labels={"background": 0, "RV": 1, "LV": 2}, output_json=out, num_processes=1
    )
    assert json.loads(out.read_text()) == summary
    assert summary["labels"] == {"RV": 1, "LV": 2}
    by_case = {case["case"]: case["metrics"] for case in summary["metric_per_case"]}
    assert by_case["a"]["1"]["HD95"] == pytest.approx(3.0)  # spacing taken from the file, z axis
    assert by_case["a"]["2"]["Dice"] is None and by_case["a"]["2"]["HD95"] is None
    assert by_case["b"]["2"]["Dice"] == 0.0
    diagonal = math.sqrt((8 * 0.7) ** 2 + (8 * 0.5) ** 2 + (6 * 3.0) ** 2)
    assert by_case["b"]["2"]["HD95"] == pytest.approx(diagonal)
    assert summary["mean"]["1"]["Dice"] == pytest.approx(0.75)
    assert summary["mean"]["1"]["num_cases"] == 2
    assert summary["mean"]["2"]["Dice"] == 0.0 and summary["mean"]["2"]["num_cases"] == 1  # "a" left out
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.375)
    assert summary["foreground_mean"]["HD95"] == pytest.approx((1.5 + diagonal) / 2)

    with out.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case"], r["label"], r["name"]) for r in rows] == [
        ("a", "1", "RV"),
        ("a", "2", "LV"),
        ("b", "1", "RV"),
        ("b", "2", "LV"),
    ]
    assert rows[1]["Dice"] == "" and rows[1]["n_ref"] == "0"
    assert float(rows[0]["Dice"]) == pytest.approx(0.5)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_default_labels_are_those_found_in_references(folders: tuple[Path, Path]) -> None:
    ref, pred = folders
    summary = evaluate_folders(ref, pred, labels=None, num_processes=1)
    assert summary["labels"] == {"1": 1, "2": 2}
    assert summary["metric_per_case"][0]["metrics"]["2"]["Dice"] is None  # absent from both in case "a"
    extra = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "a.nii.gz")))
    extra[0, 0, 0] = 7  # a label no reference holds is refused, not silently dropped
    _write(extra, pred / "a.nii.gz", SPACING_XYZ)
    with pytest.raises(AutoPromptError, match=r"a\.nii\.gz: holds label value\(s\) 7, in no reference"):
        evaluate_folders(ref, pred, labels=None, num_processes=1)


def test_parallel_equals_sequential_and_api_export(folders: tuple[Path, Path]) -> None:
    ref, pred = folders
    assert api.evaluate is evaluate_folders
    assert evaluate_folders(ref, pred, labels=[1, 2], num_processes=2) == evaluate_folders(
        ref, pred, labels=[1, 2], num_processes=1
    )


def test_2d_png_folders(tmp_path: Path) -> None:
    reference = np.zeros((8, 10), np.uint8)
    prediction = np.zeros((8, 10), np.uint8)
    reference[2:4, 2:8] = 1
    prediction[3:5, 2:8] = 1
    _write(reference, tmp_path / "ref" / "x.png", (0.5, 2.0))
    _write(prediction, tmp_path / "pred" / "x.png", (0.5, 2.0))
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels=[1], num_processes=1)
    assert summary["mean"]["1"]["Dice"] == pytest.approx(0.5)
    assert summary["mean"]["1"]["HD95"] == pytest.approx(2.0)


def test_cli_end_to_end_with_dataset_labels(folders: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    ref, pred = folders
    raw = tmp_path / "raw"
    (raw / "Dataset027_ACDC").mkdir(parents=True)
    (raw / "Dataset027_ACDC" / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "RV": 1, "LV": 2}})
    )
    status = main(["evaluate", "-r", str(ref), "-p", str(pred), "-d", "27", "--raw", str(raw), "-np", "1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "RV" in printed and "0.7500" in printed and "foreground mean" in printed
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["labels"] == {"RV": 1, "LV": 2}
    assert (pred / "summary.csv").is_file()
    # a second run still sees two cases (the summary files are not label maps)
    assert main(["evaluate", "-r", str(ref), "-p", str(pred), "--labels", "1", "2", "-np", "1"]) == 0
    assert json.loads((pred / "summary.json").read_text())["labels"] == {"1": 1, "2": 2}


def _assert_cli_error(args: list[str], capsys, *fragments: str) -> None:
    assert main(["evaluate", *args, "-np", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprompt: error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_error_case_sets_differ(folders: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    ref, pred = folders
    (pred / "b.nii.gz").rename(pred / "c.nii.gz")
    out = tmp_path / "summary.json"
    _assert_cli_error(
        ["-r", str(ref), "-p", str(pred), "-o", str(out)],
        capsys,
        "without prediction",
        "b",
        "without reference",
        "c",
    )
    assert not out.exists() and not out.with_suffix(".csv").exists()


def test_error_geometry_differs_names_both_files(folders: tuple[Path, Path], capsys) -> None:
    ref, pred = folders
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "b.nii.gz")))
    _write(array, pred / "b.nii.gz", (0.7, 0.5, 2.0))
    _assert_cli_error(
        ["-r", str(ref), "-p", str(pred)], capsys, str(pred / "b.nii.gz"), str(ref / "b.nii.gz"), "spacing"
    )
    assert not (pred / "summary.json").exists()


def test_error_size_differs(folders: tuple[Path, Path], capsys) -> None:
    ref, pred = folders
    _write(np.zeros((6, 8, 9), np.uint8), pred / "a.nii.gz", SPACING_XYZ)
    _assert_cli_error(["-r", str(ref), "-p", str(pred)], capsys, str(pred / "a.nii.gz"), "size")


def test_error_unreadable_file(folders: tuple[Path, Path], capsys) -> None:
    ref, pred = folders
    (pred / "a.nii.gz").write_bytes(b"not an image")
    _assert_cli_error(["-r", str(ref), "-p", str(pred)], capsys, str(pred / "a.nii.gz"))


def test_error_empty_and_missing_folder(folders: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    ref, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no labels here")
    _assert_cli_error(["-r", str(ref), "-p", str(empty)], capsys, str(empty), "no label files")
    _assert_cli_error(
        ["-r", str(tmp_path / "nope"), "-p", str(ref)], capsys, str(tmp_path / "nope"), "no such folder"
    )


def test_error_reference_is_not_a_label_map(tmp_path: Path) -> None:
    image = np.full((4, 5, 6), 0.5, np.float32)
    _write(image, tmp_path / "ref" / "a.nii.gz", SPACING_XYZ)
    _write(np.zeros((4, 5, 6), np.uint8), tmp_path / "pred" / "a.nii.gz", SPACING_XYZ)
    with pytest.raises(AutoPromptError, match="not a label map"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels=None, num_processes=1)


def test_error_no_foreground_and_bad_labels(tmp_path: Path) -> None:
    _write(np.zeros((4, 5, 6), np.uint8), tmp_path / "ref" / "a.nii.gz", SPACING_XYZ)
    _write(np.zeros((4, 5, 6), np.uint8), tmp_path / "pred" / "a.nii.gz", SPACING_XYZ)
    with pytest.raises(AutoPromptError, match="no foreground label"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels=None, num_processes=1)
    with pytest.raises(AutoPromptError, match="region"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels={"whole": [1, 2]}, num_processes=1)
    with pytest.raises(AutoPromptError, match="summary.json"):
        evaluate_folders(
            tmp_path / "ref", tmp_path / "pred", labels=[1], output_json=tmp_path / "summary.txt"
        )


@pytest.mark.slow
def test_real_acdc_labels_with_dataset_json(shared_data: Path, tmp_path: Path, capsys) -> None:
    """Two real ACDC label maps: one predicted perfectly, one with the myocardium (2) missed."""
    labels = sorted((shared_data / "Dataset027_ACDC" / "labelsTr").glob("*.nii.gz"))[:2]
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for index, path in enumerate(labels):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        _write(array, ref / path.name, image.GetSpacing())
        if index == 0:
            array = np.where(array == 2, 0, array)
        _write(array, pred / path.name, image.GetSpacing())
    args = ["evaluate", "-r", str(ref), "-p", str(pred), "-d", "27", "--raw", str(shared_data), "-np", "1"]
    assert main(args + ["-o", str(tmp_path / "summary.json")]) == 0
    assert "MYO" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    first = sitk.ReadImage(str(labels[0]))
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(first.GetSize(), first.GetSpacing(), strict=True)))
    missed = summary["metric_per_case"][0]["metrics"]["2"]
    assert missed["Dice"] == 0.0 and missed["HD95"] == pytest.approx(diagonal, rel=1e-6)
    assert summary["mean"]["2"]["Dice"] == pytest.approx(0.5)
    for label in ("1", "3"):
        assert summary["mean"][label]["Dice"] == pytest.approx(1.0)
        assert summary["mean"][label]["HD95"] == pytest.approx(0.0)
