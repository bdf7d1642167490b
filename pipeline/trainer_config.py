"""Training hyperparameters: the :class:`TrainerConfig` dataclass and its YAML presets.

Hyperparameters live in human-edited YAML files under ``configs/`` (``2d_frozen.yaml``,
``3d_frozen.yaml``, ``3d_adapter.yaml``, ``tiny.yaml``), never in trainer subclasses. ``configs`` is a
package whose YAML files are package data, found with :mod:`importlib.resources`, so an installed wheel
has them too. A preset is named by its file stem or given as a path; ``key=value`` overrides (``epochs=4``,
``model.adapter_dim=16``) are applied on top with type coercion, and an unknown key is an error with a
"did you mean" hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autoprompt.errors import AutoPromptError
from autoprompt.modeling.config import ModelConfig
from pipeline.files import atomic_path

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PRESETS_PACKAGE = "configs"
"""The package whose ``*.yaml`` files are the bundled presets."""
DEFAULT_PRESETS = {"2d": "2d_frozen", "3d": "3d_adapter"}
"""The preset each configuration trains with by default on a GPU (see :func:`default_preset`)."""
CPU_DEFAULT_PRESETS = {"2d": "2d_frozen", "3d": "3d_frozen"}
"""The defaults on any other device: 3d from cached frozen-encoder embeddings, since 3d_adapter runs the
encoder on every slice of every stack at every step."""
AMP_MODES = ("auto", "none", "fp16", "bf16")


@dataclass
class LossConfig:
    """Weights of the auxiliary prompt-generator terms.

    The final output's cross-entropy + Dice is an unweighted sum (weight 1); the auxiliary terms are
    added with these weights.
    """

    coarse: float = 1.0  # Dice + BCE on the coarse masks
    coarse_softmax: bool = (
        False  # coarse masks as one label map: softmax over (background 0, classes), CE + Dice
    )
    box: float = 1.0  # L1 + GIoU on the boxes of classes present in the window
    presence: float = 1.0  # BCE on the presence logits


@dataclass
class AugmentationConfig:
    """nnU-Net's 2D augmentations (batchgenerators), with intensity ranges rescaled for [0, 1] images.

    Used in two places: on the fly for every training sample when the encoder runs every step (no
    cache), and to draw the random augmented views of the embedding cache
    (:mod:`pipeline.training.augmented_views`), where ``ViewConfig.p_spatial`` replaces ``p_spatial``.
    nnU-Net's noise variance (0, 0.1) is for z-scored images; images in [0, 1] have a standard deviation
    of about 0.2, hence a variance 25 times smaller. ``class_intensity_range`` is new here (not nnU-Net's):
    each foreground class's own brightness factor (:mod:`pipeline.training.class_intensity`).
    """

    rotation_degrees: float = 180.0  # in-plane rotation in [-r, r] (nnU-Net 2d); 0 switches it off
    scale_range: tuple[float, float] = (0.7, 1.4)  # (1, 1) switches it off
    p_spatial: float = 0.2  # per-sample probability of rotation and of scaling
    elastic: bool = False  # elastic deformation (nnU-Net: off)
    noise_variance: float = 0.004  # Gaussian noise variance drawn from [0, v] (images in [0, 1]); 0 -> off
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # Gaussian blur; (0, 0) switches it off
    brightness_range: tuple[float, float] = (0.75, 1.25)  # multiplicative brightness
    contrast_range: tuple[float, float] = (0.75, 1.25)
    low_resolution_range: tuple[float, float] = (0.5, 1.0)  # simulated low resolution; (1, 1) -> off
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror: bool = True  # random flips of the in-plane axes
    class_intensity_range: tuple[float, float] = (1.0, 1.0)  # per-class factor, log-uniform; (1, 1) -> off
    p_class_intensity: float = 0.5  # per-sample probability that a class present is scaled


@dataclass
class ViewConfig:
    """Augmented views of the training slices in the embedding cache (frozen encoder).

    View 0 is the slice itself, view 1 its mirror image (left-right), views 2.. random views drawn with
    :class:`AugmentationConfig` (spatial transform with probability ``p_spatial``); each training
    sample draws one view. ``count`` None chooses one view (the windows themselves) from
    ``single_view_from`` training windows on, and below that ``clamp(budget_gib / cache size of one view, 1,
    max_count)``, so small datasets get many views and large ones one.
    """

    count: int | None = None  # views per training slice, identity included; None -> from the size and budget
    single_view_from: int = 300  # training windows from which count None gives one view
    budget_gib: float = 4.0  # fp16 embeddings of all views of the training cases at most this size
    max_count: int = 16
    p_spatial: float = 1.0  # probability of rotation and of scaling in a random view


@dataclass
class ZoomConfig:
    """The region of interest enlarged to the window (:mod:`pipeline.roi_zoom`): zoomed training views, and
    optionally a second, zoomed pass at prediction.

    Training shows the model such crops: an augmented sample (a random cached view, or a sample augmented
    on the fly without the cache) is, with probability ``views`` (0: never), the square around the case's
    ground truth (its margin drawn from 0.5-1.5 x ``margin``, its centre moved by up to 10 % of its side)
    instead of a window of the slice. With ``second_pass``, prediction finds the square around the
    foreground of a case's first pass, grown by ``margin`` of its side on each side, predicts it again
    resized to the window and pastes those probabilities over the first pass.
    """

    second_pass: bool = False
    margin: float = 0.25  # fraction of the box's side added on each side
    max_factor: float = 4.0  # the box is enlarged at most this much
    views: float = 0.0  # fraction of the augmented training samples that are zoomed crops (0: none)


@dataclass
class TrainerConfig:
    """Everything that defines a training run, besides the data and the fold.

    Attributes:
        model: the network (:class:`autoprompt.modeling.config.ModelConfig`).
        configuration: the plans configuration trained ("2d" or "3d").
        epochs: number of epochs.
        iterations_per_epoch: optimiser steps per epoch.
        max_steps_per_window: None -> no limit; k -> at most ``k`` optimiser steps per training window
            (the windows of the training slices, one view), rounded up to whole epochs: a tiny training set
            is not trained for as long as ``epochs`` or a time budget would allow
            (:func:`pipeline.training.optim.epochs_for_training_windows`).
        ensemble_members: at most this many models per fold, trained one after the other with seeds ``seed``,
            ``seed + 1``, ... into ``fold_K/member_M`` and averaged at prediction (they share the encoder
            pass). Members after the first train only when ``max_steps_per_window`` ended the first run
            before ``epochs``: as many as the epochs it left unused pay for, and under a time budget as many
            as fit it (:func:`pipeline.training.optim.ensemble_size`). One under torchrun.
        val_iterations: validation batches per epoch for the pseudo-Dice that picks checkpoint_best.
        batch_size: windows (2d) or stacks (3d) per step; None -> the plans' batch size.
        learning_rate: peak AdamW learning rate (reached after the warm-up).
        weight_decay: AdamW weight decay.
        pretrained_learning_rate_scale: learning-rate factor for the backbone's own weights that train (the
            mask decoder, the prompt encoder's box and mask parts, the image encoder when it trains); the
            new parts (prompt generator, adapters) train at ``learning_rate``. Below 1 keeps the
            pretrained weights nearer SAM's prior.
        warmup_epochs: epochs of linear warm-up from 0, then polynomial decay to 0.
        poly_exponent: exponent of the polynomial decay.
        grad_clip: maximum gradient norm (0 switches clipping off).
        seed: seeds torch, numpy, random and every sampling generator.
        oversample_foreground: fraction of samples centred on a random foreground class.
        loss: auxiliary loss weights.
        augmentation: augmentation switches and ranges.
        views: augmented views cached with a frozen encoder (:class:`ViewConfig`).
        zoom: a second, zoomed pass over the region of interest (:class:`ZoomConfig`).
        weight_average_decay: 0 -> off; else validate, checkpoint and predict with an exponential moving
            average of the weights, updated after every step with this decay (0.99 averages over roughly the
            last 100 steps; :mod:`pipeline.training.weight_average`).
        prompt_teacher_forcing: probability that a training sample gives SAM's prompt encoder boxes from
            its ground truth (jittered, as MedSAM trains) instead of the generated ones.
        decoder_region_tokens: None -> SAM's mask decoder trains on the whole window; t -> on a t x t square
            of image tokens around each window's labels (:mod:`pipeline.training.decoder_regions`), a step
            several times cheaper; prediction always decodes the whole window.
        cache_embeddings: None -> use the embedding cache when the encoder is frozen and the plans
            allow it; True/False forces it (True with a trainable encoder is an error).
        cache_slice_stride: cache (and train on) only every k-th slice of each case (2d only). The
            encoder pass per slice dominates on a CPU; neighbouring slices of thin-slice data are nearly
            identical, so k > 1 trades little diversity for a k times cheaper cache.
        encoder_precision: precision of the frozen encoder when building the cache: "auto" (the
            device's fastest native precision, :mod:`autoprompt.precision`: bf16 on CPUs with AVX512-BF16
            or AMX and on GPUs with bf16, fp16 on other GPUs, fp32 on other CPUs), "fp32", "bf16".
            The resolved precision keys the cache and is recorded in the checkpoint; prediction uses it.
        amp: mixed precision of the network during training: "auto" (as ``encoder_precision``; fp16
            with gradient scaling, fp32 means none), "none", "fp16" (CUDA only) or "bf16" (CPU with
            bf16 instructions or CUDA; ``benchmarks/precision.py`` measures the difference).
        num_workers: background processes producing batches (0: in the training process, the
            cached presets' choice on a CPU and on a GPU alike, ``docs/results.md``); None (written by
            round-25 presets) means 0.
        time_budget_minutes: train only as many epochs as fit in this many minutes (measured on the
            epochs run so far; the embedding cache and the final validation are not counted), never
            more than ``epochs`` (or the ``max_steps_per_window`` limit); the learning-rate schedule ends with
            the last epoch that fits.
        final_validation: predict the fold's validation cases through the real prediction path at the
            end and decide the postprocessing.
        validation_tta: mirroring in that final validation; None -> on when training mirrored its inputs
            (cache off, ``augmentation.mirror``), as ``autoprompt predict`` decides by default.
        int8_encoder: with a frozen encoder on windows up to 256 (LiteMedSAM's), write an int8 copy of it,
            calibrated on windows of the fold's training cases, into the model folder when the steps end (once
            per folder;
            :mod:`autoprompt.modeling.encoder_quantization`). Prediction in ``auto`` precision runs it on
            CPUs where int8 pays (:func:`autoprompt.precision.int8_encoder_pays`), the final validation too.
        int8_cache: with ``int8_encoder``, where int8 pays on the training CPU, write that int8 encoder
            before the embedding cache and build the cache with it (a faster cache; the network then trains on
            the embeddings ``auto`` prediction gives there). Chosen on ACDC cross-validation over two trainer
            seeds (docs/results.md, round 43); ignored with ``int8_encoder`` off.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    configuration: str = "2d"
    epochs: int = 50
    iterations_per_epoch: int = 250
    max_steps_per_window: float | None = None
    ensemble_members: int = 1
    val_iterations: int = 25
    batch_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    pretrained_learning_rate_scale: float = 1.0
    warmup_epochs: int = 1
    poly_exponent: float = 0.9
    grad_clip: float = 1.0
    seed: int = 12345
    oversample_foreground: float = 0.33
    loss: LossConfig = field(default_factory=LossConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    zoom: ZoomConfig = field(default_factory=ZoomConfig)
    weight_average_decay: float = 0.0
    prompt_teacher_forcing: float = 0.0
    decoder_region_tokens: int | None = None
    cache_embeddings: bool | None = None
    cache_slice_stride: int = 1
    encoder_precision: str = "auto"
    amp: str = "auto"
    num_workers: int | None = 0
    time_budget_minutes: float | None = None
    final_validation: bool = True
    validation_tta: bool | None = None
    int8_encoder: bool = True
    int8_cache: bool = True

    def __post_init__(self) -> None:
        not_finite = _non_finite_settings(self.to_dict())
        if not_finite:
            raise AutoPromptError(
                f"trainer config: {', '.join(not_finite)} must be finite numbers (NaN or infinity given); "
                "fix the YAML file or the --set override"
            )
        checks = {
            "epochs": self.epochs >= 1,
            "iterations_per_epoch": self.iterations_per_epoch >= 1,
            "max_steps_per_window": self.max_steps_per_window is None or self.max_steps_per_window > 0,
            "ensemble_members": self.ensemble_members >= 1,
            "val_iterations": self.val_iterations >= 0,
            "batch_size": self.batch_size is None or self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "pretrained_learning_rate_scale": self.pretrained_learning_rate_scale > 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "oversample_foreground": 0.0 <= self.oversample_foreground <= 1.0,
            "num_workers": self.num_workers is None or self.num_workers >= 0,
            "cache_slice_stride": self.cache_slice_stride >= 1,
            "time_budget_minutes": self.time_budget_minutes is None or self.time_budget_minutes > 0,
            "encoder_precision": self.encoder_precision in ("auto", "fp32", "bf16"),
            "amp": self.amp in AMP_MODES,
            "prompt_teacher_forcing": 0.0 <= self.prompt_teacher_forcing <= 1.0,
            "weight_average_decay": 0.0 <= self.weight_average_decay < 1.0,
            "decoder_region_tokens": self.decoder_region_tokens is None or self.decoder_region_tokens >= 1,
            "views.count": self.views.count is None or self.views.count >= 1,
            "views.single_view_from": self.views.single_view_from >= 1,
            "views.budget_gib": self.views.budget_gib >= 0,
            "views.max_count": self.views.max_count >= 1,
            "views.p_spatial": 0.0 <= self.views.p_spatial <= 1.0,
            "zoom.margin": self.zoom.margin >= 0,
            "zoom.max_factor": self.zoom.max_factor >= 1,
            "zoom.views": 0.0 <= self.zoom.views <= 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise AutoPromptError(
                f"trainer config: invalid value for {', '.join(bad)} "
                f"({', '.join(f'{n}={_dotted(self, n)!r}' for n in bad)}); fix the YAML file or the --set override"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-friendly dict (tuples become lists, enums their values)."""
        return _plain(dataclasses.asdict(self))


def _non_finite_settings(values: Any, prefix: str = "") -> list[str]:
    """Dotted names of the float settings in ``values`` (a plain dict) that are NaN or infinite."""
    if isinstance(values, dict):
        return [
            name for key, item in values.items() for name in _non_finite_settings(item, f"{prefix}{key}.")
        ]
    if isinstance(values, list):
        return [name for item in values for name in _non_finite_settings(item, prefix)][:1]
    if isinstance(values, float) and not math.isfinite(values):
        return [prefix.rstrip(".")]
    return []


def _dotted(obj: Any, name: str) -> Any:
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def default_preset(configuration: str, device_type: str) -> str:
    """The preset ``configuration`` trains with when none is named: :data:`DEFAULT_PRESETS` on ``"cuda"``,
    else :data:`CPU_DEFAULT_PRESETS` (``torch.device.type``)."""
    presets = DEFAULT_PRESETS if device_type == "cuda" else CPU_DEFAULT_PRESETS
    return presets[configuration]


def preset_names() -> list[str]:
    """The bundled presets, sorted: ``["2d_frozen", "3d_adapter", "3d_frozen", "tiny"]``."""
    files = importlib.resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(file.name.removesuffix(".yaml") for file in files if file.name.endswith(".yaml"))


def preset_path(path_or_preset: str | Path) -> Path | Traversable:
    """``"2d_frozen"`` -> the bundled ``configs/2d_frozen.yaml``; a path to a ``.yaml`` file as it is.

    Raises:
        AutoPromptError: the file does not exist (the message lists the bundled presets).
    """
    text = str(path_or_preset)
    path = Path(text).expanduser()
    candidate = (
        path
        if path.suffix in (".yaml", ".yml") or path.is_file()
        else importlib.resources.files(PRESETS_PACKAGE).joinpath(f"{text}.yaml")
    )
    if not candidate.is_file():
        presets = preset_names()
        close = difflib.get_close_matches(Path(text).stem, presets, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AutoPromptError(
            f"{candidate}: trainer config not found{hint}; pass a YAML file or one of the presets {', '.join(presets)}"
        )
    return candidate


def preset_name(path_or_preset: str | Path) -> str:
    """The name a config is known by in model folder names: the YAML file's stem."""
    return Path(str(path_or_preset)).name.removesuffix(".yaml").removesuffix(".yml")


def load_trainer_config(path_or_preset: str | Path, overrides: typing.Sequence[str] = ()) -> TrainerConfig:
    """Read a YAML preset (by name or path) and apply ``key=value`` overrides.

    Args:
        path_or_preset: a preset name (``"2d_frozen"`` -> ``configs/2d_frozen.yaml``) or a YAML path.
        overrides: ``"epochs=4"``, ``"model.adapter_dim=16"``, ``"augmentation.mirror=false"``;
            values are parsed as YAML and coerced to the field's type.

    Raises:
        AutoPromptError: missing or malformed file, unknown key (with "did you mean"), or a value
            of the wrong type.
    """
    path = preset_path(path_or_preset)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise AutoPromptError(f"{path}: not valid YAML ({error.__class__.__name__}); fix the file") from error
    if not isinstance(data, dict):
        raise AutoPromptError(f"{path}: expected a mapping of settings at the top level; fix the file")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise AutoPromptError(f"override '{override}' is not KEY=VALUE; write e.g. --set epochs=10")
        _set_nested(data, key.strip().split("."), yaml.safe_load(value) if value.strip() else None, override)
    return _build(TrainerConfig, data, source=str(path))


def trainer_config_from_dict(data: dict[str, Any], *, source: str) -> TrainerConfig:
    """Build a :class:`TrainerConfig` from a plain dict (a loaded YAML or checkpoint metadata)."""
    zoom = data.get("zoom")
    if isinstance(zoom, dict) and "enabled" in zoom:  # model folders of round 14 named second_pass "enabled"
        data = {**data, "zoom": {("second_pass" if k == "enabled" else k): v for k, v in zoom.items()}}
    return _build(TrainerConfig, data, source=source)


def save_trainer_config(config: TrainerConfig, path: str | Path) -> None:
    """Write ``config`` as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _set_nested(data: dict, keys: list[str], value: Any, override: str) -> None:
    for key in keys[:-1]:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise AutoPromptError(f"override '{override}': '{key}' is not a section; drop the dotted part")
        data = child
    data[keys[-1]] = value


def _build(cls: type, data: dict[str, Any], *, source: str, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data`` with key checking and type coercion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise AutoPromptError(
                f"{source}: unknown setting '{prefix}{key}'{hint}; known settings: {', '.join(prefix + n for n in names)}"
            )
        kwargs[key] = _coerce(value, hints[key], key=prefix + key, source=source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise AutoPromptError(f"{source}: {error}; fix the setting") from error


def _coerce(value: Any, annotation: Any, *, key: str, source: str) -> Any:
    """Convert a YAML value to ``annotation`` or raise a one-line error naming ``key``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)

    def fail() -> typing.NoReturn:
        expected = getattr(annotation, "__name__", str(annotation))
        raise AutoPromptError(
            f"{source}: setting '{key}' = {value!r} is not a valid {expected}; fix the value"
        )

    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key=key, source=source)
            except AutoPromptError:
                continue
        fail()
    if origin is typing.Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AutoPromptError(
            f"{source}: setting '{key}' = {value!r}{hint}; choose one of {', '.join(map(str, args))}"
        )
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            fail()
        return _build(annotation, value, source=source, prefix=f"{key}.")
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return annotation(value)
        except ValueError:
            choices = [m.value for m in annotation]
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AutoPromptError(
                f"{source}: setting '{key}' = {value!r}{hint}; choose one of {', '.join(map(str, choices))}"
            ) from None
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            fail()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                fail()
            return tuple(_coerce(v, a, key=key, source=source) for v, a in zip(value, args, strict=True))
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, key=key, source=source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        fail()
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail()
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail()
        fail()
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        fail()
    if annotation in (Path,):
        if isinstance(value, str):
            return Path(value)
        fail()
    return value
