"""Augmented views of the embedding cache: aligned image/label pairs, the view count, reuse and rebuilds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.config import ModelConfig
from pipeline.roi_zoom import foreground_box, zoom_in
from pipeline.trainer_config import AugmentationConfig, ViewConfig, ZoomConfig
from pipeline.training.augmented_views import (
    BYTES_PER_EMBEDDING,
    ViewCache,
    choose_view_count,
    render_view,
    view_key_parts,
)
from pipeline.training.data import (
    BatchDataset,
    TrainingCase,
    WindowSampler,
    build_augmentation,
    crop_window,
    zoomed_view_box,
)
from pipeline.training.embedding_cache import EmbeddingCache

GEOMETRY_ONLY = AugmentationConfig(
    noise_variance=0.0,
    blur_sigma=(0.0, 0.0),
    brightness_range=(1.0, 1.0),
    contrast_range=(1.0, 1.0),
    low_resolution_range=(1.0, 1.0),
    gamma_range=(1.0, 1.0),
)


def ellipse_case(name: str = "case", *, slices: int = 2, size: int = 48) -> TrainingCase:
    """An off-centre bright ellipse (0.9, label 1) with a small bright square (label 2) on a 0.1 background."""
    rows, cols = np.mgrid[:size, :size]
    ellipse = ((rows - 0.4 * size) / (0.25 * size)) ** 2 + ((cols - 0.6 * size) / (0.15 * size)) ** 2 <= 1
    seg = np.zeros((slices, size, size), dtype=np.int16)
    seg[:, ellipse] = 1
    seg[:, size - 12 : size - 6, 4:10] = 2
    data = np.where(seg > 0, 0.9, 0.1).astype(np.float32)[None]
    locations = {label: np.argwhere(seg == label) for label in (1, 2)}
    return TrainingCase(name=name, data=data, seg=seg, locations=locations)


@pytest.mark.parametrize("view", [2, 3, 4, 5, 6, 7])
def test_a_random_view_warps_image_and_labels_together(view: int) -> None:
    case = ellipse_case()
    window = (32, 32)
    augmentation = build_augmentation(GEOMETRY_ONLY, window, p_spatial=1.0)
    image, labels = render_view(
        case.data, case.seg, top=8, left=8, window=window, view=view, augmentation=augmentation, seed=view
    )
    assert image.shape == (2, 1, *window) and labels.shape == (2, *window) and labels.dtype == np.int16
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).any()
    bright = image[:, 0] > 0.5
    agreement = (bright == (labels > 0)).mean()
    assert agreement > 0.97  # only interpolated edge pixels may disagree
    identity = crop_window(case.seg, 8, 8, window)
    assert not np.array_equal(labels, identity)  # the view is transformed, not the window itself
    np.testing.assert_array_equal(labels[0], labels[1])  # one transform for every slice of the case


def test_a_zoomed_view_shows_the_ground_truth_region_enlarged_with_its_labels() -> None:
    case = ellipse_case(size=96)
    window = (128, 128)
    zoom = ZoomConfig(margin=0.25, views=1.0)
    tight = foreground_box(case.seg > 0)
    box = zoomed_view_box(tight, zoom, window, np.random.default_rng(0))
    assert box is not None and box.factor(window) > 1.25
    unflipped = AugmentationConfig(**{**GEOMETRY_ONLY.__dict__, "mirror": False})
    no_spatial = build_augmentation(unflipped, window, p_spatial=0.0)
    image, labels = render_view(
        case.data, case.seg, top=16, left=16, window=window, view=2, augmentation=no_spatial, seed=0, roi=box
    )
    expected = zoom_in(torch.from_numpy(case.seg), box, window, labels=True).numpy()
    np.testing.assert_array_equal(labels, expected)  # without a spatial transform: exactly the zoomed box
    assert (labels > 0).mean() > 2 * (case.seg > 0).mean()  # the structures fill more of the window
    assert ((image[:, 0] > 0.5) == (labels > 0)).mean() > 0.97
    skipped = zoomed_view_box(tight, ZoomConfig(views=0.0), window, np.random.default_rng(0))
    assert skipped is None  # zoom.views = 0: every random view is a window of the slice


def test_a_random_view_scales_the_class_under_its_warped_label() -> None:
    geometry_and_class_only = dataclasses.replace(
        GEOMETRY_ONLY, class_intensity_range=(0.3, 0.5), p_class_intensity=1.0
    )
    assert AugmentationConfig().class_intensity_range == (1.0, 1.0)  # off by default
    seg = np.zeros((2, 64, 64), dtype=np.int16)
    seg[:, 12:52, 12:52] = 1
    data = np.where(seg > 0, 0.8, 0.2).astype(np.float32)[None]
    image, labels = render_view(
        data,
        seg,
        top=0,
        left=0,
        window=(64, 64),
        view=2,
        augmentation=build_augmentation(geometry_and_class_only, (64, 64), p_spatial=1.0),
        seed=11,
    )
    inside = binary_erosion(labels[0] == 1, iterations=3)
    outside = binary_erosion((labels[0] == 0) & (image[0, 0] > 0.1), iterations=3)  # the padding stays 0
    assert inside.sum() > 50 and outside.sum() > 50
    assert np.all((image[0, 0][inside] > 0.8 * 0.3 - 0.02) & (image[0, 0][inside] < 0.8 * 0.5 + 0.02))
    np.testing.assert_allclose(image[0, 0][outside], 0.2, atol=0.02)


def test_the_mirror_view_is_the_window_reversed_left_right() -> None:
    case = ellipse_case()
    window = (32, 32)
    image, labels = render_view(
        case.data, case.seg, top=4, left=12, window=window, view=1, augmentation=None, seed=0
    )
    np.testing.assert_array_equal(labels, crop_window(case.seg, 4, 12, window)[..., ::-1])
    np.testing.assert_array_equal(image[:, 0], crop_window(case.data[0], 4, 12, window)[..., ::-1])


@pytest.mark.parametrize(
    ("config", "windows", "expected"),
    [
        (ViewConfig(budget_gib=1.0, max_count=16), 10, 16),  # few slices: as many views as allowed
        (ViewConfig(budget_gib=1.0, max_count=16), 100, 5),  # 1 GiB / (100 x 2 MiB) = 5
        (ViewConfig(budget_gib=1.0, max_count=16), 10_000, 1),  # many slices: the slices themselves
        (ViewConfig(budget_gib=4.0), 299, 6),  # 4 GiB / (299 x 2 MiB) = 6.8, under single_view_from (300)
        (ViewConfig(budget_gib=4.0), 300, 1),  # from single_view_from on: one view, whatever the budget holds
        (ViewConfig(count=4), 10_000, 4),  # set in the preset
    ],
)
def test_the_view_count_follows_the_training_slices_and_the_budget(
    config: ViewConfig, windows: int, expected: int
) -> None:
    assert BYTES_PER_EMBEDDING == 2 * 2**20
    assert choose_view_count(config, windows) == expected


def test_small_window_embeddings_hold_more_views_in_the_same_budget() -> None:
    # an 80 x 80 window's embedding is 256 x 20 x 20 fp16 (200 KiB): 100 windows fill 1 GiB 52 times
    small = 256 * 20 * 20 * 2
    assert choose_view_count(ViewConfig(budget_gib=1.0, max_count=64), 100, bytes_per_embedding=small) == 52
    assert choose_view_count(ViewConfig(budget_gib=1.0, max_count=64), 100) == 5


@pytest.fixture(scope="module")
def tiny_backbone() -> SamBackbone:
    return load_backbone("tiny")


def view_cache(folder: Path, *, count: int, augmentation: AugmentationConfig) -> ViewCache:
    base = EmbeddingCache(
        folder,
        {"backbone_checksum": "tiny", "window_size": [256, 256], "precision": "fp32", "plans": "test"},
    )
    parts = view_key_parts(base, count=count, augmentation=augmentation, p_spatial=1.0, seed=7)
    return ViewCache(base, parts)


def test_views_are_reused_and_rebuilt_when_their_settings_change(
    tmp_path: Path, tiny_backbone: SamBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_autoprompt_sam(
        ModelConfig(backbone="tiny", head_channels=16, adapter_dim=8),
        num_classes=2,
        in_channels=1,
        backbone=tiny_backbone,
    )
    case = ellipse_case(size=200)
    views = view_cache(tmp_path, count=3, augmentation=GEOMETRY_ONLY)
    assert views.build(model, [case], device=torch.device("cpu"), batch_size=2) == 1
    stored = views.open(case.name)
    assert stored.embeddings.shape == (2, 2, 1, 256, 64, 64)  # views 1-2, 2 slices, 1 window
    assert stored.images.shape == (2, 2, 1, 1, 256, 256) and stored.labels.shape == (2, 2, 1, 256, 256)
    with torch.inference_mode():
        expected = model.encode(torch.from_numpy(stored.images[1, 0].astype(np.float32)))
    np.testing.assert_allclose(
        stored.embeddings[1, 0].astype(np.float32), expected.numpy(), atol=2e-2, rtol=1e-2
    )

    state = np.random.get_state()[1].copy()
    assert views.build(model, [case], device=torch.device("cpu"), batch_size=2) == 0  # reused
    np.testing.assert_array_equal(np.random.get_state()[1], state)

    zoomed = ViewCache(
        views.base,
        view_key_parts(
            views.base,
            count=3,
            augmentation=GEOMETRY_ONLY,
            p_spatial=1.0,
            seed=7,
            zoom=ZoomConfig(views=0.5),
        ),
    )
    assert zoomed.key != views.key and not zoomed.is_complete(case)  # zoom settings make new views
    off = view_key_parts(
        views.base,
        count=3,
        augmentation=GEOMETRY_ONLY,
        p_spatial=1.0,
        seed=7,
        zoom=ZoomConfig(views=0.0, second_pass=True),
    )
    assert (
        ViewCache(views.base, off).key == views.key
    )  # no zoomed views: the views made without them stay valid

    rotated_less = AugmentationConfig(**{**GEOMETRY_ONLY.__dict__, "rotation_degrees": 10.0})
    changed = view_cache(tmp_path, count=3, augmentation=rotated_less)
    assert changed.key != views.key and not changed.is_complete(case)
    assert changed.build(model, [case], device=torch.device("cpu"), batch_size=2) == 1
    assert view_cache(tmp_path, count=4, augmentation=GEOMETRY_ONLY).key != views.key
    organ_brightness = AugmentationConfig(**{**GEOMETRY_ONLY.__dict__, "class_intensity_range": (0.5, 2.0)})
    assert view_cache(tmp_path, count=3, augmentation=organ_brightness).key != views.key

    np.save(views.paths(case.name)[0], np.zeros(3, dtype=np.float16))  # a damaged file is rebuilt
    assert not views.is_complete(case)

    # training batches draw among the views: some samples are mirrored or warped windows with their labels
    sampler = WindowSampler([case], window=(256, 256), oversample_foreground=0.0, fixed=True)
    dataset = BatchDataset(
        sampler,
        batch_size=16,
        stack_depth=1,
        seed=0,
        stream=0,
        epoch=0,
        length=1,
        embedding_files=[tmp_path / "base.npy"],
        views=changed,
    )
    np.save(tmp_path / "base.npy", np.zeros((2, 1, 256, 64, 64), dtype=np.float16))
    batch = dataset[0]
    identity = torch.from_numpy(crop_window(case.seg, 0, 0, (256, 256))[0].astype(np.int64))
    drawn = [bool(torch.equal(target, identity)) for target in batch.target]
    assert any(drawn) and not all(drawn)
    for image, target in zip(batch.images, batch.target, strict=True):
        assert ((image[0] > 0.5) == (target > 0)).float().mean() > 0.97


def test_a_stack_draws_one_view_and_every_slice_shows_the_same_transform(
    tmp_path: Path, tiny_backbone: SamBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3d: a training stack takes one view of its window, image, labels and embeddings of all its slices."""
    model = build_autoprompt_sam(
        ModelConfig(backbone="tiny", head_channels=16, adapter_dim=8),
        num_classes=2,
        in_channels=1,
        stack_depth=3,
        backbone=tiny_backbone,
    )
    encoded = []
    original = SamBackbone.encode
    monkeypatch.setattr(
        SamBackbone,
        "encode",
        lambda self, x, batch_size=None: encoded.append(len(x)) or original(self, x, batch_size=batch_size),
    )
    case = ellipse_case(slices=3, size=200)  # three equal slices: any two differ only by their transforms
    views = view_cache(tmp_path, count=3, augmentation=GEOMETRY_ONLY)
    assert views.build(model, [case], device=torch.device("cpu"), batch_size=1) == 1
    assert sum(encoded) == 2 * 3  # views 1-2 of 3 slices, each window once (never padded into a stack)
    np.save(tmp_path / "base.npy", np.zeros((3, 1, 256, 64, 64), dtype=np.float16))
    sampler = WindowSampler([case], window=(256, 256), oversample_foreground=0.0, fixed=True)
    dataset = BatchDataset(
        sampler,
        batch_size=16,
        stack_depth=3,
        seed=0,
        stream=0,
        epoch=0,
        length=1,
        embedding_files=[tmp_path / "base.npy"],
        views=views,
    )
    batch = dataset[0]
    assert batch.images.shape == (16, 3, 1, 256, 256) and batch.target.shape == (16, 3, 256, 256)
    assert batch.embeddings.shape == (16, 3, 256, 64, 64)
    identity = torch.from_numpy(crop_window(case.seg, 0, 0, (256, 256))[0].astype(np.int64))
    transformed = 0
    for images, target, embeddings in zip(batch.images, batch.target, batch.embeddings, strict=True):
        for depth in (1, 2):
            assert torch.equal(target[depth], target[0]) and torch.equal(images[depth], images[0])
            torch.testing.assert_close(embeddings[depth], embeddings[0], atol=1e-2, rtol=1e-2)
        transformed += not torch.equal(target[0], identity)
    assert 0 < transformed < 16  # stacks of the window itself and of its views (mirror, random)


def test_without_the_cache_samples_are_zoomed_on_the_fly_with_their_labels() -> None:
    case = ellipse_case(size=96)
    window = (128, 128)
    sampler = WindowSampler([case], window=window, oversample_foreground=0.0, fixed=False)
    unflipped = AugmentationConfig(**{**GEOMETRY_ONLY.__dict__, "mirror": False})

    def batch(views: float):
        dataset = BatchDataset(
            sampler,
            batch_size=4,
            stack_depth=1,
            seed=0,
            stream=0,
            epoch=0,
            length=1,
            augmentation=build_augmentation(unflipped, window, p_spatial=0.0),
            zoom=ZoomConfig(views=views),
        )
        return dataset[0]

    zoomed, plain = batch(1.0), batch(0.0)
    assert (zoomed.target > 0).float().mean() > 2 * (plain.target > 0).float().mean()
    bright = zoomed.images[:, 0] > 0.5
    assert (bright == (zoomed.target > 0)).float().mean() > 0.97
