"""Tiny synthetic datasets in the nnU-Net v2 raw format, for fast tests.

Each case is a noisy volume with one ellipsoid per foreground class (class k is brighter than k-1),
so a model can learn it quickly and geometry can be checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def make_volume(
    shape: tuple[int, int, int], *, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``(Z, Y, X)`` float32 image and int16 label map with ``num_classes`` ellipsoids."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    image = rng.normal(100.0, 10.0, size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.int16)
    for k in range(1, num_classes + 1):
        centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
        radii = [max(1.5, rng.uniform(0.12, 0.2) * s) for s in shape]
        if k > 1:  # later classes sit beside the first, not on top of it
            centre[2] = min(shape[2] - radii[2] - 1, centre[2] + 0.25 * shape[2])
        inside = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, radii, strict=True)) <= 1.0
        label[inside] = k
        image[inside] += 100.0 * k
    return image, label


def make_synthetic_dataset(
    root: Path,
    *,
    dataset_name: str = "Dataset901_Synthetic",
    num_cases: int = 6,
    shape: tuple[int, int, int] = (8, 48, 40),
    spacing: tuple[float, float, float] = (0.8, 0.8, 3.0),
    num_classes: int = 2,
    num_channels: int = 1,
    file_ending: str = ".nii.gz",
    seed: int = 0,
    modality: str = "MRI",
) -> Path:
    """Write a dataset folder ``root/dataset_name`` and return its path.

    Args:
        shape: ``(Z, Y, X)`` voxels per case.
        spacing: SimpleITK ``(x, y, z)`` spacing in mm; the default makes z the through-plane axis.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / dataset_name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for index in range(num_cases):
        case = f"case_{index:03d}"
        image, label = make_volume(shape, num_classes=num_classes, rng=rng)
        for channel in range(num_channels):
            channel_image = (
                image if channel == 0 else image * 0.5 + rng.normal(0, 5, size=shape).astype(np.float32)
            )
            _write(channel_image, spacing, folder / "imagesTr" / f"{case}_{channel:04d}{file_ending}")
        _write(label, spacing, folder / "labelsTr" / f"{case}{file_ending}")
    labels = {"background": 0, **{f"class{k}": k for k in range(1, num_classes + 1)}}
    dataset_json = {
        "channel_names": {str(c): modality for c in range(num_channels)},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": file_ending,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def _write(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -5.0, 2.5))
    sitk.WriteImage(image, str(path))


def make_rgb_dataset(
    root: Path,
    *,
    dataset_name: str = "Dataset902_Photos",
    num_cases: int = 4,
    shape: tuple[int, int] = (40, 32),
    num_classes: int = 2,
    channel_names: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a dataset of RGB pictures in nnU-Net's layout (one colour ``{case}_0000.png`` per case,
    dataset.json naming three channels) and return its folder.

    Class ``k`` is a disc of one pure colour (red, blue, ...) on a noisy green-grey background, so colour, not
    brightness alone, tells the classes apart.
    """
    from PIL import Image

    colours = [(220, 30, 30), (30, 30, 220), (220, 220, 30)]
    rng = np.random.default_rng(seed)
    folder = Path(root) / dataset_name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    for index in range(num_cases):
        picture = np.clip(rng.normal((90, 120, 90), 12, size=(*shape, 3)), 0, 255)
        label = np.zeros(shape, dtype=np.uint8)
        for k in range(1, num_classes + 1):
            cy, cx = rng.uniform(0.3, 0.7) * shape[0], (k - 0.5) / num_classes * shape[1]
            inside = ((y - cy) / (0.2 * shape[0])) ** 2 + (
                (x - cx) / (0.4 * shape[1] / num_classes)
            ) ** 2 <= 1
            label[inside] = k
            picture[inside] = colours[k - 1]
        case = f"photo_{index:03d}"
        Image.fromarray(picture.astype(np.uint8), mode="RGB").save(folder / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(label).save(folder / "labelsTr" / f"{case}.png")
    dataset_json = {
        "channel_names": channel_names or {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, **{f"class{k}": k for k in range(1, num_classes + 1)}},
        "numTraining": num_cases,
        "file_ending": ".png",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
