"""Typed, versioned plans: what preprocessing, training and inference do with one dataset.

``plans.json`` is plain JSON a person can read and edit; :meth:`Plans.load` checks every key and value
and names ``plans.json`` and the key when something is wrong, so an edit either takes effect or fails
with one clear line.

    plans = Plans.load(folder / "plans.json")
    plans.configuration("2d").batch_size = 4
    plans.save(folder / "plans.json")
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprompt.errors import AutoPromptError
from pipeline.files import load_json, save_json

SCHEMA_VERSION = 1
NORMALIZATION_SCHEMES = ("ct", "mr", "zscore", "rescale_to_0_1", "nonorm", "rgb_to_0_1")
PERCENTILE_SCHEMES = ("mr", "rescale_to_0_1")


@dataclass
class ChannelNormalization:
    """How one input channel is mapped to ``[0, 1]`` (the backbone's input range).

    Attributes:
        scheme: ``"ct"``: clip every image at ``lower``/``upper`` (intensities; the dataset's foreground
            percentiles 0.5/99.5) and scale to [0, 1]. ``"mr"`` (every channel name nnU-Net does not know):
            clip each image at its own ``lower``/``upper`` percentiles (0-100) of its nonzero region and
            min-max scale. nnU-Net's channel names: ``"zscore"``: each image's mean + ``lower``/``upper``
            standard deviations (of its nonzero region) mapped to 0/1, clipped; ``"rescale_to_0_1"``:
            percentiles ``lower``/``upper`` of the whole image (0/100: its minimum/maximum) mapped to 0/1;
            ``"nonorm"`` and ``"rgb_to_0_1"``: intensities ``lower``/``upper`` (0/1 and 0/255) mapped to
            0/1, a value outside them is refused.
        lower: what is mapped to 0 (intensity, percentile or standard deviations, by scheme).
        upper: what is mapped to 1.
    """

    scheme: str
    lower: float
    upper: float


@dataclass
class ConfigurationPlan:
    """One configuration ("2d" or "3d") of a dataset.

    Attributes:
        data_identifier: folder under the preprocessed dataset; configurations that share it share the
            preprocessed cases (they must then agree on ``slice_axis`` and ``target_spacing``).
        slice_axis: axis of the original ``(Z, Y, X)`` array that becomes the slice axis.
        target_spacing: ``(slice, row, col)`` in mm after moving ``slice_axis`` first. Rows and columns are
            resampled to it; the slice entry is the dataset's median and informational only (slices are
            never resampled).
        window_size: ``[S, S]`` in-plane windows fed to SAM, S the backbone's input (LiteMedSAM 256, SAM/MedSAM
            ViT 1024; a model refuses plans for another S); smaller slices are zero-padded, larger ones tiled
            with Gaussian-blended windows (at prediction, slices up to twice the window are first resampled
            to fit it: :func:`pipeline.preprocessing.prediction_spacing`).
        stack_depth: 1 for "2d"; ``D`` neighbouring slices (odd) for "3d".
        batch_size: training batch size (slices for "2d", stacks for "3d").
        median_shape: ``(S, H, W)`` of a median case after preprocessing.
        cache_embeddings: whether frozen-encoder embeddings should be cached on disk.
        estimated_cache_gib: estimated size of that cache (fp16, all windows of all slices).
        inplane_rule: how the in-plane spacing was chosen: ``"median"`` (the median spacing),
            ``"finer_to_fill"`` (small images enlarged toward the window), ``"coarser_to_fit"`` (large images
            shrunk to fit the window) or ``"coarser_capped"`` (shrinking capped; larger slices are tiled).
    """

    data_identifier: str
    slice_axis: int
    target_spacing: list[float]
    window_size: list[int]
    stack_depth: int
    batch_size: int
    median_shape: list[int]
    cache_embeddings: bool
    estimated_cache_gib: float
    inplane_rule: str


@dataclass
class Plans:
    """Everything planned for one dataset: labels, channels, normalisation and the configurations."""

    schema_version: int
    dataset_name: str
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    normalization: list[ChannelNormalization]
    configurations: dict[str, ConfigurationPlan]

    @property
    def num_foreground_classes(self) -> int:
        """``K``: the number of labels other than background and ``ignore``."""
        return len(self.foreground_labels)

    @property
    def foreground_labels(self) -> dict[str, int]:
        """``{name: value}`` of the classes a model predicts: all labels but background and ``ignore``."""
        return {name: value for name, value in self.labels.items() if value != 0 and name != "ignore"}

    @property
    def ignore_label(self) -> int | None:
        """The value of nnU-Net's ``ignore`` label (unannotated voxels: no loss, no metric), or None."""
        return self.labels.get("ignore")

    def configuration(self, name: str) -> ConfigurationPlan:
        """The plan of configuration ``name``.

        Raises:
            AutoPromptError: ``name`` is not planned; the message lists the planned ones.
        """
        if name not in self.configurations:
            raise AutoPromptError(
                f"configuration '{name}' is not in the plans of {self.dataset_name}; "
                f"choose one of: {', '.join(sorted(self.configurations))}"
            )
        return self.configurations[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the content of ``plans.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "plans.json") -> Plans:
        """Build and check plans from a dict; ``source`` names the file in error messages.

        Raises:
            AutoPromptError: a key is unknown or missing, a value has the wrong type or is out of range.
        """
        plans = _build(cls, data, source=source, where="")
        plans.check(source=source)
        return plans

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plans:
        """Read and check ``plans.json``."""
        path = Path(path)
        if not path.is_file():
            raise AutoPromptError(
                f"{path}: no plans file; run 'autoprompt plan-and-preprocess' for this dataset first"
            )
        try:
            data = load_json(path)
        except ValueError as error:
            raise AutoPromptError(
                f"{path}: not valid JSON ({error}); fix the edit or delete it and re-plan"
            ) from error
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``plans.json`` atomically."""
        save_json(self.to_dict(), path)

    def check(self, *, source: str = "plans.json") -> None:
        """Check values a person may have edited out of range.

        Raises:
            AutoPromptError: naming ``source`` and the key.
        """

        def fail(key: str, problem: str) -> typing.NoReturn:
            raise AutoPromptError(f"{source}: '{key}' {problem}")

        if self.schema_version != SCHEMA_VERSION:
            fail(
                "schema_version",
                f"is {self.schema_version}, this autoprompt reads {SCHEMA_VERSION}; re-plan with --overwrite-plans",
            )
        if self.labels.get("background") != 0:
            fail("labels", "needs 'background': 0; add it")
        if len(self.normalization) != len(self.channel_names):
            fail(
                "normalization",
                f"has {len(self.normalization)} entries for {len(self.channel_names)} channels; give one per channel",
            )
        for index, norm in enumerate(self.normalization):
            if norm.scheme not in NORMALIZATION_SCHEMES:
                fail(
                    f"normalization[{index}].scheme",
                    f"is '{norm.scheme}'; use one of {', '.join(NORMALIZATION_SCHEMES)}",
                )
            if not norm.lower < norm.upper:
                fail(
                    f"normalization[{index}]",
                    f"has lower {norm.lower} >= upper {norm.upper}; make lower < upper",
                )
            if norm.scheme in PERCENTILE_SCHEMES and not 0 <= norm.lower < norm.upper <= 100:
                fail(
                    f"normalization[{index}]",
                    f"is '{norm.scheme}': lower/upper are percentiles; keep them within 0..100",
                )
        if not self.configurations:
            fail("configurations", "is empty; plan at least '2d'")
        shared: dict[str, tuple[str, ConfigurationPlan]] = {}
        for name, plan in self.configurations.items():
            key = f"configurations.{name}"
            if plan.slice_axis not in (0, 1, 2):
                fail(f"{key}.slice_axis", f"is {plan.slice_axis}; use 0 (Z), 1 (Y) or 2 (X)")
            if len(plan.target_spacing) != 3 or min(plan.target_spacing) <= 0:
                fail(f"{key}.target_spacing", "needs 3 positive values (slice, row, col) in mm")
            if len(plan.window_size) != 2 or min(plan.window_size) <= 0:
                fail(f"{key}.window_size", "needs 2 positive values (rows, cols)")
            if plan.stack_depth < 1 or plan.stack_depth % 2 == 0:
                fail(f"{key}.stack_depth", f"is {plan.stack_depth}; use an odd number >= 1")
            if plan.batch_size < 1:
                fail(f"{key}.batch_size", f"is {plan.batch_size}; use 1 or more")
            other = shared.setdefault(plan.data_identifier, (name, plan))
            if (other[1].slice_axis, other[1].target_spacing) != (plan.slice_axis, plan.target_spacing):
                fail(
                    f"{key}.data_identifier",
                    f"'{plan.data_identifier}' is shared with '{other[0]}' but slice_axis/target_spacing differ; "
                    "give this configuration its own data_identifier",
                )


def _build(cls: type, data: Any, *, source: str, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and value types recursively."""
    if not isinstance(data, dict):
        raise AutoPromptError(f"{source}: '{where.rstrip('.') or 'top level'}' must be an object; restore it")
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(names)}"
            raise AutoPromptError(f"{source}: unknown key '{where}{key}'; remove it ({hint})")
    for name in names:
        if name not in data:
            raise AutoPromptError(
                f"{source}: missing key '{where}{name}'; add it or re-plan with --overwrite-plans"
            )
    return cls(
        **{name: _coerce(data[name], hints[name], source=source, key=f"{where}{name}") for name in names}
    )


def _coerce(value: Any, hint: Any, *, source: str, key: str) -> Any:
    """Check ``value`` against type ``hint`` (int, float, bool, str, list[...], dict[str, ...], dataclass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source=source, where=f"{key}.")
    if origin is list and isinstance(value, list):
        return [_coerce(item, args[0], source=source, key=f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {str(k): _coerce(v, args[1], source=source, key=f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, bool, str) and type(value) is hint:
        return value
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint)
    expected = expected or ("a list" if origin is list else "an object")
    raise AutoPromptError(f"{source}: '{key}' must be {expected}, got {value!r}; fix the value")
