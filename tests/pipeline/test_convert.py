"""ACDC and AMOS converters on tiny synthetic folders in the official layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

from autoprompt.cli import main
from autoprompt.errors import AutoPromptError
from pipeline.convert.acdc import ACDC_LABELS, convert_acdc
from pipeline.convert.amos import AMOS_CT_MAX_ID, convert_amos
from pipeline.dataset import ACDC_GROUP_REGEX, load_raw_dataset, verify_dataset
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.files import load_json
from pipeline.io import read_image
from planners.fingerprint import SAMPLES_PER_CASE
from planners.plans import Plans

SHAPE = (3, 12, 10)  # (Z, Y, X)
SPACING = (1.5, 1.5, 10.0)


def _write_pair(image_path: Path, label_path: Path | None, *, seed: int, num_labels: int) -> None:
    """A random image and (optionally) a label map on the same grid."""
    rng = np.random.default_rng(seed)
    arrays = [(rng.normal(100, 20, SHAPE).astype(np.float32), image_path)]
    if label_path is not None:
        arrays.append((rng.integers(0, num_labels + 1, SHAPE).astype(np.uint8), label_path))
    for array, path in arrays:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))


def _acdc_patient(split: Path, number: int, *, ed: int, es: int, frames: int, with_gt: bool) -> None:
    patient = split / f"patient{number:03d}"
    patient.mkdir(parents=True)
    (patient / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: {frames}\nWeight: 95.0\n"
    )
    (patient / f"patient{number:03d}_4d.nii.gz").write_bytes(b"ignored")
    for frame in range(1, frames + 1):
        stem = patient / f"patient{number:03d}_frame{frame:02d}"
        gt = stem.with_name(stem.name + "_gt.nii.gz") if with_gt and frame in (ed, es) else None
        _write_pair(stem.with_name(stem.name + ".nii.gz"), gt, seed=number * 100 + frame, num_labels=3)


@pytest.fixture
def acdc(tmp_path: Path) -> Path:
    """training: patient001 (ED 1, ES 3 of 3 frames), patient002 (ED 1, ES 2); testing: patient101 with
    ground truth, patient102 without."""
    root = tmp_path / "ACDC"
    _acdc_patient(root / "training", 1, ed=1, es=3, frames=3, with_gt=True)
    _acdc_patient(root / "training", 2, ed=1, es=2, frames=2, with_gt=True)
    _acdc_patient(root / "testing", 101, ed=2, es=1, frames=2, with_gt=True)
    _acdc_patient(root / "testing", 102, ed=1, es=2, frames=2, with_gt=False)
    (root / "training" / "MANDATORY_CITATION.md").write_text("cite ACDC")
    return root


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_acdc_layout_labels_and_verification(acdc: Path, tmp_path: Path) -> None:
    output = convert_acdc(acdc, tmp_path / "raw")
    assert output == tmp_path / "raw" / "Dataset027_ACDC"
    assert _names(output / "imagesTr") == [
        "patient001_frame01_0000.nii.gz",
        "patient001_frame03_0000.nii.gz",  # frame 2 is neither ED nor ES
        "patient002_frame01_0000.nii.gz",
        "patient002_frame02_0000.nii.gz",
    ]
    assert _names(output / "labelsTr") == [
        "patient001_frame01.nii.gz",
        "patient001_frame03.nii.gz",
        "patient002_frame01.nii.gz",
        "patient002_frame02.nii.gz",
    ]
    assert _names(output / "imagesTs") == [
        "patient101_frame01_0000.nii.gz",
        "patient101_frame02_0000.nii.gz",
        "patient102_frame01_0000.nii.gz",
        "patient102_frame02_0000.nii.gz",
    ]
    assert _names(output / "labelsTs") == ["patient101_frame01.nii.gz", "patient101_frame02.nii.gz"]
    source = acdc / "training" / "patient001" / "patient001_frame03_gt.nii.gz"
    assert (output / "labelsTr" / "patient001_frame03.nii.gz").read_bytes() == source.read_bytes()
    dataset_json = json.loads((output / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "cineMRI"}
    assert dataset_json["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3} == ACDC_LABELS
    assert dataset_json["numTraining"] == 4 and dataset_json["file_ending"] == ".nii.gz"
    assert verify_dataset(load_raw_dataset(output), num_processes=1) == []


def test_acdc_database_subfolder_and_dataset_id(acdc: Path, tmp_path: Path) -> None:
    (tmp_path / "download").mkdir()
    acdc.rename(tmp_path / "download" / "database")
    output = convert_acdc(tmp_path / "download", tmp_path / "raw", dataset_id=127)
    assert output.name == "Dataset127_ACDC"
    assert len(list((output / "imagesTr").iterdir())) == 4


def test_acdc_cli_prints_grouping_hint_and_reruns(acdc: Path, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    assert main(["convert", "acdc", str(acdc), "-o", str(raw)]) == 0
    printed = capsys.readouterr().out
    assert ACDC_GROUP_REGEX in printed and "Dataset027_ACDC" in printed
    before = {p: p.stat().st_mtime_ns for p in (raw / "Dataset027_ACDC" / "imagesTr").iterdir()}
    assert main(["convert", "acdc", str(acdc), "-o", str(raw)]) == 0  # resumes: finished files are kept
    assert {p: p.stat().st_mtime_ns for p in (raw / "Dataset027_ACDC" / "imagesTr").iterdir()} == before


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        (lambda root: (root / "training" / "patient002" / "Info.cfg").unlink(), "Info.cfg: missing"),
        (
            lambda root: (root / "training" / "patient002" / "Info.cfg").write_text("ED: 1\n"),
            "'ES: <frame number>'",
        ),
        (lambda root: (root / "training" / "patient001" / "patient001_frame03.nii.gz").unlink(), "frame 3"),
        (
            lambda root: (root / "training" / "patient001" / "patient001_frame01_gt.nii.gz").unlink(),
            "ground truth",
        ),
        (lambda root: (root / "training").rename(root / "train"), "no training folder"),
    ],
)
def test_acdc_layout_errors(acdc: Path, tmp_path: Path, capsys, breakage, fragment: str) -> None:
    breakage(acdc)
    assert main(["convert", "acdc", str(acdc), "-o", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprompt: error: ") and "\n" not in err
    assert fragment in err and str(acdc) in err
    assert not (tmp_path / "raw" / "Dataset027_ACDC").exists()  # nothing written


def test_acdc_dataset_id_taken_and_stale_files(acdc: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "Dataset027_Other").mkdir(parents=True)
    with pytest.raises(AutoPromptError, match="Dataset027_Other: dataset id 27 is taken"):
        convert_acdc(acdc, raw)
    (raw / "Dataset028_ACDC" / "imagesTr").mkdir(parents=True)
    (raw / "Dataset028_ACDC" / "imagesTr" / "old_case_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(AutoPromptError, match="old_case_0000.nii.gz: .* already holds files"):
        convert_acdc(acdc, raw, dataset_id=28)


AMOS_ORGANS = [
    "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach", "arota",
    "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder", "prostate/uterus",
]  # fmt: skip


AMOS_SHAPE = (4, 144, 128)  # (Z, Y, X): slices of a size the planner keeps at their spacing
AMOS_SPACING = (0.8, 0.8, 5.0)
AMOS_ORGAN_CENTRES = {1: (50, 40), 6: (60, 85), 2: (90, 60)}  # spleen, liver, right kidney: (row, column)


def _write_amos_scan(image_path: Path, label_path: Path | None, *, number: int) -> None:
    """A scan and its labels: three organs in a body. CT (``number <= 500``): int16 Hounsfield units, air
    around the body, a spine brighter than any organ (unlabelled), liver and kidney contrast differing per
    case; MRI: uint16 arbitrary units on a zero background, scaled per case."""
    rng = np.random.default_rng(number)
    _, y, x = np.meshgrid(*[np.arange(size) for size in AMOS_SHAPE], indexing="ij")
    body = ((y - 72) / 66) ** 2 + ((x - 64) / 60) ** 2 <= 1
    spine = ((y - 120) / 8) ** 2 + ((x - 64) / 7) ** 2 <= 1
    label = np.zeros(AMOS_SHAPE, dtype=np.uint8)
    for organ, (row, column) in AMOS_ORGAN_CENTRES.items():
        label[((y - row) / 14) ** 2 + ((x - column) / 12) ** 2 <= 1] = organ
    noise = rng.normal(0.0, 10.0, AMOS_SHAPE)
    if number <= AMOS_CT_MAX_ID:
        organ_values = {1: 45, 6: 60 + 5 * number, 2: 150 + 4 * number}
        image = np.where(body, 40.0, -1000.0) + noise
        image[spine] = 900.0 + noise[spine]
        dtype = np.int16
    else:
        scale = 1.0 + number / 1000
        organ_values = {1: 600 * scale, 6: 900 * scale, 2: 400 * scale}
        image = np.where(body, 300.0 * scale + noise, 0.0)
        dtype = np.uint16
    for organ, value in organ_values.items():
        image[label == organ] = value + noise[label == organ]
    for array, path in ((np.round(image).astype(dtype), image_path), (label, label_path)):
        if path is not None:
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(AMOS_SPACING)
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(itk, str(path))


@pytest.fixture
def amos(tmp_path: Path) -> Path:
    """An amos22 folder: CT (id <= 500) and MRI (id > 500) cases in training, validation and test."""
    root = tmp_path / "amos22"
    splits = {"training": [5, 540], "validation": [8, 510], "test": [2, 590]}
    folders = {
        "training": ("imagesTr", "labelsTr"),
        "validation": ("imagesVa", "labelsVa"),
        "test": ("imagesTs", None),
    }
    source = {
        "name": "AMOS",
        "labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(AMOS_ORGANS)}},
    }
    for split, numbers in splits.items():
        images, labels = folders[split]
        source[split] = []
        for number in numbers:
            case = f"amos_{number:04d}"
            entry = {"image": f"./{images}/{case}.nii.gz"}
            if labels:
                entry["label"] = f"./{labels}/{case}.nii.gz"
            source[split].append(entry)
            label = root / labels / f"{case}.nii.gz" if labels else None
            _write_amos_scan(root / images / f"{case}.nii.gz", label, number=number)
    (root / "dataset.json").write_text(json.dumps(source))
    return root


def test_amos_all_cases(amos: Path, tmp_path: Path) -> None:
    output = convert_amos(amos, tmp_path / "raw")
    assert output.name == "Dataset219_AMOS2022_postChallenge_task2"
    expected = ["amos_0005", "amos_0008", "amos_0510", "amos_0540"]  # training + validation merged
    assert _names(output / "imagesTr") == [f"{c}_0000.nii.gz" for c in expected]
    assert _names(output / "labelsTr") == [f"{c}.nii.gz" for c in expected]
    assert _names(output / "imagesTs") == ["amos_0002_0000.nii.gz", "amos_0590_0000.nii.gz"]
    source = amos / "labelsVa" / "amos_0510.nii.gz"
    assert (output / "labelsTr" / "amos_0510.nii.gz").read_bytes() == source.read_bytes()
    dataset_json = json.loads((output / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "either_CT_or_MR"}
    assert dataset_json["labels"] == {"background": 0, **{n: i + 1 for i, n in enumerate(AMOS_ORGANS)}}
    assert dataset_json["numTraining"] == 4
    assert verify_dataset(load_raw_dataset(output), num_processes=1) == []


def test_amos_ct_only_cli(amos: Path, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    assert (
        main(["convert", "amos", str(amos.parent), "--ct-only", "-o", str(raw)]) == 0
    )  # parent of amos22 works
    assert "Dataset218_AMOS2022_postChallenge_task1" in capsys.readouterr().out
    output = raw / "Dataset218_AMOS2022_postChallenge_task1"
    assert _names(output / "imagesTr") == ["amos_0005_0000.nii.gz", "amos_0008_0000.nii.gz"]
    assert _names(output / "imagesTs") == ["amos_0002_0000.nii.gz"]
    dataset_json = json.loads((output / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["numTraining"] == 2
    assert verify_dataset(load_raw_dataset(output), num_processes=1) == []


def test_amos_errors(amos: Path, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    (amos / "labelsVa" / "amos_0008.nii.gz").unlink()
    with pytest.raises(AutoPromptError, match=r"labelsVa/amos_0008.nii.gz: missing .*post-challenge"):
        convert_amos(amos, raw, ct_only=True)
    assert not (raw / "Dataset218_AMOS2022_postChallenge_task1").exists()
    (amos / "dataset.json").unlink()
    assert main(["convert", "amos", str(amos), "-o", str(raw), "--dataset-id", "300"]) == 2
    err = capsys.readouterr().err
    assert f"{amos / 'dataset.json'}: missing" in err and "imagesVa" in err


def test_amos_ct_plans_clip_at_the_datasets_foreground_percentiles(amos: Path, tmp_path: Path) -> None:
    """Task 1 converted, planned and preprocessed: the channel named CT is clipped at the 0.5/99.5 percentiles
    of the foreground voxels of all training cases together, and every case is scaled by that one line (air
    and the unlabelled spine clipped), not by its own percentiles."""
    raw = convert_amos(amos, tmp_path / "raw", ct_only=True)
    preprocessed = plan_and_preprocess(
        raw, tmp_path / "preprocessed", configurations=("2d",), num_processes=1
    )
    plans = Plans.load(preprocessed / "plans.json")
    plan = plans.configuration("2d")
    assert plan.slice_axis == 0 and plan.inplane_rule == "median"  # no resampling: voxels compare one to one
    cases = ["amos_0005", "amos_0008"]
    images = {case: read_image(raw / "imagesTr" / f"{case}_0000.nii.gz")[0] for case in cases}
    labels = {case: read_image(raw / "labelsTr" / f"{case}.nii.gz")[0] for case in cases}
    assert all(
        (labels[case] > 0).sum() <= SAMPLES_PER_CASE for case in cases
    )  # the fingerprint sees them all
    foreground = np.concatenate([images[case][labels[case] > 0] for case in cases])
    lower, upper = np.percentile(foreground, [0.5, 99.5])
    per_image = [np.percentile(images[case][labels[case] > 0], 99.5) for case in cases]
    assert abs(per_image[0] - per_image[1]) > 5  # per-image percentiles would scale the cases differently
    [norm] = plans.normalization
    assert norm.scheme == "ct" and (norm.lower, norm.upper) == pytest.approx((lower, upper))
    for case, image in images.items():
        data = np.load(preprocessed / plan.data_identifier / f"{case}.npy")
        np.testing.assert_allclose(data[0], np.clip((image - lower) / (upper - lower), 0.0, 1.0), atol=1e-6)
        assert data[0][image < -500].max() == 0.0 and data[0][image > 700].min() == 1.0  # air, spine


def test_amos_ct_and_mri_plans_normalise_each_image_on_its_own(amos: Path, tmp_path: Path) -> None:
    """Task 2 (channel "either_CT_or_MR"): no dataset-wide clipping can suit both modalities, so each CT and
    MRI image is clipped at its own nonzero region's 0.5/99.5 percentiles."""
    raw = convert_amos(amos, tmp_path / "raw")
    preprocessed = plan_and_preprocess(
        raw, tmp_path / "preprocessed", configurations=("2d",), num_processes=1
    )
    plans = Plans.load(preprocessed / "plans.json")
    plan = plans.configuration("2d")
    assert plan.slice_axis == 0 and plan.inplane_rule == "median"
    [norm] = plans.normalization
    assert (norm.scheme, norm.lower, norm.upper) == ("mr", 0.5, 99.5)
    for case in ("amos_0005", "amos_0540"):  # CT, MRI
        image = read_image(raw / "imagesTr" / f"{case}_0000.nii.gz")[0]
        crop = load_json(preprocessed / plan.data_identifier / f"{case}.json")["crop_bbox"]
        cropped = image[tuple(slice(low, high) for low, high in crop)]
        inside = create_nonzero_mask(cropped[None])  # the MRI's body, all of the CT (nnU-Net's mask)
        low, high = np.percentile(cropped[inside], [0.5, 99.5])
        expected = np.where(inside, np.clip((cropped - low) / (high - low), 0.0, 1.0), 0.0)
        data = np.load(preprocessed / plan.data_identifier / f"{case}.npy")
        np.testing.assert_allclose(data[0], expected, atol=1e-6)
