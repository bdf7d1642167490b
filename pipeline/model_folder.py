"""The self-contained model folder written by training and read by prediction and the web service.

::

    RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration>/
        plans.json  dataset.json  fingerprint.json  trainer_config.yaml
        fold_K/checkpoint_{best,final,latest}.pt  progress.png  training_log.txt
        fold_K/postprocessing.json  fold_K/validation/summary.json
        fold_K/member_M/checkpoint_{best,final,latest}.pt  training_log.txt   (further ensemble members, M >= 1)

Checkpoints hold the trainable weights only; the frozen backbone comes from its verified weights
file, and a checkpoint made with another backbone (different checksum) is refused.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import torch

from autoprompt.devices import Precision
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
from autoprompt.modeling.backbone import SamBackbone, backbone_windows
from autoprompt.modeling.build import build_autoprompt_sam, load_configured_backbone
from autoprompt.modeling.encoder_quantization import FOLDER_NAME as INT8_FOLDER_NAME
from autoprompt.modeling.encoder_quantization import int8_encoder_for
from pipeline.checkpoint import checkpoint_path, load_checkpoint
from pipeline.files import atomic_path, load_json
from pipeline.trainer_config import TrainerConfig, load_trainer_config, save_trainer_config
from planners.plans import Plans

REQUIRED_FILES = ("plans.json", "dataset.json", "fingerprint.json", "trainer_config.yaml")
_FOLD_DIR = re.compile(r"^fold_(\d+|all)$")
_MEMBER_DIR = re.compile(r"^member_[1-9]\d*$")


def model_folder_path(
    results_root: str | Path, dataset_folder_name: str, preset_name: str, configuration: str
) -> Path:
    """``RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration>``."""
    return Path(results_root) / dataset_folder_name / f"autoprompt__{preset_name}__{configuration}"


def parse_fold(fold: int | str) -> int | str:
    """``0``, ``"3"`` -> int; ``"all"`` -> ``"all"``; anything else is an error."""
    text = str(fold).strip()
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise AutoPromptError(f"fold '{fold}' is not a number (0-4) or 'all'; pass e.g. 0")


class ModelFolder:
    """A trained (or training) model folder.

    Attributes:
        path: the folder.
        plans: the dataset's plans at training time.
        dataset_json: the dataset's ``dataset.json``.
        fingerprint: the dataset fingerprint.
        trainer_config: the configuration the folds were trained with.
        configuration: the plans configuration ("2d" or "3d").
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise AutoPromptError(
                f"{self.path}: model folder not found; train a model first ('autoprompt train DATASET FOLD') "
                "or point --results/--model-dir at the folder it wrote"
            )
        for name in REQUIRED_FILES:
            if not (self.path / name).is_file():
                raise AutoPromptError(
                    f"{self.path}: not an autoprompt model folder ({name} is missing); pass the folder that "
                    "'autoprompt train' wrote (RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration>)"
                )
        self.plans = Plans.load(self.path / "plans.json")
        self.dataset_json = load_json(self.path / "dataset.json")
        self.fingerprint = load_json(self.path / "fingerprint.json")
        self.trainer_config: TrainerConfig = load_trainer_config(self.path / "trainer_config.yaml")
        self.configuration = self.trainer_config.configuration
        self.plans.configuration(self.configuration)  # error now if the plans lack it
        self._metadata: dict[Path, dict] = {}  # checkpoint file -> its metadata, once loaded

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r}, configuration={self.configuration!r})"

    def fold_dir(self, fold: int | str) -> Path:
        """``path / f"fold_{fold}"``."""
        return self.path / f"fold_{parse_fold(fold)}"

    def member_dir(self, fold: int | str, member: int) -> Path:
        """Where ensemble member ``member`` of ``fold`` trains: the fold's folder for member 0, else
        ``fold_K/member_M`` (:attr:`~pipeline.trainer_config.TrainerConfig.ensemble_members`)."""
        fold_dir = self.fold_dir(fold)
        return fold_dir if member == 0 else fold_dir / f"member_{member}"

    def member_dirs(self, fold: int | str, checkpoint: str = "best") -> list[Path]:
        """The folders of the ensemble members of ``fold`` to predict with: the fold's own folder, then each
        further member that finished training (``checkpoint_final.pt``) and has ``checkpoint_<checkpoint>.pt``."""
        fold_dir = self.fold_dir(fold)
        finished = [
            path
            for path in fold_dir.glob("member_*")
            if _MEMBER_DIR.match(path.name)
            and checkpoint_path(path, "final").is_file()
            and checkpoint_path(path, checkpoint).is_file()
        ]
        return [fold_dir, *sorted(finished, key=lambda path: int(path.name.split("_")[1]))]

    def trained_folds(self, checkpoint: str = "best") -> list[int | str]:
        """Folds with a ``checkpoint_<checkpoint>.pt``, numbers first (sorted), then ``"all"``."""
        folds: list[int | str] = []
        for child in self.path.iterdir():
            match = _FOLD_DIR.match(child.name)
            if match and checkpoint_path(child, checkpoint).is_file():
                folds.append(parse_fold(match.group(1)))
        return sorted(folds, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0))

    def window(self) -> int:
        """S, the side of the windows this folder's configuration is planned for (the backbone is built for it).

        Raises:
            AutoPromptError: the plans' windows are not ones the model config's backbone takes (planned for
                another backbone).
        """
        rows, cols = self.plans.configuration(self.configuration).window_size
        backbone = self.trainer_config.model.backbone
        if rows != cols or rows not in backbone_windows(backbone):
            raise AutoPromptError(
                f"{self.path / 'plans.json'}: configuration '{self.configuration}' has {rows} x {cols} windows, "
                f"which backbone {backbone} does not take; plan the dataset for it "
                f"('autoprompt plan-and-preprocess -d {self.plans.dataset_name} --backbone {backbone} "
                "--overwrite-plans') and train again"
            )
        return rows

    def build_model(
        self, *, device: str | torch.device, backbone: SamBackbone | None = None
    ) -> AutoPromptSAM:
        """A freshly initialised model for this folder's plans and config, in eval mode on ``device``.

        Args:
            backbone: a loaded backbone to share (e.g. one backbone for all folds of an ensemble), built for
                the plans' windows (:meth:`window`); loaded (and checksum-verified) from the model config
                when None.

        Raises:
            AutoPromptError: the plans' windows are not ones the backbone takes (planned for another backbone).
        """
        plan = self.plans.configuration(self.configuration)
        model_config = self.trainer_config.model
        window = self.window()
        if backbone is None:
            backbone = load_configured_backbone(model_config, window=window)
        elif backbone.model_input_size != window:
            raise ValueError(
                f"the backbone given takes {backbone.model_input_size} x {backbone.model_input_size} windows, "
                f"but {self.path / 'plans.json'} plans {window} x {window}; load it with window={window}"
            )
        model = build_autoprompt_sam(
            model_config,
            num_classes=self.plans.num_foreground_classes,
            in_channels=len(self.plans.channel_names),
            stack_depth=plan.stack_depth,
            backbone=backbone,
        )
        return model.to(torch.device(device)).eval()

    def load_model(
        self,
        fold: int | str,
        *,
        checkpoint: str = "best",
        device: str | torch.device,
        backbone: SamBackbone | None = None,
    ) -> AutoPromptSAM:
        """The model of ``fold`` (its own folder: ensemble member 0) with the trainable weights of
        ``checkpoint_<checkpoint>.pt`` loaded.

        Raises:
            AutoPromptError: missing checkpoint, or one made with a different backbone ("incompatible
                model": the installed backbone's checksum differs from the one trained on).
        """
        path = checkpoint_path(self.fold_dir(fold), checkpoint)
        if not path.is_file():
            trained = ", ".join(map(str, self.trained_folds(checkpoint))) or "none"
            raise AutoPromptError(
                f"{path}: checkpoint not found (folds with checkpoint_{checkpoint}.pt: {trained}); "
                f"train it with 'autoprompt train' or choose trained folds"
            )
        return self.load_checkpoint_file(path, device=device, backbone=backbone)

    def load_models(
        self,
        fold: int | str,
        *,
        checkpoint: str = "best",
        device: str | torch.device,
        backbone: SamBackbone | None = None,
    ) -> list[AutoPromptSAM]:
        """The models of all ensemble members of ``fold`` (:meth:`member_dirs`), the fold's own first.

        Raises:
            AutoPromptError: as :meth:`load_model`.
        """
        first = self.load_model(fold, checkpoint=checkpoint, device=device, backbone=backbone)
        backbone = first.backbone if backbone is None else backbone
        further = self.member_dirs(fold, checkpoint)[1:]
        return [
            first,
            *(
                self.load_checkpoint_file(checkpoint_path(path, checkpoint), device=device, backbone=backbone)
                for path in further
            ),
        ]

    def load_checkpoint_file(
        self, path: Path, *, device: str | torch.device, backbone: SamBackbone | None
    ) -> AutoPromptSAM:
        """A model with the trainable weights of the checkpoint file ``path`` (its backbone checked)."""
        state = load_checkpoint(path)
        self._metadata[path] = state["metadata"]
        model = self.build_model(device=device, backbone=backbone)
        trained_on = state["metadata"]["backbone_checksum"]
        installed = model.backbone.checksum
        if trained_on != installed:
            raise AutoPromptError(
                f"{path}: incompatible model: trained on backbone {state['metadata']['backbone']} with checksum "
                f"{trained_on[:12]}..., but the installed backbone has {installed[:12]}...; install the backbone "
                "weights it was trained with or retrain"
            )
        model.load_trainable_state_dict(state["model"])
        return model.eval()

    def mirror_augmented(self, fold: int | str, checkpoint: str = "best") -> bool:
        """Whether ``fold`` was trained with mirror augmentation (its checkpoint's metadata says so).

        Mirroring TTA only helps such models: one trained on cached embeddings never saw mirrored anatomy.
        """
        return bool(self._checkpoint_metadata(fold, checkpoint).get("mirror_augmented", False))

    def trained_on_cached_views(self, fold: int | str, checkpoint: str = "best") -> bool:
        """Whether ``fold`` was trained on augmented views in the embedding cache (its metadata's ``views``)."""
        return self._checkpoint_metadata(fold, checkpoint).get("views") is not None

    @property
    def int8_encoder_folder(self) -> Path:
        """Where training writes the int8 copy of the frozen image encoder
        (:mod:`autoprompt.modeling.encoder_quantization`), one for all folds."""
        return self.path / INT8_FOLDER_NAME

    def int8_encoder(self, backbone: SamBackbone) -> Path | None:
        """The ``encoder.xml`` of this folder's int8 encoder if it was made from ``backbone``'s encoder for
        its windows, else None (none written, or a model folder from before int8 encoders)."""
        return int8_encoder_for(
            self.int8_encoder_folder, backbone.image_encoder, input_size=backbone.model_input_size
        )

    def trained_precision(self, fold: int | str, checkpoint: str = "best") -> Precision:
        """The precision ``fold``'s network saw its image embeddings in during training (``auto`` resolved).

        A network trained on bf16 embeddings predicts best from bf16 embeddings. Checkpoints record it;
        older ones name it in their trainer config, where ``auto`` then meant fp32.
        """
        metadata = self._checkpoint_metadata(fold, checkpoint)
        if "encoder_precision" in metadata:
            return Precision(metadata["encoder_precision"])
        configured = metadata.get("trainer_config", {}).get("encoder_precision", "auto")
        return Precision.FP32 if configured == "auto" else Precision(configured)

    def _checkpoint_metadata(self, fold: int | str, checkpoint: str) -> dict:
        """The metadata :meth:`load_model` kept, or loaded from the checkpoint when the fold was not loaded."""
        path = checkpoint_path(self.fold_dir(fold), checkpoint)
        if path not in self._metadata:
            self._metadata[path] = load_checkpoint(path)["metadata"]
        return self._metadata[path]

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        plans_file: str | Path,
        dataset_json_file: str | Path,
        fingerprint_file: str | Path,
        trainer_config: TrainerConfig,
        configuration: str,
    ) -> ModelFolder:
        """Create (or re-open) a model folder, copying the dataset's plan files into it.

        Re-opening a folder that already holds trained folds is allowed only with the same plans and
        model config (another fold, or a resume); other hyperparameters may differ per fold (each
        checkpoint records its own trainer config).

        Raises:
            AutoPromptError: the folder has trained folds with different plans or model config.
        """
        path = Path(path)
        trainer_config = _with_configuration(trainer_config, configuration)
        if (path / "trainer_config.yaml").is_file() and (path / "plans.json").is_file():
            existing = cls(path)
            if existing.trained_folds("latest"):
                same_plans = existing.plans.to_dict() == Plans.load(plans_file).to_dict()
                same_model = existing.trainer_config.model == trainer_config.model
                if not (same_plans and same_model):
                    what = "plans" if not same_plans else "model config"
                    raise AutoPromptError(
                        f"{path}: holds folds trained with different {what}; train into another folder "
                        "(another --config name or --results) or delete the old folder"
                    )
        path.mkdir(parents=True, exist_ok=True)
        for source, name in (
            (plans_file, "plans.json"),
            (dataset_json_file, "dataset.json"),
            (fingerprint_file, "fingerprint.json"),
        ):
            with atomic_path(path / name) as tmp:
                shutil.copyfile(source, tmp)
        save_trainer_config(trainer_config, path / "trainer_config.yaml")
        return cls(path)


def _with_configuration(config: TrainerConfig, configuration: str) -> TrainerConfig:
    return (
        config
        if config.configuration == configuration
        else dataclasses.replace(config, configuration=configuration)
    )
