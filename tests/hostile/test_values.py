"""Hostile values below the command line (issue #20, items 1, 3, 6 and 8): raw NaN in every format, costs
estimated from headers exactly as preprocessing will resample, and errors that name the real file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.errors import AutoPromptError
from autoprompt.interactive.predictor import check_box, check_points
from pipeline.files import atomic_path, check_output_file, check_output_folder, load_npy, npy_complete
from pipeline.inference.case_cost import CaseLimits, CaseTooLarge, check_case, estimate_case_cost
from pipeline.io import read_image, read_image_info, write_image
from pipeline.preprocessing import preprocess_case
from planners.plans import Plans
from tests.hostile.conftest import DATASET, Setup, scan, write_volume
from tests.inference.test_predict_command import write_dicom_series


# ------------------------------------------------------------------------------------------ item 3
@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [(0, 0, 0), (1, 7, 9), (-1, -1, -1)], ids=["first", "inside", "last"])
def test_non_finite_voxels_are_refused_in_every_format(
    tmp_path: Path, ending: str, value: float, where: tuple[int, int, int]
) -> None:
    array = scan(shape=(3, 40, 50))
    array[where] = value
    path = write_volume(tmp_path / f"scan{ending}", array)
    with pytest.raises(AutoPromptError, match=re.escape(f"scan{ending}: contains NaN or infinite")):
        read_image(path)


def test_itk_reads_nifti_nan_as_zero_so_the_raw_values_are_checked(tmp_path: Path) -> None:
    """What really happens: ITK's NIfTI reader hands back 0 for NaN; nibabel's raw values keep it."""
    array = scan()
    array[1, 2, 3] = math.nan
    path = write_volume(tmp_path / "scan.nii.gz", array)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[1, 2, 3] == 0.0
    assert np.isnan(np.asarray(nibabel.load(path).dataobj.get_unscaled())).sum() == 1
    with pytest.raises(AutoPromptError, match="contains NaN"):
        read_image(path)


def test_float64_nifti_written_by_nibabel_is_checked_too(tmp_path: Path) -> None:
    array = np.random.default_rng(0).random((5, 6, 7))
    array[4, 5, 6] = math.inf
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), tmp_path / "scan.nii.gz")
    with pytest.raises(AutoPromptError, match="contains NaN"):
        read_image(tmp_path / "scan.nii.gz")


def test_finite_scans_still_read(tmp_path: Path) -> None:
    for ending in (".nii.gz", ".nii", ".mha"):
        array, _ = read_image(write_volume(tmp_path / f"scan{ending}", scan()))
        assert np.isfinite(array).all()


# ------------------------------------------------------------------------------------------ item 1
def _plans(setup: Setup) -> Plans:
    return Plans.load(setup.preprocessed / DATASET / "plans.json")


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [
        ((3, 24, 20), (0.8, 0.8, 3.0)),
        ((2, 30, 17), (1.3, 0.4, 5.0)),
        ((24, 20), (0.5, 0.9)),
        ((3, 24, 24), (1.0, 0.8, 3.0)),
        ((2, 24, 40), (1.6, 0.8, 3.0)),
    ],
    ids=["dataset-like", "anisotropic", "2d", "wider-than-the-window", "over-twice-the-window"],
)
def test_estimated_shape_is_what_preprocessing_makes(
    setup: Setup, tmp_path: Path, shape: tuple[int, ...], spacing: tuple[float, ...]
) -> None:
    path = write_volume(tmp_path / "scan.nii.gz", scan(shape=shape), spacing=spacing)
    cost = estimate_case_cost([read_image_info(path)], _plans(setup), "2d", tta=False)
    case = preprocess_case([path], _plans(setup), "2d", fit_window=True)
    assert list(cost.resampled_shape) == case.properties["shape_after_resampling"]
    assert cost.memory_bytes > case.data.nbytes


def test_dicom_series_header_gives_the_geometry_read_image_gives(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(scan(shape=(4, 24, 20)).astype(np.int16))
    image.SetSpacing((0.7, 0.6, 2.5))
    image.SetOrigin((1.0, -2.0, 30.0))
    write_dicom_series(image, tmp_path / "series")
    info = read_image_info(tmp_path / "series")
    _, geometry = read_image(tmp_path / "series")
    assert info.geometry.size == geometry.size
    assert np.allclose(info.geometry.spacing, geometry.spacing, atol=1e-3)


def test_header_reads_refuse_4d(tmp_path: Path) -> None:
    path = tmp_path / "cine.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 3, 8, 8), np.int16), isVector=False), str(path))
    with pytest.raises(AutoPromptError, match="cine.nii.gz: 4D images are not supported"):
        read_image_info(path)


@pytest.mark.parametrize("limits", [{"max_memory_gb": math.nan}, {"max_windows": 0}, {"max_memory_gb": -1}])
def test_case_limits_refuse_non_finite_or_non_positive_values(limits: dict) -> None:
    with pytest.raises(AutoPromptError, match="must be a positive finite number"):
        CaseLimits(**limits)


def test_cost_refusal_comes_before_any_voxel_is_read(setup: Setup, tmp_path: Path) -> None:
    """The header is the whole check: a file with no voxels at all is refused as too costly, not as damaged."""
    from tests.hostile.test_commands import header_only_nifti

    path = header_only_nifti(tmp_path / "huge.nii.gz", (2048, 2048, 900), (0.7, 0.7, 1.0))
    with pytest.raises(CaseTooLarge, match=r"huge\.nii\.gz: 900x2048x2048 voxels") as refused:
        check_case([path], _plans(setup), "2d", tta=True, limits=CaseLimits())
    assert refused.value.status_code == 422


# --------------------------------------------------------------------------------------- items 6, 8
@pytest.mark.parametrize("box", [[math.nan] * 4, [1, 2, math.inf, 4], [-math.inf, 0, 3, 3]])
def test_boxes_with_non_finite_values_are_refused(box: list[float]) -> None:
    with pytest.raises(AutoPromptError, match="not a finite number"):
        check_box(box, (20, 20), source="slice")


def test_points_with_non_finite_values_are_refused() -> None:
    with pytest.raises(AutoPromptError, match="not a finite number"):
        check_points([(math.nan, 3.0, 1.0)], (20, 20), source="slice")


def test_trainer_config_refuses_non_finite_settings() -> None:
    from pipeline.trainer_config import load_trainer_config

    for override in ("weight_decay=nan", "learning_rate=inf", "loss.box=.nan"):
        with pytest.raises(AutoPromptError, match="must be finite numbers"):
            load_trainer_config("tiny", [override])


def test_a_failed_atomic_write_names_the_final_file(tmp_path: Path) -> None:
    """The 3D-to-PNG refusal named ``.x.abc123.tmp.png``; it names ``x.png`` now."""
    from pipeline.io import Geometry

    geometry = Geometry(
        spacing=(1.0,) * 3, origin=(0.0,) * 3, direction=tuple(np.eye(3).ravel()), size=(4, 4, 2)
    )
    with pytest.raises(AutoPromptError) as refused, atomic_path(tmp_path / "x.png") as tmp:
        write_image(np.zeros((2, 4, 4), np.uint8), geometry, tmp)
    assert str(refused.value).startswith(f"{tmp_path / 'x.png'}: .png holds 2D images only")
    assert list(tmp_path.iterdir()) == []


def test_output_paths_are_checked_without_creating_anything(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(AutoPromptError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file", option="-o")
    with pytest.raises(AutoPromptError, match="file is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "deeper" / "out", option="-o")
    with pytest.raises(AutoPromptError, match="is a folder; give -o a file name"):
        check_output_file(tmp_path, option="-o")
    check_output_folder(tmp_path / "new" / "out", option="-o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_truncated_npy_is_noticed_from_its_header(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(100, dtype=np.int16).reshape(10, 10))
    whole = (tmp_path / "a.npy").read_bytes()
    assert npy_complete(tmp_path / "a.npy")
    (tmp_path / "a.npy").write_bytes(whole[:-1])
    assert not npy_complete(tmp_path / "a.npy")
    (tmp_path / "b.npy").write_bytes(b"garbage")
    for name in ("a.npy", "b.npy", "missing.npy"):
        with pytest.raises(AutoPromptError, match="damaged"):
            load_npy(tmp_path / name)
