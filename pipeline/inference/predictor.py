"""The Predictor: a trained fold ensemble applied to whole cases.

    predictor = Predictor.from_model_folder(folder, folds="all-trained", device="cpu")
    prediction = predictor.predict_case([Path("case_0000.nii.gz")])   # labels in the input geometry

A case goes through the same ``preprocess_case`` as training, then :func:`sliding_window_slabs` over
its slices (2d: each slice; 3d: half-overlapping stacks of ``D`` slices, Gaussian-blended) with mirroring
TTA, then back to the input geometry (``revert_probability_slices``), argmax and postprocessing.

Memory: the probabilities are never held for the whole case. Each slab of finished slices is reverted to
the input geometry and its argmax written into the label map at once (slices are never resampled, so this
is exactly what reverting the whole case gives); only with ``return_probabilities`` is a ``K+1 x Z x Y x X``
array kept, in float16, and with ``zoom`` the preprocessed case's ``K+1`` probabilities, in float16, between the
first pass and the zoomed second pass over the region of interest (:mod:`pipeline.roi_zoom`).

Speed: the image encoder dominates (see ``benchmarks/inference_speed.py``). When every
fold's encoder is the same frozen backbone (``uses_frozen_encoder`` and one backbone checksum), each
window (and each mirrored window) is encoded ONCE; all folds' prompt generators and decoders then run on
that embedding, and 3d stacks are assembled from the per-slice embeddings instead of re-encoding the
slices of every overlapping stack. Windows are batched and everything runs under ``torch.inference_mode``.
A case's voxels are read once (its headers before that, for the cost check).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from autoprompt.devices import Precision, autocast, resolve_device
from autoprompt.errors import AutoPromptError
from autoprompt.precision import AUTO, int8_encoder_pays, resolve_precision
from autoprompt.progress import is_terminal, progress
from pipeline.inference.case_cost import CaseLimits, check_case
from pipeline.inference.inputs import check_image_content
from pipeline.inference.postprocessing import apply_postprocessing, combine_fold_rules, load_postprocessing
from pipeline.inference.sliding_window import sliding_window_slabs
from pipeline.inference.tta import IN_PLANE_AXES, mirror_axes_for, with_mirroring
from pipeline.io import Geometry
from pipeline.roi_zoom import roi_box, zoom_in, zoom_out
from pipeline.trainer_config import ZoomConfig
from pipeline.windows import DEFAULT_STEP_SIZE
from planners.plans import Plans

if TYPE_CHECKING:
    from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
    from autoprompt.modeling.config import ModelConfig
    from pipeline.model_folder import ModelFolder

ALL_TRAINED = "all-trained"
ZOOM_SLAB = 16
"""Slices per slab handed on after a zoomed prediction (its probabilities are held whole)."""
CPU_BATCH_SIZE = 4
"""Windows per network call on the CPU (decoder, and the encoder when PyTorch runs it): batching barely
speeds a CPU up, and each LiteMedSAM window needs ~230 MiB of PyTorch encoder activations (8 windows:
~1.8 GiB more peak memory)."""


def missing_postprocessing_note(folds: Sequence[int | str]) -> str:
    """The note for an ensemble with folds that have no ``postprocessing.json``: no postprocessing applies."""
    names = ", ".join(map(str, folds))
    has = "has" if len(folds) == 1 else "have"
    why = (
        "it is written at the end of training: by the final validation, for fold all from the training labels"
    )
    return f"note: no postprocessing applied: fold {names} {has} no postprocessing.json ({why})"


DECODING_SETTINGS = (
    "presence_floor",
    "box_refinement",
    "refinement_tolerance",
    "skip_presence_below",
    "inference_region_tokens",
)
"""Model settings that act only at inference, so a trained model may be predicted with other values."""


def use_int8_encoder(
    model_folder: ModelFolder, models: Sequence[AutoPromptSAM], precision: Precision, device: torch.device
) -> list[str]:
    """Give the models' backbones (copies sharing one frozen encoder) the folder's int8 encoder where
    ``auto`` runs it (:func:`int8_encoder_pays`); the notes saying so."""
    xml = model_folder.int8_encoder(models[0].backbone) if int8_encoder_pays(precision, device) else None
    if xml is None:
        return []
    for model in models:
        model.backbone.int8_encoder = xml
    return [
        f"note: the image encoder runs in int8 (this CPU has AVX-512 VNNI but no AMX; "
        f"--precision {precision.value} runs it in {precision.value})"
    ]


def compile_int8_ahead(model_folder: ModelFolder, device: torch.device) -> None:
    """Start compiling the folder's int8 encoder in the background (:func:`compile_ahead`) where ``auto`` is
    about to run it: int8 pays at ``device``'s automatic precision and the folder holds one. Whether it fits
    the backbone is checked once the backbone is loaded (:func:`use_int8_encoder`); an unused compilation
    costs only the background thread's time."""
    from autoprompt.modeling.encoder_quantization import int8_encoder_file
    from autoprompt.modeling.encoder_runtime import compile_ahead

    native = resolve_precision(AUTO, device)
    xml = int8_encoder_file(model_folder.int8_encoder_folder) if int8_encoder_pays(native, device) else None
    if xml is not None:
        compile_ahead(xml, bf16=native == Precision.BF16)


def check_decoding(model_config: ModelConfig, decoding: Mapping[str, float]) -> dict[str, float]:
    """``decoding`` checked by the model settings' own rules (:class:`ModelConfig`), as a dict.

    Raises:
        ValueError: a key not in :data:`DECODING_SETTINGS` (a programming error).
        AutoPromptError: a value out of its range.
    """
    unknown = sorted(set(decoding) - set(DECODING_SETTINGS))
    if unknown:
        raise ValueError(
            f"not decoding settings: {', '.join(unknown)}; choose from {', '.join(DECODING_SETTINGS)}"
        )
    try:
        dataclasses.replace(model_config, **decoding)
    except ValueError as error:
        raise AutoPromptError(str(error)) from None
    return dict(decoding)


def ensemble_precision(trained: Sequence[Precision], device: torch.device) -> Precision:
    """``auto`` for a fold ensemble: the precision its folds were trained in when they agree and ``device``
    computes it natively (fp32, or ``auto``'s precision there); else ``auto``'s precision on ``device``."""
    native = resolve_precision(AUTO, device)
    if len(set(trained)) == 1 and trained[0] in (Precision.FP32, native):
        return trained[0]
    return native


@dataclass
class Prediction:
    """One predicted case in its input geometry.

    Attributes:
        labels: label map ``(Z, Y, X)`` (or ``(Y, X)`` for a 2D image), values from the dataset's labels.
        geometry: the input's geometry (write ``labels`` with it).
        probabilities: ``K+1 x Z x Y x X`` float16 softmax (background first), when asked for.
        coarsening: the in-plane spacing the case was predicted at over the plans' spacing: above 1 when its
            slices were shrunk to fit the window (:func:`~pipeline.preprocessing.prediction_spacing`).
    """

    labels: np.ndarray
    geometry: Geometry
    probabilities: np.ndarray | None = None
    coarsening: float = 1.0


class Predictor:
    """Predicts cases with an ensemble of fold models of one configuration.

    Args:
        models: the fold models (same configuration, classes and stack depth), in eval mode.
        plans: the plans they were trained with.
        configuration: "2d" or "3d".
        device: where the networks run (``torch.device`` or a name such as ``"cpu"``, ``"auto"``).
        tta: mirroring test-time augmentation (one prediction per combination of ``mirror_axes``).
        mirror_axes: the in-plane axes TTA mirrors (``(-2, -1)``, rows and columns: 4 predictions per
            window; ``(-1,)``, columns only: 2).
        precision: "fp32", "bf16" (CPU or CUDA), "fp16" (CUDA) or "auto" (:mod:`autoprompt.precision`)
            for the networks.
        postprocessing: keep-largest-component rules (:mod:`pipeline.inference.postprocessing`); None: none.
        batch_size: windows (2d) or stacks (3d) per network call; None: the plans' batch size on a GPU,
            :data:`CPU_BATCH_SIZE` on the CPU.
        step_size: overlap of in-plane windows on slices larger than the window (0.5: half a window).
        zoom: a second pass over the region of interest (:class:`~pipeline.trainer_config.ZoomConfig`,
            :mod:`pipeline.roi_zoom`); None or not ``second_pass``: one pass. The probabilities of a zoomed case
            are held whole (float16) between the passes.

    Attributes:
        notes: one-line notes for the user on how the models are used (set by :meth:`from_model_folder`,
            e.g. that no postprocessing applies because a fold has no ``postprocessing.json``).
        limits: the most one case may cost (:mod:`pipeline.inference.case_cost`); :meth:`predict_case`
            refuses a larger case from its header, before reading it. None: no limit.
    """

    def __init__(
        self,
        models: Sequence[AutoPromptSAM],
        plans: Plans,
        configuration: str,
        *,
        device: torch.device | str,
        tta: bool = True,
        mirror_axes: tuple[int, ...] = IN_PLANE_AXES,
        precision: str = AUTO,
        postprocessing: dict | None = None,
        batch_size: int | None = None,
        step_size: float = DEFAULT_STEP_SIZE,
        zoom: ZoomConfig | None = None,
    ) -> None:
        if not models:
            raise ValueError("Predictor needs at least one model")
        self.plans = plans
        self.configuration = configuration
        self.plan = plans.configuration(configuration)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.models = [model.to(self.device).eval() for model in models]
        self.tta = tta
        self.mirror_axes = mirror_axes
        self.precision = resolve_precision(precision, self.device)
        self.postprocessing = postprocessing
        self.batch_size = batch_size or (
            self.plan.batch_size if self.device.type == "cuda" else CPU_BATCH_SIZE
        )
        self.step_size = step_size
        self.zoom = zoom if zoom is not None and zoom.second_pass else None
        self.notes: list[str] = []
        self.limits: CaseLimits | None = CaseLimits()
        self.num_outputs = plans.num_foreground_classes + 1
        self.label_values = np.array([0, *sorted(plans.foreground_labels.values())])  # never "ignore"
        depths = {model.stack_depth for model in self.models}
        if depths != {self.plan.stack_depth}:
            raise ValueError(
                f"models have stack depths {sorted(depths)}, the '{configuration}' plan has {self.plan.stack_depth}"
            )
        centre = {model.centre_slice_only for model in self.models}
        if len(centre) > 1:
            raise ValueError(
                "some models decode every slice of a stack, others only the centre slice; ensemble models "
                "trained with the same model.decoded_slices"
            )
        self.centre_slice_only = centre.pop()
        self.shares_encoder = all(model.uses_frozen_encoder for model in self.models) and (
            len({model.backbone.checksum for model in self.models}) == 1
        )

    @classmethod
    def from_model_folder(
        cls,
        folder: str | os.PathLike,
        *,
        folds: Sequence[int | str] | str = ALL_TRAINED,
        checkpoint: str = "best",
        device: torch.device | str = "auto",
        tta: bool | None = None,
        precision: str = AUTO,
        use_postprocessing: bool = True,
        decoding: Mapping[str, float] | None = None,
        zoom: bool | None = None,
    ) -> Predictor:
        """Load the fold models of a model folder written by ``autoprompt train``.

        The backbone is loaded (and checksum-verified) once and shared by all folds. A fold trained as an
        ensemble (``ensemble_members``) brings all its finished members (:meth:`ModelFolder.member_dirs`).

        Args:
            folder: the model folder (``RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration>``).
            folds: fold numbers (and/or ``"all"``), or ``"all-trained"``: every fold with the checkpoint.
            checkpoint: "best", "final" or "latest".
            tta: mirroring test-time augmentation; None: on when every fold was trained with mirror
                augmentation (:meth:`ModelFolder.mirror_augmented`), off otherwise. It flips the columns only
                (:data:`~pipeline.inference.tta.CACHED_VIEWS_MIRROR_AXES`) when every fold was trained on cached views, else rows and
                columns as nnU-Net does.
            precision: as in :class:`Predictor`; ``auto``: the precision the folds were trained in
                (:meth:`ModelFolder.trained_precision`, :func:`ensemble_precision`).
            use_postprocessing: apply the postprocessing steps all used folds agree on (their
                ``fold_K/postprocessing.json``; a fold without one vetoes every step, and ``notes`` says so:
                fold ``all`` never has one, as it has no held-out cases to choose on).
            decoding: overrides of the models' decoding settings, keys from :data:`DECODING_SETTINGS`
                (``model.presence_floor``, ``model.box_refinement``, ``model.refinement_tolerance``,
                ``model.skip_presence_below``, ``model.inference_region_tokens``; see
                :class:`~autoprompt.modeling.config.ModelConfig`); None or a missing key: as trained.
            zoom: the second, zoomed pass over the region of interest on or off (with the trained
                ``zoom`` settings); None: as trained.

        Raises:
            AutoPromptError: missing model folder, fold or checkpoint, a checkpoint trained on
                another backbone, or a decoding value out of its range.
        """
        from autoprompt.modeling.build import load_configured_backbone
        from pipeline.model_folder import ModelFolder, parse_fold

        model_folder = ModelFolder(folder)
        if folds == ALL_TRAINED or folds == [ALL_TRAINED]:
            folds = model_folder.trained_folds(checkpoint)
            if not folds:
                raise AutoPromptError(
                    f"{model_folder.path}: no fold has checkpoint_{checkpoint}.pt yet; train one "
                    "('autoprompt train DATASET FOLD') or choose another --checkpoint"
                )
        folds = [parse_fold(fold) for fold in folds]
        device = device if isinstance(device, torch.device) else resolve_device(device)
        model_config = model_folder.trainer_config.model
        decoding = check_decoding(model_config, decoding or {})
        if precision == AUTO:
            compile_int8_ahead(model_folder, device)  # while the backbone and the folds load
        backbone = load_configured_backbone(model_config, window=model_folder.window())
        fold_models = {
            fold: model_folder.load_models(fold, checkpoint=checkpoint, device=device, backbone=backbone)
            for fold in folds
        }
        models = [model for members in fold_models.values() for model in members]
        for model in models:
            for name, value in decoding.items():
                setattr(model, name, value)
        if tta is None:
            tta = all(model_folder.mirror_augmented(fold, checkpoint) for fold in folds)
        cached_views = all(model_folder.trained_on_cached_views(fold, checkpoint) for fold in folds)
        mirror_axes = mirror_axes_for(cached_views=cached_views)
        notes = [
            f"note: fold {fold} is an ensemble of {len(members)} models (ensemble_members), averaged"
            for fold, members in fold_models.items()
            if len(members) > 1
        ]
        automatic = precision == AUTO
        if automatic:
            trained = [model_folder.trained_precision(fold, checkpoint) for fold in folds]
            precision = ensemble_precision(trained, device)
            if precision not in trained:
                notes.append(
                    f"note: predicting in {precision.value}, the native precision of {device.type}; the folds "
                    f"were trained in {'/'.join(sorted({p.value for p in trained}))} (--precision chooses another)"
                )
        if automatic and all(model.uses_frozen_encoder for model in models):
            notes.extend(use_int8_encoder(model_folder, models, precision, device))
        rules = None
        without_rules: list[int | str] = []
        if use_postprocessing:
            fold_rules = [
                load_postprocessing(model_folder.fold_dir(fold) / "postprocessing.json") for fold in folds
            ]
            rules = combine_fold_rules(fold_rules)
            without_rules = [fold for fold, found in zip(folds, fold_rules, strict=True) if found is None]
        zoom_config = model_folder.trainer_config.zoom
        if zoom is not None:
            zoom_config = dataclasses.replace(zoom_config, second_pass=zoom)
        predictor = cls(
            models,
            model_folder.plans,
            model_folder.configuration,
            device=device,
            tta=tta,
            mirror_axes=mirror_axes,
            precision=precision,
            postprocessing=rules,
            zoom=zoom_config,
        )
        predictor.notes.extend(notes)
        if without_rules:
            predictor.notes.append(missing_postprocessing_note(without_rules))
        return predictor

    def predict_slabs(self, data: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Softmax probabilities of a preprocessed case, a slab of finished slices at a time.

        Args:
            data: ``C x S x H x W`` float32 in [0, 1] (``preprocess_case(...).data``).

        Yields:
            ``(first, probabilities)``: ``K+1 x n x H x W`` float32 (mean over folds and mirrors) of slices
            ``first .. first + n - 1``, in slice order, covering all ``S`` slices once.
        """
        channels = len(self.plans.channel_names)
        if data.ndim != 4 or data.shape[0] != channels:
            raise ValueError(f"expected C x S x H x W data with C = {channels}, got shape {data.shape}")
        images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        passes = 1 if self.zoom is None else 2
        # a long case reports its slices (lines only after a few seconds: small cases stay quiet); on a
        # terminal the bar goes when the case is done, in a log a started case also gets its "done" line
        with progress(
            total=passes * data.shape[1], desc="slices", unit="slice", leave=not is_terminal()
        ) as bar:
            if self.zoom is None:
                for first, slab in self._slabs(images, bar):
                    yield first, slab.numpy()
            else:
                yield from self._zoomed_slabs(images, bar)

    def _slabs(self, images: torch.Tensor, bar) -> Iterator[tuple[int, torch.Tensor]]:
        """One sliding-window pass over ``C x S x h x w`` images: ``(first, K+1 x n x h x w)`` slabs."""
        window_fn = (
            with_mirroring(self._predict_windows, axes=self.mirror_axes)
            if self.tta
            else self._predict_windows
        )
        slabs = sliding_window_slabs(
            images,
            window_fn,
            num_outputs=self.num_outputs,
            window=self.plan.window_size,
            depth=self.plan.stack_depth,
            step_size=self.step_size,
            centre_only=self.centre_slice_only,
        )
        while True:
            with torch.inference_mode():  # not around the yield: the caller's code runs in its own mode
                slab = next(slabs, None)
            if slab is None:
                return
            bar.update(slab[1].shape[1])
            yield slab

    def _zoomed_slabs(self, images: torch.Tensor, bar) -> Iterator[tuple[int, np.ndarray]]:
        """The first pass over the whole case, then the zoomed pass over its region of interest pasted over it
        (:mod:`pipeline.roi_zoom`); yields ``(first, K+1 x n x H x W)`` float32 slabs as :meth:`predict_slabs`."""
        num_slices, height, width = images.shape[1:]
        probabilities = np.empty((self.num_outputs, num_slices, height, width), dtype=np.float16)
        for first, slab in self._slabs(images, bar):
            probabilities[:, first : first + slab.shape[1]] = slab.numpy()
        window = self.plan.window_size
        box = roi_box(
            probabilities.argmax(axis=0) > 0,
            margin=self.zoom.margin,
            window=window,
            max_factor=self.zoom.max_factor,
        )
        if box is None:  # nothing found, or a region nearly as large as the window
            bar.update(num_slices)
        else:
            for first, slab in self._slabs(zoom_in(images, box, window), bar):
                region, (rows, cols) = zoom_out(slab, box, (height, width))
                probabilities[:, first : first + slab.shape[1], rows, cols] = region.numpy()
        for first in range(0, num_slices, ZOOM_SLAB):
            yield first, probabilities[:, first : first + ZOOM_SLAB].astype(np.float32)

    def predict_preprocessed(self, data: np.ndarray) -> np.ndarray:
        """Softmax probabilities of a whole preprocessed case (:meth:`predict_slabs` gathered).

        Args:
            data: ``C x S x H x W`` float32 in [0, 1] (``preprocess_case(...).data``).

        Returns:
            ``K+1 x S x H x W`` float32 probabilities (mean over folds and mirrors).
        """
        probabilities = np.empty((self.num_outputs, *data.shape[1:]), dtype=np.float32)
        for first, slab in self.predict_slabs(data):
            probabilities[:, first : first + slab.shape[1]] = slab
        return probabilities

    def predict_reverted(
        self, data: np.ndarray, properties: dict[str, Any], *, return_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (and probabilities) of a preprocessed case in its input geometry, slab by slab.

        Gives what :func:`~pipeline.preprocessing.revert_probabilities` of :meth:`predict_preprocessed`
        followed by :meth:`labels_from_probabilities` gives, without ever holding ``K+1`` full volumes:
        each slab of finished slices is reverted and its argmax written into the label map.

        Args:
            data: ``C x S x H x W`` float32 in [0, 1] (``preprocess_case(...).data``).
            properties: the case's properties from ``preprocess_case``.
            return_probabilities: also return the probabilities in the input geometry.

        Returns:
            The postprocessed label map ``(Z, Y, X)`` (``(Y, X)`` for a 2D input), and the ``K+1 x Z x Y x X``
            float16 probabilities (background 1 outside the crop) or None.
        """
        from pipeline.preprocessing import revert_probability_slices

        original = properties["original_shape"]
        labels = np.zeros(original, dtype=self._label_dtype)  # label_values[0] is 0, the background
        probabilities = None
        if return_probabilities:
            probabilities = np.zeros((self.num_outputs, *original), dtype=np.float16)
            probabilities[0] = 1.0
        for first, slab in self.predict_slabs(data):
            block, index = revert_probability_slices(slab, properties, first=first)
            labels[index] = self._label_map(block)
            if probabilities is not None:
                probabilities[(slice(None), *index)] = block
        return apply_postprocessing(labels, self.postprocessing), probabilities

    def predict_case(
        self, image_files: Sequence[str | os.PathLike], *, return_probabilities: bool = False
    ) -> Prediction:
        """Predict one case from its image files (one per channel, in channel order).

        Args:
            image_files: the channel files (or one DICOM series folder per channel; or one colour picture
                for a three-channel model, nnU-Net's RGB layout).
            return_probabilities: also return the probabilities in the input geometry (float16).

        Returns:
            The label map (postprocessed) in the input's geometry, and optionally the probabilities.

        Raises:
            AutoPromptError: an unreadable, 4D, empty (one value) or non-finite image, the wrong number of
                channels, or a case over :attr:`limits` (:class:`~pipeline.inference.case_cost.CaseTooLarge`).
        """
        from pipeline.case_io import read_case
        from pipeline.preprocessing import geometry_of, preprocess_case

        image_files = [Path(file) for file in image_files]
        if self.limits is not None:
            check_case(
                image_files,
                self.plans,
                self.configuration,
                tta=self.tta,
                limits=self.limits,
                step_size=self.step_size,
                probabilities=return_probabilities,
                zoom=self.zoom is not None,
            )
        # the one read of the voxels (check_case read the headers only)
        image = read_case(image_files, num_channels=len(self.plans.channel_names))
        for file, values in zip(image_files, np.split(image[0], len(image_files)), strict=True):
            check_image_content(values, file)
        case = preprocess_case(image_files, self.plans, self.configuration, image=image, fit_window=True)
        del image, values  # the voxels as read (``values`` are views of them) are not needed any more
        labels, probabilities = self.predict_reverted(
            case.data, case.properties, return_probabilities=return_probabilities
        )
        predicted_at = case.properties["spacing_after_resampling"][-1]
        return Prediction(
            labels=labels,
            geometry=geometry_of(case.properties),
            probabilities=probabilities,
            coarsening=predicted_at / self.plan.target_spacing[-1],
        )

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Argmax over ``K+1 x ...`` probabilities, mapped to label values, postprocessed (uint8 when labels fit)."""
        return apply_postprocessing(self._label_map(probabilities), self.postprocessing)

    @property
    def _label_dtype(self) -> type[np.integer]:
        return np.uint8 if self.label_values.max() < 256 else np.int16

    def _label_map(self, probabilities: np.ndarray) -> np.ndarray:
        """Argmax over ``K+1 x ...`` probabilities mapped to label values (before postprocessing)."""
        return self.label_values.astype(self._label_dtype)[np.argmax(probabilities, axis=0)]

    def _predict_windows(self, images: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        """Mean softmax of all folds for every slice of each stack.

        Args:
            images: ``n x C x h x w`` consecutive slices cut at one window position (CPU).
            stacks: ``B x D`` indices into ``images``.

        Returns:
            ``B x D x K+1 x h x w`` float32 probabilities on the CPU (``B x 1 x ...``, the centre slices,
            when the models decode only those).
        """
        images = images.to(self.device, non_blocking=True)
        depth = stacks.shape[1]
        with autocast(self.device, self.precision):
            embeddings = self._encode(images) if self.shares_encoder else None
            outputs = []
            for batch in stacks.split(self.batch_size):
                batch = batch.to(self.device)
                window_images = images[batch]  # b x D x C x h x w
                window_embeddings = None if embeddings is None else embeddings[batch]  # b x D x 256 x 64 x 64
                if depth == 1:
                    window_images = window_images[:, 0]
                    window_embeddings = None if window_embeddings is None else window_embeddings[:, 0]
                total = None
                for model in self.models:
                    logits = model(window_images, embeddings=window_embeddings).logits.float()
                    probabilities = torch.softmax(logits, dim=-3)
                    total = probabilities if total is None else total + probabilities
                total = total / len(self.models)
                outputs.append((total[:, None] if depth == 1 else total).cpu())
        return torch.cat(outputs)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen-encoder embeddings ``n x 256 x 64 x 64`` of ``n x C x h x w`` windows.

        A 3d model encodes ``B x D x C x h x w`` stacks, so the windows are grouped ``D`` at a time (the
        last group padded by repeating the last window); the encoder treats every slice on its own. OpenVINO
        takes all windows in one call, so none of its streams waits for a batch's last window; PyTorch
        takes :attr:`batch_size` stacks at a time at most.
        """
        depth = self.plan.stack_depth
        missing = -len(images) % depth
        padded = torch.cat([images, images[-1:].expand(missing, *images.shape[1:])]) if missing else images
        stacks = padded.reshape(-1, depth, *padded.shape[1:])  # n x D x C x h x w
        embeddings = self.models[0].encode(
            stacks[:, 0] if depth == 1 else stacks, batch_size=self.batch_size * depth
        )
        return (embeddings if depth == 1 else embeddings.flatten(0, 1))[: len(images)]
