"""``benchmarks/roi_crop_dataset.py``: crops around the foreground, and predictions pasted back where they came from."""

import numpy as np
import SimpleITK as sitk

from benchmarks import roi_crop_dataset as crops
from pipeline.files import load_json


def test_cut_then_paste_puts_the_square_back_even_where_it_reaches_outside():
    labels = np.arange(2 * 6 * 7).reshape(2, 6, 7) % 5
    for top, left, side in [(1, 2, 3), (-2, 4, 5), (3, -1, 6)]:
        cut = crops.cut(labels, top, left, side, fill=0)
        assert cut.shape == (2, side, side)
        pasted = crops.paste(cut, top, left, labels.shape)
        inside = np.zeros(labels.shape, bool)
        inside[:, max(top, 0) : top + side, max(left, 0) : left + side] = True
        np.testing.assert_array_equal(pasted[inside], labels[inside])
        assert not pasted[~inside].any()


def test_crop_box_grows_the_foreground_square_and_covers_the_slice_without_foreground():
    label = np.zeros((3, 40, 50), np.uint8)
    label[1, 10:20, 20:26] = 1  # a 10 x 6 foreground: a square of side 10 centred on it
    rng = np.random.default_rng(0)
    assert crops.crop_box(label, margin=2.0, shift=0.0, rng=rng) == (5, 13, 20)
    assert crops.crop_box(np.zeros_like(label), margin=2.0, shift=0.0, rng=rng) == (-5, 0, 50)


def test_a_cropped_folder_pasted_back_gives_the_labels_in_their_own_geometry(tmp_path):
    source = tmp_path / "raw"
    (source / "imagesTr").mkdir(parents=True)
    (source / "labelsTr").mkdir()
    label = np.zeros((4, 30, 36), np.uint8)  # numpy z, y, x; z has the coarsest spacing
    label[1:3, 8:14, 20:30] = 2
    label[2, 10:12, 22:25] = 1
    for array, path in (
        (label, source / "labelsTr" / "c1.nii.gz"),
        (label * 10.0, source / "imagesTr" / "c1_0000.nii.gz"),
    ):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.5, 1.2, 8.0))
        image.SetOrigin((3.0, -4.0, 10.0))
        sitk.WriteImage(image, str(path))
    target = tmp_path / "cropped"
    crops.main(["crop", str(source), str(target), "--margin", "1.5", "--shift", "0.1", "--seed", "3"])
    cropped = sitk.ReadImage(str(target / "labelsTr" / "c1.nii.gz"))
    assert cropped.GetSize()[0] == cropped.GetSize()[1] < 30 and cropped.GetSize()[2] == 4
    np.testing.assert_allclose(cropped.GetSpacing(), (1.5, 1.2, 8.0), rtol=1e-6)
    box = load_json(target / "crops.json")["cases"]["c1"]
    corner = (3.0 + 1.5 * box["left"], -4.0 + 1.2 * box["top"], 10.0)  # the crop's first voxel, where it was
    np.testing.assert_allclose(cropped.GetOrigin(), corner, rtol=1e-6)
    pasted = tmp_path / "pasted"
    crops.main(["paste", str(target / "crops.json"), str(target / "labelsTr"), str(pasted)])
    back = sitk.ReadImage(str(pasted / "c1.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), label)
    np.testing.assert_allclose(back.GetOrigin(), (3.0, -4.0, 10.0))
