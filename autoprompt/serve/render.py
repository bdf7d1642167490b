"""Slices as PNG, drawn on the server: the scan in grey, classes as coloured fills with solid outlines.

Pixels are shown with their physical aspect ratio (in-plane spacing) and small images are enlarged,
so the page only has to show an ``<img>``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

FILL_ALPHA = 0.45
BOX_COLOR = "#00e5ff"
MIN_LONG_SIDE = 384
MAX_LONG_SIDE = 1024


def class_colors(label_values: Sequence[int]) -> dict[int, str]:
    """A distinct ``#rrggbb`` colour per foreground label (matplotlib's tab10, then tab20)."""
    values = sorted(value for value in label_values if value != 0)
    cmap = colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {value: _hex(cmap(index % cmap.N)) for index, value in enumerate(values)}


def _hex(rgba: Sequence[float]) -> str:
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in rgba[:3])


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of a scan (the grey-level range shown)."""
    low, high = np.percentile(image, [0.5, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def display_size(shape: tuple[int, int], spacing_xy: tuple[float, float]) -> tuple[int, int]:
    """``(width, height)`` in screen pixels of a ``(Y, X)`` slice with in-plane spacing ``(x, y)`` in mm.

    The physical aspect ratio is kept; the long side is the slice's own, within 384..1024 pixels.
    """
    rows, cols = shape
    width_mm, height_mm = cols * spacing_xy[0], rows * spacing_xy[1]
    long_side = min(max(rows, cols, MIN_LONG_SIDE), MAX_LONG_SIDE)
    per_mm = long_side / max(width_mm, height_mm)
    return max(1, round(width_mm * per_mm)), max(1, round(height_mm * per_mm))


def render_slice(
    image: np.ndarray,
    *,
    window: tuple[float, float],
    spacing_xy: tuple[float, float],
    labels: np.ndarray | None = None,
    colors: dict[int, str] | None = None,
    box: Sequence[float] | None = None,
) -> bytes:
    """A PNG of one slice, optionally with a label overlay and a box outline.

    Args:
        image: ``Y x X`` intensities.
        window: grey-level range (``intensity_window`` of the whole scan).
        spacing_xy: in-plane spacing ``(x, y)`` in mm.
        labels: ``Y x X`` label map to draw (0 = background, drawn as nothing).
        colors: ``#rrggbb`` per label value in ``labels``.
        box: ``[x_min, y_min, x_max, y_max]`` in pixel coordinates of ``image``, outlined in cyan.

    Returns:
        PNG bytes of an RGB image of :func:`display_size`.
    """
    size = display_size(image.shape, spacing_xy)
    low, high = window
    grey = np.clip((image.astype(np.float32) - low) / (high - low), 0.0, 1.0) * 255.0
    grey_image = Image.fromarray(grey.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    rgb = np.repeat(np.asarray(grey_image, dtype=np.float32)[..., None], 3, axis=2)
    if labels is not None and colors:
        shown = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
        edges = find_boundaries(shown, mode="inner")
        for value, color in colors.items():
            inside = shown == value
            rgb[inside] = (1.0 - FILL_ALPHA) * rgb[inside] + FILL_ALPHA * _rgb(color)
            rgb[inside & edges] = _rgb(color)
    picture = Image.fromarray(np.round(rgb).astype(np.uint8))
    if box is not None:
        scale_x, scale_y = size[0] / image.shape[1], size[1] / image.shape[0]
        x1, y1, x2, y2 = box
        ImageDraw.Draw(picture).rectangle(
            [x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y], outline=BOX_COLOR, width=2
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
