"""Planning rules on hand-made fingerprints: slice axis, in-plane spacing, stacks, batch size, cache."""

from __future__ import annotations

import math

import pytest

from autoprompt.modeling.backbone import backbone_window_size, backbone_windows
from planners import planner
from planners.planner import plan_dataset
from planners.plans import ChannelNormalization


def fingerprint(
    spacings: list[list[float]],
    shapes: list[list[int]],
    *,
    channel_names: dict[str, str] | None = None,
    percentiles: tuple[float, float] = (-100.0, 300.0),
) -> dict:
    """A fingerprint with one case per (spacing, cropped shape), in array order."""
    channel_names = channel_names or {"0": "MRI"}
    stats = {"percentile_00_5": percentiles[0], "percentile_99_5": percentiles[1]}
    return {
        "dataset_name": "Dataset960_Planned",
        "ndim": len(shapes[0]),
        "cases": {
            f"case{i}": {"spacing": sp, "shape": sh, "shape_after_crop": sh}
            for i, (sp, sh) in enumerate(zip(spacings, shapes, strict=True))
        },
        "foreground_intensity_properties_per_channel": {c: stats for c in channel_names},
    }


def dataset_json(num_classes: int = 2, channel_names: dict[str, str] | None = None) -> dict:
    return {
        "channel_names": channel_names or {"0": "MRI"},
        "labels": {"background": 0, **{f"c{k}": k for k in range(1, num_classes + 1)}},
        "file_ending": ".nii.gz",
    }


def test_slice_axis_is_the_coarsest_axis_and_slices_keep_their_spacing() -> None:
    plans = plan_dataset(fingerprint([[1.0, 1.0, 5.0]] * 3, [[200, 180, 12]] * 3), dataset_json())
    plan = plans.configuration("2d")
    assert plan.slice_axis == 2
    assert plan.target_spacing == [5.0, 1.0, 1.0]
    assert plan.median_shape == [12, 200, 180]
    assert plan.inplane_rule == "median"


def test_isotropic_spacing_ties_go_to_z() -> None:
    plans = plan_dataset(fingerprint([[1.0, 1.0, 1.0]] * 3, [[150, 200, 180]] * 3), dataset_json())
    assert plans.configuration("2d").slice_axis == 0
    assert plans.configuration("3d").slice_axis == 0


def test_large_slices_are_coarsened_to_fit_the_window() -> None:
    plans = plan_dataset(fingerprint([[5.0, 0.7, 0.7]] * 3, [[40, 512, 384]] * 3), dataset_json())
    plan = plans.configuration("2d")
    assert plan.inplane_rule == "coarser_to_fit"
    assert plan.target_spacing == pytest.approx([5.0, 1.4, 1.4])
    assert plan.median_shape == [40, 256, 192]


def test_coarsening_is_capped_and_larger_slices_are_tiled() -> None:
    plans = plan_dataset(fingerprint([[5.0, 0.1, 0.1]] * 2, [[2, 2560, 2560]] * 2), dataset_json())
    plan = plans.configuration("2d")
    assert plan.inplane_rule == "coarser_capped"
    assert plan.target_spacing == pytest.approx(
        [5.0, 0.1 * planner.MAX_COARSENING, 0.1 * planner.MAX_COARSENING]
    )
    assert plan.median_shape == [2, 640, 640]
    # 640 px at half-window steps -> 4 tiles per side, 16 windows per slice, 2 cases x 2 slices
    assert plan.estimated_cache_gib == pytest.approx(round(2 * 2 * 16 * planner.EMBEDDING_BYTES / 2**30, 2))


def test_small_slices_are_refined_to_fill_the_window() -> None:
    # Hippocampus-like: ~50 x 35 px at 1 mm; the 90th percentile longest side (50) fills 256 px
    shapes = [[36, 50, 35]] * 9 + [[30, 40, 30]]
    plans = plan_dataset(fingerprint([[1.0, 1.0, 1.0]] * 10, shapes), dataset_json())
    plan = plans.configuration("2d")
    assert plan.inplane_rule == "finer_to_fill"
    assert plan.target_spacing == pytest.approx([1.0, 50 / 256, 50 / 256])
    assert plan.median_shape == [36, 256, 179]


def test_small_slices_get_a_smaller_window_where_the_backbone_takes_one() -> None:
    # the same Hippocampus-like slices: the 90th percentile longest side (50) enlarged 1.25 times needs 62.5 px,
    # so LiteMedSAM's windows (64, 80, ... 256) give 64, and the slices are refined to fill it
    shapes = [[36, 50, 35]] * 9 + [[30, 40, 30]]
    cases = fingerprint([[1.0, 1.0, 1.0]] * 10, shapes)
    windows = backbone_windows("litemedsam")
    plan = plan_dataset(cases, dataset_json(), smaller_windows=windows[:-1]).configuration("2d")
    assert windows[0] == 64 and windows[-1] == 256 and 80 in windows
    assert plan.window_size == [64, 64]
    assert plan.inplane_rule == "finer_to_fill"
    assert plan.target_spacing == pytest.approx([1.0, 50 / 64, 50 / 64])
    assert plan.median_shape == [36, 64, 45]
    assert plan.data_identifier == f"{planner.DATA_IDENTIFIER}_64"  # never the 256 window's cases
    # one window per slice, each embedding (64 / 256)^2 of a 256 window's
    expected_gib = (9 * 36 + 30) * planner.EMBEDDING_BYTES * (64 / 256) ** 2 / 2**30
    assert plan.estimated_cache_gib == pytest.approx(round(expected_gib, 2))
    # slices of at least half the window keep the backbone's own window
    large = fingerprint([[1.0, 1.0, 5.0]] * 3, [[200, 180, 12]] * 3)
    assert plan_dataset(large, dataset_json(), smaller_windows=windows[:-1]).configuration(
        "2d"
    ).window_size == [256, 256]


def test_stack_depth_is_odd_and_fits_the_thinnest_case() -> None:
    thick = plan_dataset(fingerprint([[10.0, 1.5, 1.5]] * 2, [[9, 200, 200], [12, 200, 200]]), dataset_json())
    assert (thick.configuration("2d").stack_depth, thick.configuration("3d").stack_depth) == (
        1,
        planner.STACK_DEPTH,
    )
    thin = plan_dataset(fingerprint([[10.0, 1.5, 1.5]] * 2, [[4, 200, 200], [12, 200, 200]]), dataset_json())
    assert thin.configuration("3d").stack_depth == 3
    assert thin.configuration("3d").data_identifier == thin.configuration("2d").data_identifier


def test_batch_size_follows_the_memory_estimate() -> None:
    def batch_sizes(num_classes: int) -> tuple[int, int]:
        plans = plan_dataset(
            fingerprint([[10.0, 1.5, 1.5]] * 2, [[9, 200, 200]] * 2), dataset_json(num_classes)
        )
        return plans.configuration("2d").batch_size, plans.configuration("3d").batch_size

    per_window = planner.GIB_PER_WINDOW + planner.GIB_PER_CLASS_WINDOW * 3
    expected_3d = min(planner.MAX_BATCH_SIZE, math.floor(planner.MEMORY_BUDGET_GIB / (per_window * 5)))
    assert batch_sizes(3) == (
        min(planner.MAX_BATCH_SIZE, math.floor(planner.MEMORY_BUDGET_GIB / per_window)),
        expected_3d,
    )
    assert batch_sizes(3)[1] < batch_sizes(3)[0]
    assert batch_sizes(60) < batch_sizes(3)  # more classes decode per window -> smaller batches
    assert min(batch_sizes(500)) == 1


def test_embedding_cache_decision_from_the_estimated_size() -> None:
    small = plan_dataset(fingerprint([[10.0, 1.5, 1.5]] * 10, [[20, 200, 200]] * 10), dataset_json())
    assert small.configuration("2d").estimated_cache_gib == pytest.approx(
        round(200 * planner.EMBEDDING_BYTES / 2**30, 2)
    )
    assert small.configuration("2d").cache_embeddings
    # 400 cases x 300 slices x 4 windows (300 px -> 2 x 2 tiles) = 480,000 windows, ~ 940 GiB
    big = plan_dataset(fingerprint([[1.0, 1.0, 1.0]] * 400, [[300, 300, 300]] * 400), dataset_json())
    assert big.configuration("3d").estimated_cache_gib > planner.CACHE_BUDGET_GIB
    assert not big.configuration("3d").cache_embeddings


def test_normalization_ct_from_dataset_percentiles_others_per_image() -> None:
    names = {"0": "ct", "1": "T2"}
    plans = plan_dataset(
        fingerprint(
            [[3.0, 0.8, 0.8]] * 2, [[40, 300, 300]] * 2, channel_names=names, percentiles=(-950.0, 420.0)
        ),
        dataset_json(channel_names=names),
    )
    assert plans.normalization == [
        ChannelNormalization("ct", -950.0, 420.0),
        ChannelNormalization("mr", 0.5, 99.5),
    ]
    plans.check()


def test_nnunet_normalization_names_are_honoured_case_insensitively() -> None:
    names = {"0": "zscore", "1": "noNorm", "2": "rescale_to_0_1", "3": "RGB_to_0_1", "4": "CT", "5": "R"}
    plans = plan_dataset(
        fingerprint(
            [[3.0, 0.8, 0.8]] * 2, [[40, 300, 300]] * 2, channel_names=names, percentiles=(-5.0, 9.0)
        ),
        dataset_json(channel_names=names),
    )
    assert plans.normalization == [
        ChannelNormalization("zscore", -3.0, 3.0),
        ChannelNormalization("nonorm", 0.0, 1.0),
        ChannelNormalization("rescale_to_0_1", 0.0, 100.0),
        ChannelNormalization("rgb_to_0_1", 0.0, 255.0),
        ChannelNormalization("ct", -5.0, 9.0),
        ChannelNormalization("mr", 0.5, 99.5),  # a name nnU-Net does not know: percentiles, as before
    ]
    plans.check()


def test_a_2d_dataset_gets_only_the_2d_configuration() -> None:
    plans = plan_dataset(fingerprint([[0.5, 0.5]] * 3, [[300, 400]] * 3), dataset_json())
    assert list(plans.configurations) == ["2d"]
    plan = plans.configuration("2d")
    assert plan.slice_axis == 0
    assert plan.inplane_rule == "coarser_to_fit"
    assert plan.target_spacing[1:] == pytest.approx([0.5 * 400 / 256] * 2)
    assert plan.median_shape == [1, 192, 256]


def test_a_sam_vit_backbone_is_planned_at_its_own_1024_window() -> None:
    # 448 x 384 px slices: coarsened to fit LiteMedSAM's 256 window, refined to fill a SAM ViT's 1024 window
    cases = fingerprint([[5.0, 0.7, 0.7]] * 3, [[40, 448, 384]] * 3)
    lite = plan_dataset(cases, dataset_json(3)).configuration("2d")
    vit = plan_dataset(cases, dataset_json(3), window=backbone_window_size("sam_vit_b")).configuration("2d")
    assert lite.window_size == [256, 256] and vit.window_size == [1024, 1024]
    assert vit.inplane_rule == "finer_to_fill"
    assert lite.inplane_rule == "coarser_to_fit"
    assert vit.target_spacing == pytest.approx([5.0, 0.7 * 448 / 1024, 0.7 * 448 / 1024])
    assert vit.median_shape == [40, 1024, 878]
    assert vit.data_identifier != lite.data_identifier  # the two preprocessings never overwrite each other
    assert vit.estimated_cache_gib == pytest.approx(round(3 * 40 * planner.EMBEDDING_BYTES / 2**30, 2))
    per_class = planner.GIB_PER_CLASS_WINDOW * 16  # class logits at 1024 x 1024: 16 times the pixels of 256
    assert vit.batch_size == int(planner.MEMORY_BUDGET_GIB // (planner.GIB_PER_WINDOW + 3 * per_class))
    assert vit.batch_size < lite.batch_size
