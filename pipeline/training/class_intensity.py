"""Per-class intensity augmentation: each organ made brighter or darker on its own.

nnU-Net's intensity augmentations (brightness, contrast, gamma) change the whole image at once, so the
contrast between organs never changes. A patient whose organs look different from the training
patients' (in T2 MRI, iron overload darkens liver and spleen; contrast phases and fat brighten or darken
one organ) then falls outside everything the model has seen, and the organ is missed as background.
This transform multiplies the image inside each foreground class of the label map by a factor of its
own, drawn per sample and class, so the model learns organs from shape, texture and position as well as
from their brightness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy.ndimage import gaussian_filter


class ClassIntensityTransform(AbstractTransform):
    """Scale the image inside each foreground class by a random factor (a batchgenerators transform).

    For every sample and every foreground class in its label map, with probability ``p_per_class``,
    the image inside the class is multiplied by a factor drawn log-uniformly from ``factor_range``. The
    class mask is blurred first (Gaussian, ``sigma`` pixels) so the change fades across the border
    instead of drawing the label's outline into the image. All channels that belong to one label map
    (the slices of a stack) get the same factors. Draws from numpy's global generator, as
    batchgenerators does.

    Batch keys: ``data`` ``B x C x H x W`` float, ``seg`` ``B x S x H x W`` labels (float or int), ``C`` a
    multiple of ``S``: data channel ``i`` lies on label map ``i * S // C``.
    """

    def __init__(self, factor_range: Sequence[float], p_per_class: float, sigma: float = 1.0):
        low, high = (float(v) for v in factor_range)
        if not 0 < low <= high:
            raise ValueError(f"factor_range must satisfy 0 < low <= high, got {tuple(factor_range)}")
        self.log_range = (np.log(low), np.log(high))
        self.p_per_class = p_per_class
        self.sigma = sigma

    def __call__(self, **data_dict: np.ndarray) -> dict[str, np.ndarray]:
        data, seg = data_dict["data"], data_dict["seg"]
        channels, maps = data.shape[1], seg.shape[1]
        owner = np.arange(channels) * maps // channels
        for sample in range(data.shape[0]):
            gain = self._gain(np.rint(seg[sample]).astype(np.int64))
            if gain is not None:
                data[sample] *= gain[owner]
        return data_dict

    def _gain(self, labels: np.ndarray) -> np.ndarray | None:
        """``S x H x W`` multiplicative field for one sample's label maps, or None when nothing changes."""
        gain = None
        for label in np.unique(labels[labels > 0]):
            if np.random.uniform() >= self.p_per_class:
                continue
            factor = float(np.exp(np.random.uniform(*self.log_range)))
            soft = gaussian_filter((labels == label).astype(np.float32), sigma=(0, self.sigma, self.sigma))
            gain = 1.0 + (factor - 1.0) * soft if gain is None else gain + (factor - 1.0) * soft
        return gain
