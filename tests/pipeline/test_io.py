"""pipeline.io: every format round-trips voxels and geometry; bad inputs give one-line AutoPromptErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.errors import AutoPromptError
from pipeline.io import Geometry, image_suffix, read_image, write_image

# A rotation about z by 30 degrees: a non-identity direction that every 3D format must keep.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
GEOMETRY_3D = Geometry(
    spacing=(0.7, 0.9, 3.5),
    origin=(-120.5, 33.25, 7.0),
    direction=(_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0),
    size=(7, 6, 5),
)
GEOMETRY_2D = Geometry(spacing=(0.5, 0.25), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), size=(9, 8))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_volume_formats_round_trip_voxels_and_geometry(tmp_path: Path, suffix: str) -> None:
    array = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    path = tmp_path / f"image{suffix}"
    write_image(array, GEOMETRY_3D, path)
    read, geometry = read_image(path)
    np.testing.assert_array_equal(read, array)
    assert geometry.matches(GEOMETRY_3D, tol=1e-5), geometry
    assert image_suffix(path) == suffix
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_2d_formats_round_trip_labels_and_spacing(tmp_path: Path, suffix: str) -> None:
    labels = np.random.default_rng(1).integers(0, 4, size=(8, 9)).astype(np.int16)
    path = tmp_path / f"label{suffix}"
    write_image(labels, GEOMETRY_2D, path)
    read, geometry = read_image(path)
    np.testing.assert_array_equal(read, labels)
    assert geometry.size == GEOMETRY_2D.size
    np.testing.assert_allclose(geometry.spacing, GEOMETRY_2D.spacing, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.float64])
def test_tiff_holds_a_3d_stack_of_any_numeric_type(tmp_path: Path, dtype) -> None:
    array = np.arange(5 * 6 * 7).reshape(5, 6, 7).astype(dtype)
    write_image(array, GEOMETRY_3D, tmp_path / "stack.tiff")
    read, geometry = read_image(tmp_path / "stack.tiff")
    np.testing.assert_array_equal(read, array)
    assert geometry.size == (7, 6, 5)


def test_png_of_a_float_image_is_scaled_to_uint8(tmp_path: Path) -> None:
    array = np.linspace(-1.0, 1.0, 72, dtype=np.float32).reshape(8, 9)
    write_image(array, GEOMETRY_2D, tmp_path / "image.png")
    read, _ = read_image(tmp_path / "image.png")
    assert read.dtype == np.uint8
    assert (read.min(), read.max()) == (0, 255)
    assert np.all(np.diff(read.ravel().astype(int)) >= 0)  # order kept


@pytest.mark.parametrize(
    ("dtype", "stored"), [(np.bool_, np.uint8), (np.float16, np.float32), (np.int64, np.int64)]
)
def test_arrays_simpleitk_cannot_hold_are_stored_in_a_wider_type(tmp_path: Path, dtype, stored) -> None:
    array = (np.arange(5 * 6 * 7).reshape(5, 6, 7) % 2).astype(dtype)
    write_image(array, GEOMETRY_3D, tmp_path / "mask.nii.gz")
    read, _ = read_image(tmp_path / "mask.nii.gz")
    assert read.dtype == stored
    np.testing.assert_array_equal(read, array.astype(stored))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_rgb_pictures_become_grey_luminance(tmp_path: Path, suffix: str) -> None:
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (255, 0, 0)  # red
    rgb[:, 8:] = (0, 0, 255)  # blue
    path = tmp_path / f"photo{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    grey, geometry = read_image(path)
    assert grey.shape == (16, 16) and geometry.size == (16, 16)
    # luminance weights red far above blue (0.2125 vs 0.0721 of 255); JPEG blurs the edge, so look at the middles
    assert grey[8, 2] == pytest.approx(0.2125 * 255, abs=6)
    assert grey[8, 13] == pytest.approx(0.0721 * 255, abs=6)


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgba = np.full((4, 4, 4), (0, 255, 0, 10), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "a.png"))
    grey, _ = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(grey, 0.7154 * 255, rtol=1e-4)


def test_dicom_series_folder_reads_with_size_and_spacing(tmp_path: Path) -> None:
    volume = sitk.GetImageFromArray(np.arange(4 * 10 * 12, dtype=np.int16).reshape(4, 10, 12))
    volume.SetSpacing((0.8, 0.6, 2.5))
    volume.SetOrigin((-10.0, 20.0, 5.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        slice_.SetMetaData("0020|000e", series_uid)  # series instance UID
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")  # image orientation
        slice_.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|0013", str(z))  # instance number
        writer.SetFileName(str(tmp_path / f"slice{z:03d}.dcm"))
        writer.Execute(slice_)
    array, geometry = read_image(tmp_path)
    assert array.shape == (4, 10, 12)
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(volume))
    np.testing.assert_allclose(geometry.spacing, (0.8, 0.6, 2.5), rtol=1e-4)
    np.testing.assert_allclose(geometry.origin, (-10.0, 20.0, 5.0), atol=1e-4)
    assert image_suffix(tmp_path) == ""


def test_4d_image_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cine.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), dtype=np.float32), isVector=False), str(path)
    )
    assert sitk.ReadImage(str(path)).GetDimension() == 4
    with pytest.raises(
        AutoPromptError, match=r"cine\.nii\.gz: 4D images are not supported; save each channel"
    ):
        read_image(path)


def test_3d_vector_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vectors.mha"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), dtype=np.float32), isVector=True), str(path)
    )
    with pytest.raises(AutoPromptError, match=r"vectors\.mha: a 3D image with 3 values per voxel"):
        read_image(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("scan.nii.gz", b"not an image at all", "not a readable image"),
        ("notes.txt", b"hello", "not a supported image file"),
    ],
)
def test_garbage_files_give_one_line_errors_naming_the_file(tmp_path: Path, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AutoPromptError) as error:
        read_image(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("cut", ["nii", "nii.gz: recompressed", "nii.gz: stream cut"])
def test_truncated_nifti_is_refused_not_zero_padded(tmp_path: Path, cut: str) -> None:
    import gzip

    array = np.arange(7 * 6 * 5, dtype=np.int16).reshape(5, 6, 7)
    suffix = ".nii" if cut == "nii" else ".nii.gz"
    path = tmp_path / f"scan{suffix}"
    write_image(array, GEOMETRY_3D, path)
    data = path.read_bytes()
    if cut == "nii":
        path.write_bytes(data[:-40])
    elif cut == "nii.gz: recompressed":  # a valid gzip stream holding too few bytes
        path.write_bytes(gzip.compress(gzip.decompress(data)[:-40]))
    else:  # the download or copy stopped midway
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AutoPromptError) as error:
        read_image(path)
    assert str(error.value).startswith(f"{path}: the file is incomplete") or str(error.value).startswith(
        f"{path}: not a readable image"
    )
    assert "\n" not in str(error.value)


def test_missing_file_and_empty_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(AutoPromptError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    with pytest.raises(AutoPromptError, match=f"{tmp_path}: folder holds no DICOM series"):
        read_image(tmp_path)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "volume.png"
    with pytest.raises(AutoPromptError, match="holds 2D images only"):
        write_image(np.zeros((5, 6, 7), dtype=np.uint8), GEOMETRY_3D, path)
    with pytest.raises(ValueError, match="does not fit geometry"):
        write_image(np.zeros((6, 6, 7), dtype=np.float32), GEOMETRY_3D, tmp_path / "bad.nii.gz")
    with pytest.raises(AutoPromptError, match="needs a file ending"):
        write_image(np.zeros((5, 6, 7), dtype=np.float32), GEOMETRY_3D, tmp_path / "noending")
    assert list(tmp_path.iterdir()) == []


def test_writer_error_midway_leaves_no_file(tmp_path: Path) -> None:
    """SimpleITK itself fails (TIFF cannot hold complex values): the temporary file is removed."""
    path = tmp_path / "complex.tif"
    with pytest.raises(RuntimeError):
        write_image(np.zeros((5, 6, 7), dtype=np.complex128), GEOMETRY_3D, path)
    assert list(tmp_path.iterdir()) == []


def test_geometry_dict_round_trip_and_tolerance() -> None:
    assert Geometry.from_dict(GEOMETRY_3D.to_dict()) == GEOMETRY_3D
    shifted = Geometry.from_dict({**GEOMETRY_3D.to_dict(), "origin": [-120.5, 33.25, 7.01]})
    assert GEOMETRY_3D.mismatches(shifted) == ["origin"]
    assert GEOMETRY_3D.matches(shifted, tol=0.1)
    resized = Geometry.from_dict({**GEOMETRY_3D.to_dict(), "size": [7, 6, 4]})
    assert GEOMETRY_3D.mismatches(resized) == ["size"]
