"""``autoprompt predict`` end to end: output geometry, probabilities, parts, skipping, and every bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.cli import main
from pipeline.inference.inputs import find_cases, split_cases
from pipeline.io import read_image
from tests.inference.conftest import InferenceSetup

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rows and columns swapped: a non-identity direction


def predict(model: Path, input_path: Path, output: Path, *extra: str) -> int:
    """The CLI with one fold, no TTA, on the CPU (the cheapest real run)."""
    return main(
        [
            "predict",
            "-i",
            str(input_path),
            "-o",
            str(output),
            "--model-dir",
            str(model),
            "-f",
            "0",
            "--no-tta",
            "--device",
            "cpu",
            *extra,
        ]
    )


def oblique_volume(setup: InferenceSetup) -> sitk.Image:
    image = sitk.ReadImage(str(setup.raw / "imagesTr" / "case_001_0000.nii.gz"))
    image = sitk.Cast(image, sitk.sitkInt16)[:, :, :2]  # two slices: enough for a series, cheap to predict
    image.SetDirection(OBLIQUE)
    image.SetOrigin((-31.5, 12.25, 7.0))
    return image


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """One .dcm file per slice, with the tags SimpleITK's series reader needs for geometry."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(
        str(v) for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    )
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.77")
        slice_.SetMetaData("0020|0037", orientation)
        slice_.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|0013", str(z))
        slice_.SetMetaData("0028|0030", f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}")
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(slice_)


def write_pngs(folder: Path, names: list[str]) -> None:
    """Small 2D pictures, one 256 window each at the plans' 0.1 mm spacing: a bright disc on a noisy background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:20, :20]
    for name in names:
        picture = rng.uniform(20, 60, size=(20, 20))
        picture[(y - 10) ** 2 + (x - 8) ** 2 < 20] = 220
        sitk.WriteImage(sitk.GetImageFromArray(picture.astype(np.uint8)), str(folder / f"{name}.png"))


@pytest.mark.parametrize("kind", ["nifti", "mha", "dicom"])
def test_output_has_the_input_geometry(inference_setup: InferenceSetup, tmp_path: Path, kind: str) -> None:
    image = oblique_volume(inference_setup)
    if kind == "dicom":
        source, expected_name = tmp_path / "in" / "series_a", "series_a.nii.gz"
        write_dicom_series(image, source)
    else:
        suffix = ".nii.gz" if kind == "nifti" else ".mha"
        source, expected_name = tmp_path / "in" / f"scan_0000{suffix}", f"scan{suffix}"
        source.parent.mkdir()
        sitk.WriteImage(image, str(source))
    assert predict(inference_setup.model_2d, source, tmp_path / "out", "--save-probabilities") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [expected_name, expected_name.split(".")[0] + ".npz"]
    )
    labels, geometry = read_image(tmp_path / "out" / expected_name)
    _, input_geometry = read_image(source)
    assert geometry.size == input_geometry.size
    assert geometry.matches(input_geometry), geometry.mismatches(input_geometry)
    assert set(np.unique(labels)) <= {0, 1, 2}
    probabilities = np.load(tmp_path / "out" / (expected_name.split(".")[0] + ".npz"))["probabilities"]
    assert probabilities.dtype == np.float16 and probabilities.shape == (3, *labels.shape)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)


def test_parts_split_the_cases_without_overlap_and_existing_outputs_are_skipped(
    inference_setup: InferenceSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs with --part-id 1 and 0 of 2 share the cases; the model is found from -d/--preset/--results."""
    write_pngs(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    results = inference_setup.model_2d.parent.parent
    by_dataset = [
        "-i",
        str(tmp_path / "in"),
        "-o",
        str(out),
        "-d",
        "901",
        "--preset",
        "tiny",
        "--results",
        str(results),
    ]
    command = ["predict", *by_dataset, "-f", "0", "--no-tta", "--device", "cpu"]
    assert main([*command, "--part-id", "1", "--num-parts", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]
    assert main([*command, "--part-id", "0", "--num-parts", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    labels, geometry = read_image(out / "a.png")
    assert labels.shape == (20, 20) and geometry.size == (20, 20)
    modified = (out / "a.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(command) == 0
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "a.png").stat().st_mtime_ns == modified


def test_part_split_rule_covers_every_case_once(tmp_path: Path) -> None:
    write_pngs(tmp_path, [f"case{i}" for i in range(7)])
    cases = find_cases(tmp_path, channel_names={"0": "MRI"}).cases
    parts = [[case.case_id for case in split_cases(cases, part_id=part, num_parts=3)] for part in range(3)]
    assert sorted(sum(parts, [])) == [f"case{i}" for i in range(7)]
    assert parts[0] == ["case0", "case3", "case6"]


def _garbage(folder: Path) -> Path:
    path = folder / "broken_0000.nii.gz"
    path.write_bytes(b"this is not an image at all" * 20)
    return path


def _text(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("patient notes")
    return path


def _extra_channel(folder: Path) -> Path:
    write_pngs(folder, ["two_0000", "two_0001"])
    return folder


def _four_d(folder: Path) -> Path:
    path = folder / "cine_0000.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(
            np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32), isVector=False
        ),
        str(path),
    )
    return path


def _empty(folder: Path) -> Path:
    path = folder / "blank_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 24, 20), dtype=np.int16)), str(path))
    return path


@pytest.mark.parametrize(
    ("make_input", "named", "message"),
    [
        (_garbage, "broken_0000.nii.gz", "not a readable image"),
        (_text, "notes.txt", "not a supported image file"),
        (_extra_channel, "two_0001.png", "channel 1 of case 'two', but the model needs 1 channel"),
        (_four_d, "cine_0000.nii.gz", "4D images are not supported"),
        (_empty, "blank_0000.nii.gz", "image is empty"),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(
    inference_setup: InferenceSetup,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_input,
    named: str,
    message: str,
) -> None:
    (tmp_path / "in").mkdir()
    source = make_input(tmp_path / "in")
    assert predict(inference_setup.model_2d, source, tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("autoprompt: error: ") and "\n" not in error and "Traceback" not in error
    assert named in error and message in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_continue_on_error_predicts_the_rest_and_exits_1(
    inference_setup: InferenceSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pngs(tmp_path / "in", ["good"])
    blank = np.zeros((20, 20), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(blank), str(tmp_path / "in" / "blank.png"))
    assert predict(inference_setup.model_2d, tmp_path / "in", tmp_path / "out") == 2  # stops at the bad case
    assert predict(inference_setup.model_2d, tmp_path / "in", tmp_path / "out", "--continue-on-error") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]
    captured = capsys.readouterr()
    assert "blank.png: image is empty" in captured.err
    assert "1 done, 0 skipped, 1 failed" in captured.out


def test_missing_model_folder_or_fold_is_a_clear_error(
    inference_setup: InferenceSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pngs(tmp_path / "in", ["only"])
    results = inference_setup.model_2d.parent.parent
    common = [
        "predict",
        "-i",
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "out"),
        "--results",
        str(results),
        "-d",
        "901",
    ]
    assert main(common) == 2  # the default preset, 2d_frozen, was not trained here
    error = capsys.readouterr().err
    assert (
        "autoprompt__2d_frozen__2d: model folder not found (found: autoprompt__tiny__2d, autoprompt__tiny__3d"
        in error
    )
    assert main([*common, "--preset", "tiny", "-f", "4"]) == 2
    assert (
        "fold_4/checkpoint_best.pt: checkpoint not found (folds with checkpoint_best.pt: 0, 1)"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_output_folder_must_differ_from_input(
    inference_setup: InferenceSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pngs(tmp_path / "in", ["x"])
    assert predict(inference_setup.model_2d, tmp_path / "in", tmp_path / "in") == 2
    assert "the output folder is the input folder" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "in")


def test_a_failed_write_leaves_neither_labels_nor_probabilities(
    inference_setup: InferenceSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PNG holds 2D images only: the 3D label map cannot be written, and its probabilities are not kept either."""
    source = tmp_path / "scan_0000.nii.gz"
    sitk.WriteImage(oblique_volume(inference_setup), str(source))
    out = tmp_path / "out"
    assert (
        predict(inference_setup.model_2d, source, out, "--output-format", "png", "--save-probabilities") == 2
    )
    assert "holds 2D images only" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []  # refused before anything is written
    assert predict(inference_setup.model_2d, source, out, "--output-format", "jpeg2000") == 2
    assert "output format '.jpeg2000' is not supported" in capsys.readouterr().err


def test_skip_absent_below_leaves_classes_judged_absent_out_and_checks_its_value(
    inference_setup: InferenceSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pngs(tmp_path / "in", ["a"])
    # the untrained tiny model's presence is far from certain: at 0.999 every class is skipped in every window
    assert predict(inference_setup.model_2d, tmp_path / "in", tmp_path / "out", "--save-probabilities",
                   "--skip-absent-below", "0.999") == 0  # fmt: skip
    labels, _ = read_image(tmp_path / "out" / "a.png")
    assert not labels.any()
    probabilities = np.load(tmp_path / "out" / "a.npz")["probabilities"].astype(np.float32)
    assert probabilities[1:].max() < 1e-3
    assert predict(inference_setup.model_2d, tmp_path / "in", tmp_path / "out2", "--save-probabilities",
                   "--skip-absent-below", "0") == 0  # fmt: skip
    assert np.load(tmp_path / "out2" / "a.npz")["probabilities"].astype(np.float32)[1:].max() > 0.01
    with pytest.raises(SystemExit) as exit_info:
        predict(inference_setup.model_2d, tmp_path / "in", tmp_path / "out3", "--skip-absent-below", "1.5")
    assert exit_info.value.code == 2
    assert "'1.5' is not a probability in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()
    for flag, value, message in (
        ("--presence-floor", "1", "'1' is not a probability in [0, 1)"),
        ("--box-refinement", "-1", "'-1' must be at least 0"),
        ("--refinement-tolerance", "1", "'1' is not a probability in [0, 1)"),
        ("--region-tokens", "-2", "'-2' must be at least 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            predict(inference_setup.model_2d, tmp_path / "in", tmp_path / "out3", flag, value)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()
