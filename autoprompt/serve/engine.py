"""The service's models: the trained fold ensemble (loaded by each job worker process, which reports the
load to the server's :class:`Engine`) and, for box mode, the pretrained promptable SAM of the same backbone
(loaded in the server process on the first box)."""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprompt.errors import AutoPromptError
from autoprompt.serve.render import class_colors
from autoprompt.serve.settings import ServeSettings
from pipeline.inference.case_cost import CaseCost, CaseLimits, check_case, estimate_case_cost
from pipeline.io import Geometry, ImageInfo
from pipeline.model_folder import ModelFolder, parse_fold

if TYPE_CHECKING:
    from autoprompt.interactive.predictor import InteractivePredictor
    from pipeline.inference.predictor import Prediction, Predictor


@dataclass(frozen=True)
class ClassInfo:
    """A foreground class of the model: label value, name from dataset.json and display colour."""

    label: int
    name: str
    color: str


class Engine:
    """The trained model of one model folder: its classes and limits, and the fold ensemble, loaded once.

    The job worker processes each build one and load the ensemble; the server's engine loads none for jobs
    and learns of theirs through :meth:`worker_loaded` (so :attr:`loaded`, :attr:`load_error` and
    :attr:`tta` describe the workers' model).

    Args:
        settings: the service settings (model folder, folds, checkpoint, device, TTA).

    Raises:
        AutoPromptError: not a model folder, no trained fold, a fold without the checkpoint, or a
            model that needs more than one input channel (the page takes one file per scan).
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.folder = ModelFolder(settings.model_dir)
        trained = self.folder.trained_folds(settings.checkpoint)
        self.folds = [parse_fold(fold) for fold in settings.folds] if settings.folds else trained
        if not self.folds:
            raise AutoPromptError(
                f"{self.folder.path}: no fold has checkpoint_{settings.checkpoint}.pt; train one first "
                "('autoprompt train DATASET FOLD') or choose another --checkpoint"
            )
        missing = [fold for fold in self.folds if fold not in trained]
        if missing:
            raise AutoPromptError(
                f"{self.folder.path}: fold(s) {', '.join(map(str, missing))} have no checkpoint_{settings.checkpoint}.pt "
                f"(trained: {', '.join(map(str, trained)) or 'none'}); choose trained folds"
            )
        channels = len(self.folder.plans.channel_names)
        if channels != 1:
            raise AutoPromptError(
                f"{self.folder.path}: the model takes {channels} input channels, the web service one file per scan; "
                "use 'autoprompt predict' for multi-channel cases"
            )
        labels = {int(value): name for name, value in self.folder.dataset_json["labels"].items()}
        colors = class_colors(list(labels))
        self.classes = [
            ClassInfo(label=value, name=labels[value], color=colors[value]) for value in sorted(colors)
        ]
        self._predictor: Predictor | None = None
        self._interactive: InteractivePredictor | None = None
        self._interactive_key: tuple | None = None
        self._load_lock = threading.Lock()
        self._box_lock = threading.Lock()
        self.load_error: str | None = None
        self._loaded_by_worker = False
        self.limits = CaseLimits(
            max_memory_gb=settings.max_case_memory_gb, max_windows=settings.max_case_windows
        )
        self._tta: bool | None = settings.tta

    @property
    def backbone_name(self) -> str:
        return self.folder.trainer_config.model.backbone

    @property
    def loaded(self) -> bool:
        return self._predictor is not None or self._loaded_by_worker

    def worker_loaded(self, *, error: str | None, tta: bool | None) -> None:
        """Record a job worker process's model load: ``error`` if it failed, else the ``tta`` it predicts with."""
        if error is None:
            self._loaded_by_worker, self._tta, self.load_error = True, tta, None
        else:
            self._loaded_by_worker, self.load_error = False, error

    def info(self) -> dict[str, Any]:
        """What ``GET /api/model`` reports."""
        return {
            "dataset": self.folder.plans.dataset_name,
            "model_folder": self.folder.path.name,
            "configuration": self.folder.configuration,
            "folds": [str(fold) for fold in self.folds],
            "checkpoint": self.settings.checkpoint,
            "backbone": self.backbone_name,
            "tta": self.tta if self.loaded else self.settings.tta,
            "decoding": dict(self.settings.decoding),
            "channels": list(self.folder.plans.channel_names.values()),
            "classes": [vars(info) for info in self.classes],
            "max_upload_mb": self.settings.max_upload_mb,
            "max_case_memory_gb": self.limits.max_memory_gb,
            "max_case_windows": self.limits.max_windows,
            "max_queued_jobs": self.settings.max_queued_jobs,
            "max_jobs_disk_gb": self.settings.max_jobs_disk_gb,
            "loaded": self.loaded,
            "load_error": self.load_error,
        }

    def predictor(self) -> Predictor:
        """The fold ensemble, loaded on the first call and kept."""
        with self._load_lock:
            if self._predictor is None:
                from pipeline.inference.predictor import Predictor

                try:
                    self._predictor = Predictor.from_model_folder(
                        self.folder.path,
                        folds=self.folds,
                        checkpoint=self.settings.checkpoint,
                        device=self.settings.device,
                        tta=self.settings.tta,
                        decoding=self.settings.decoding,
                    )
                except Exception as error:
                    known = isinstance(error, AutoPromptError)
                    self.load_error = str(error) if known else f"{type(error).__name__}: {error}"
                    raise
            return self._predictor

    def predict(self, image_file: Path) -> Prediction:
        """Segment one single-channel image file or DICOM series folder (refused over :attr:`limits`)."""
        predictor = self.predictor()
        predictor.limits = self.limits
        return predictor.predict_case([image_file])

    def check_case(self, image_file: Path) -> CaseCost:
        """The cost of predicting ``image_file``, from its header; refused over :attr:`limits`.

        Raises:
            CaseTooLarge: over the limits (HTTP 422).
            AutoPromptError: an unreadable header or a 4D image.
        """
        return check_case(
            [image_file],
            self.folder.plans,
            self.folder.configuration,
            tta=self.tta,
            limits=self.limits,
            zoom=self.folder.trainer_config.zoom.second_pass,
        )

    def prepare_checks(self) -> None:
        """Import what :meth:`check_case` needs (nnU-Net's resampling rule, which brings pandas) by estimating
        a one-pixel picture: the server does this at start-up, not in its first upload."""
        pixel = Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), size=(1, 1))
        plans, configuration = self.folder.plans, self.folder.configuration
        estimate_case_cost([ImageInfo(pixel, components=1, itemsize=1)], plans, configuration, tta=False)

    @property
    def tta(self) -> bool:
        """Whether predictions use mirroring TTA: the setting, else what the folds were trained with."""
        if self._predictor is not None:
            return self._predictor.tta
        if self._tta is None:
            self._tta = all(
                self.folder.mirror_augmented(fold, self.settings.checkpoint) for fold in self.folds
            )
        return self._tta

    def segment_box(
        self, key: tuple, pixels: np.ndarray, box: list[float], *, intensity_range: tuple[float, float] | None
    ) -> np.ndarray:
        """Promptable segmentation of the object in ``box`` on one slice, with the pretrained backbone.

        The slice's embedding is kept, so further boxes on the same slice (same ``key``) cost only the
        prompt encoder and mask decoder.

        Args:
            key: identifies the slice (job id, slice index).
            pixels: ``Y x X`` slice intensities.
            box: ``[x_min, y_min, x_max, y_max]`` in pixels of ``pixels`` (x = column, y = row).
            intensity_range: clipping range of the whole scan (None: min-max only, for 8-bit pictures).

        Returns:
            ``Y x X`` bool mask.

        Raises:
            AutoPromptError: a box outside the slice or with swapped corners.
        """
        from autoprompt.interactive.predictor import InteractivePredictor
        from autoprompt.modeling.build import load_configured_backbone

        with self._box_lock:
            if self._interactive is None:
                model = self.folder.trainer_config.model
                backbone = load_configured_backbone(model)
                self._interactive = InteractivePredictor(backbone, device=self.settings.device)
                gc.freeze()  # the backbone and its imports stay: out of the cyclic collector's full walks
            if self._interactive_key != key:
                self._interactive.set_image(pixels, intensity_range=intensity_range)
                self._interactive_key = key
            return self._interactive.predict(box=box).mask
