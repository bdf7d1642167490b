"""Server-side slice rendering: aspect ratio, grey window, class colours and outlines."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from autoprompt.serve.render import FILL_ALPHA, class_colors, display_size, intensity_window, render_slice


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def test_class_colors_are_distinct_and_skip_background() -> None:
    colors = class_colors([0, 1, 2, 3])
    assert sorted(colors) == [1, 2, 3]
    assert len(set(colors.values())) == 3
    assert all(len(c) == 7 and c.startswith("#") for c in colors.values())
    many = class_colors(list(range(15)))
    assert len(set(many.values())) == 14


def test_display_size_keeps_physical_aspect_and_enlarges_small_slices() -> None:
    assert display_size((48, 40), (0.8, 0.8)) == (320, 384)
    width, height = display_size((100, 100), (1.0, 2.0))  # rows twice as tall as columns are wide
    assert height == 2 * width == 384
    assert display_size((2000, 1000), (1.0, 1.0)) == (512, 1024)


def test_overlay_fills_classes_in_their_colour_and_leaves_background_grey() -> None:
    image = np.zeros((40, 40), dtype=np.float32)
    image[:, 20:] = 100.0  # right half bright
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[5:35, 2:18] = 1  # a block in the dark half
    colors = {1: "#ff0000", 2: "#00ff00"}
    png = render_slice(image, window=(0.0, 100.0), spacing_xy=(1.0, 1.0), labels=labels, colors=colors)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)
    assert picture.shape == (384, 384, 3)
    scale = 384 / 40
    inside = picture[int(20 * scale), int(10 * scale)]
    np.testing.assert_allclose(inside, FILL_ALPHA * _rgb("#ff0000"), atol=1.0)  # dark pixel blended with red
    edge = picture[int(20 * scale), int(2 * scale)]
    np.testing.assert_allclose(edge, _rgb("#ff0000"), atol=1.0)  # outline drawn solid
    np.testing.assert_allclose(picture[5, 380], [255, 255, 255], atol=1.0)  # bright background untouched
    np.testing.assert_allclose(picture[380, 5], [0, 0, 0], atol=1.0)  # dark background untouched
    plain = np.asarray(
        Image.open(io.BytesIO(render_slice(image, window=(0.0, 100.0), spacing_xy=(1.0, 1.0))))
    )
    np.testing.assert_allclose(plain[int(20 * scale), int(10 * scale)], [0, 0, 0], atol=1.0)


def test_intensity_window_ignores_outliers() -> None:
    values = np.concatenate([np.linspace(0, 100, 10_000), [1e6]])
    low, high = intensity_window(values)
    assert 0 <= low < 1 and 99 < high <= 100
    assert intensity_window(np.full((3, 3), 7.0)) == (7.0, 8.0)
