"""nnU-Net's natural-image conventions: the RGB PNG layout (colour kept for SAM), its normalisation channel
names, and label maps that are never written as lossy JPEG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from autoprompt import cli
from autoprompt.errors import AutoPromptError
from pipeline.dataset import load_raw_dataset, verify_dataset
from pipeline.io import Geometry, read_channels, read_image, write_image
from pipeline.preprocessing import preprocess_case
from planners.plans import SCHEMA_VERSION, ChannelNormalization, ConfigurationPlan, Plans
from tests.synthetic_data import make_rgb_dataset

DATASET = "Dataset902_Photos"
SHORT = ["--epochs", "1", "--iterations-per-epoch", "2", "--set", "val_iterations=1"]


def roots(root: Path, *names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(root / name))]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoprompt: error: ")
    return lines[0]


# ------------------------------------------------------------------------------------ normalisation
def plans_with(norm: ChannelNormalization) -> Plans:
    """One-channel 2d plans at 1 mm, so a 1 mm picture is neither resampled nor cropped (no zero pixel)."""
    plan = ConfigurationPlan(
        data_identifier="slices",
        slice_axis=0,
        target_spacing=[1.0, 1.0, 1.0],
        window_size=[256, 256],
        stack_depth=1,
        batch_size=1,
        median_shape=[1, 4, 5],
        cache_embeddings=False,
        estimated_cache_gib=0.0,
        inplane_rule="median",
    )
    plans = Plans(
        schema_version=SCHEMA_VERSION,
        dataset_name="Dataset990_Norm",
        labels={"background": 0, "a": 1},
        channel_names={"0": norm.scheme},
        file_ending=".nii.gz",
        normalization=[norm],
        configurations={"2d": plan},
    )
    plans.check()
    return plans


VALUES = np.arange(1, 21, dtype=np.float32).reshape(4, 5)  # mean 10.5, std sqrt(33.25)
STD = float(np.sqrt(33.25))


@pytest.mark.parametrize(
    ("norm", "image", "expected"),
    [
        (ChannelNormalization("ct", 5.0, 15.0), VALUES, np.clip((VALUES - 5) / 10, 0, 1)),
        (ChannelNormalization("mr", 0.0, 100.0), VALUES, (VALUES - 1) / 19),
        (ChannelNormalization("rescale_to_0_1", 0.0, 100.0), VALUES, (VALUES - 1) / 19),
        (ChannelNormalization("zscore", -1.0, 1.0), VALUES, np.clip((VALUES - 10.5 + STD) / (2 * STD), 0, 1)),
        (ChannelNormalization("nonorm", 0.0, 1.0), VALUES / 20, VALUES / 20),
        (ChannelNormalization("rgb_to_0_1", 0.0, 255.0), VALUES * 10, VALUES * 10 / 255),
    ],
    ids=lambda value: value.scheme if isinstance(value, ChannelNormalization) else "",
)
def test_each_normalisation_scheme_maps_as_named(
    tmp_path: Path, norm: ChannelNormalization, image: np.ndarray, expected: np.ndarray
) -> None:
    path = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    data = preprocess_case([path], plans_with(norm), "2d").data
    assert data.shape == (1, 1, 4, 5)
    np.testing.assert_allclose(data[0, 0], expected, atol=1e-6)


@pytest.mark.parametrize(("scheme", "upper", "value"), [("nonorm", 1.0, 20.0), ("rgb_to_0_1", 255.0, 300.0)])
def test_fixed_range_schemes_refuse_values_outside_their_range(
    tmp_path: Path, scheme: str, upper: float, value: float
) -> None:
    path = tmp_path / "case_0000.nii.gz"
    image = VALUES.copy()
    image[0, 0] = value
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    with pytest.raises(
        AutoPromptError, match=rf"{path}: channel normalisation '{scheme}' takes values in \[0, "
    ):
        preprocess_case([path], plans_with(ChannelNormalization(scheme, 0.0, upper)), "2d")


# --------------------------------------------------------------------------------- the RGB layout
def test_rgb_pictures_give_three_channels_and_a_grey_picture_is_reported(tmp_path: Path) -> None:
    folder = make_rgb_dataset(tmp_path, num_cases=2)
    channels, _ = read_channels(folder / "imagesTr" / "photo_000_0000.png")
    assert channels.shape == (3, 40, 32) and channels.dtype == np.uint8
    raw = load_raw_dataset(folder)
    assert [files.images for files in raw.cases.values()] == [
        [folder / "imagesTr" / f"photo_{i:03d}_0000.png"] for i in range(2)
    ]
    assert verify_dataset(raw, num_processes=1) == []

    grey = folder / "imagesTr" / "photo_001_0000.png"
    Image.open(grey).convert("L").save(grey)
    problems = verify_dataset(load_raw_dataset(folder), num_processes=1)
    assert problems == [
        f"{grey}: holds 1 channel(s) and no photo_001_0001 file follows, dataset.json names 3; "
        "save it as an RGB picture or add the files of channels 1 and 2"
    ]


def test_rgb_dataset_plans_trains_and_predicts_in_colour(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = make_rgb_dataset(tmp_path / "raw", num_cases=4)
    plan = [
        "plan-and-preprocess",
        "-d",
        "902",
        "-c",
        "2d",
        "-np",
        "1",
        *roots(tmp_path, "raw", "preprocessed"),
    ]
    assert cli.main(plan) == 0
    preprocessed = tmp_path / "preprocessed" / DATASET
    plans = json.loads((preprocessed / "plans.json").read_text())
    assert [norm["scheme"] for norm in plans["normalization"]] == [
        "mr"
    ] * 3  # R, G, B: percentiles, as before
    cases = preprocessed / plans["configurations"]["2d"]["data_identifier"]
    data = np.load(cases / "photo_000.npy")
    seg = np.load(cases / "photo_000_seg.npy")
    assert data.shape[:2] == (3, 1)
    red, blue = data[:, seg == 1].mean(axis=1), data[:, seg == 2].mean(axis=1)
    assert red[0] > red[2] + 0.5 and blue[2] > blue[0] + 0.5  # colour kept: the red disc is red, not grey

    train = ["train", "902", "0", "-c", "2d", "--config", "tiny", "--device", "cpu", *SHORT]
    assert cli.main([*train, *roots(tmp_path, "raw", "preprocessed", "results")]) == 0
    model = tmp_path / "results" / DATASET / "autoprompt__tiny__2d"
    validation = model / "fold_0" / "validation"
    assert json.loads((validation / "summary.json").read_text())["metric_per_case"]
    capsys.readouterr()

    images = tmp_path / "imagesTs"
    images.mkdir()
    shutil.copy(folder / "imagesTr" / "photo_000_0000.png", images / "photo_0000.png")
    Image.open(folder / "imagesTr" / "photo_001_0000.png").save(images / "snapshot.jpg", quality=90)
    predict = ["predict", "-i", str(images), "-d", "902", "-c", "2d", "--preset", "tiny", "--no-tta"]
    predict += ["--device", "cpu", *roots(tmp_path, "results")]
    assert cli.main([*predict, "-o", str(tmp_path / "preds")]) == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "preds").iterdir()) == ["photo.png", "snapshot.png"]
    for name in ("photo.png", "snapshot.png"):
        labels, geometry = read_image(tmp_path / "preds" / name)
        assert labels.shape == (40, 32) and set(np.unique(labels).tolist()) <= {0, 1, 2}

    assert cli.main([*predict, "-o", str(tmp_path / "jpeg"), "--output-format", ".jpg"]) == 2
    assert "output format '.jpg': JPEG compression changes pixel values" in one_line_error(capsys)
    assert not (tmp_path / "jpeg").exists()


def test_write_image_refuses_jpeg_for_any_label_map(tmp_path: Path) -> None:
    labels = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(AutoPromptError, match="mask.jpeg: JPEG compression changes pixel values"):
        write_image(
            labels, Geometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), (4, 4)), tmp_path / "mask.jpeg"
        )
    assert not list(tmp_path.iterdir())


def test_segment_refuses_a_jpeg_mask_before_any_model_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    picture = tmp_path / "photo.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(picture)
    assert (
        cli.main(["segment", str(picture), "--box", "1", "1", "8", "8", "-o", str(tmp_path / "mask.jpg")])
        == 2
    )
    assert f"{tmp_path / 'mask.jpg'}: JPEG compression changes pixel values" in one_line_error(capsys)
