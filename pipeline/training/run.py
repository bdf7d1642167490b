"""``train``: the Python API of ``autoprompt train`` (exported as :func:`autoprompt.api.train`).

from autoprompt import api
result = api.train(27, 0, preprocessed="autoprompt_data/preprocessed", results="autoprompt_data/results",
                   configuration="2d", epochs=4, iterations_per_epoch=25)
result.model_folder      # RESULTS/Dataset027_ACDC/autoprompt__2d_frozen__2d
result.validation        # fold_0/validation/summary.json content
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from autoprompt.devices import resolve_device
from autoprompt.errors import AutoPromptError
from autoprompt.paths import dataset_folder_name
from pipeline.checkpoint import checkpoint_path, load_checkpoint
from pipeline.files import atomic_path
from pipeline.model_folder import REQUIRED_FILES, ModelFolder, model_folder_path, parse_fold
from pipeline.trainer_config import (
    DEFAULT_PRESETS,
    default_preset,
    load_trainer_config,
    preset_name,
    preset_path,
)
from pipeline.training.trainer import DistributedContext, Trainer, TrainingResult


def train(
    dataset: str | int,
    fold: int | str,
    *,
    preprocessed: str | Path,
    results: str | Path,
    configuration: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    time_budget_minutes: float | None = None,
    seed: int | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    raw: str | Path | None = None,
    distributed: DistributedContext | None = None,
) -> TrainingResult:
    """Train one fold of a planned and preprocessed dataset (with its further ensemble members, when the step
    limit leaves room for them: ``TrainerConfig.ensemble_members``; the result then sums their epochs and steps).

    Args:
        dataset: id (``27``) or folder name (``Dataset027_ACDC``) under ``preprocessed``.
        fold: 0-4 (the folds of ``splits_final.json``) or ``"all"``.
        preprocessed: the preprocessed root (holding ``DatasetXXX_Name/plans.json``).
        results: the results root; the model folder is
            ``results/DatasetXXX_Name/autoprompt__<preset>__<configuration>``.
        configuration: ``"2d"`` or ``"3d"``; None -> the preset's own (``"2d"`` without a preset).
        config: a preset name (``configs/NAME.yaml``) or a YAML path; None -> ``2d_frozen`` for 2d,
            for 3d ``3d_adapter`` on a CUDA device, else ``3d_frozen``
            (:func:`pipeline.trainer_config.default_preset`).
        overrides: ``"key=value"`` settings on top of the preset (``"model.adapter_dim=16"``).
        epochs, iterations_per_epoch, time_budget_minutes, seed: shortcuts for those overrides.
        device: ``auto``, ``cpu``, ``cuda`` or a ``torch.device``; under torchrun a CUDA device means the GPU
            of each process's local rank (NCCL), ``cpu`` CPU processes (gloo).
        resume: continue from ``fold_K/checkpoint_latest.pt`` (and an interrupted ensemble member's).
        raw: the raw root; when it holds the dataset, the final validation compares with its ``labelsTr``.
        distributed: the torchrun context (set by the CLI under ``torchrun``).

    Raises:
        AutoPromptError: unplanned dataset, unknown configuration/preset/setting, bad fold, an existing
            run without ``resume``, and the other user mistakes named in the message.
    """
    preprocessed, results = Path(preprocessed), Path(results)
    name = dataset_folder_name(dataset, preprocessed)
    dataset_dir = preprocessed / name
    for required in ("plans.json", "dataset.json", "fingerprint.json", "splits_final.json"):
        if not (dataset_dir / required).is_file():
            raise AutoPromptError(
                f"{dataset_dir / required}: missing; run 'autoprompt plan-and-preprocess -d {dataset}' first"
            )
    fold = parse_fold(fold)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    if config is None:
        if configuration not in (None, *DEFAULT_PRESETS):
            raise AutoPromptError(
                f"no default preset for configuration '{configuration}'; pass --config NAME"
            )
        config = default_preset(configuration or "2d", torch_device.type)
    shortcuts = {
        "epochs": epochs,
        "iterations_per_epoch": iterations_per_epoch,
        "time_budget_minutes": time_budget_minutes,
        "seed": seed,
    }
    all_overrides = [*overrides, *(f"{key}={value}" for key, value in shortcuts.items() if value is not None)]
    if configuration is not None:
        all_overrides.append(f"configuration={configuration}")
    trainer_config = load_trainer_config(config, all_overrides)
    configuration = trainer_config.configuration

    dist = distributed or DistributedContext()
    if dist.world_size > 1:  # one GPU per process (its local rank), or CPU processes over gloo
        cuda = torch_device.type == "cuda"
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
        torch_device = torch.device(f"cuda:{dist.local_rank}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(torch_device)

    folder_path = model_folder_path(results, name, preset_name(preset_path(config)), configuration)
    fold_dir = folder_path / f"fold_{fold}"
    if resume and _asks_for_epochs(epochs, overrides):
        _check_resumed_epochs(fold_dir, trainer_config.epochs)
    guard = _ModelFolderGuard(folder_path, fold_dir) if dist.is_main else None
    try:
        if dist.is_main:
            model_folder = ModelFolder.create(
                folder_path,
                plans_file=dataset_dir / "plans.json",
                dataset_json_file=dataset_dir / "dataset.json",
                fingerprint_file=dataset_dir / "fingerprint.json",
                trainer_config=trainer_config,
                configuration=configuration,
            )
        if dist.world_size > 1:
            torch.distributed.barrier()
            model_folder = ModelFolder(folder_path) if not dist.is_main else model_folder
        raw_labels = Path(raw) / name / "labelsTr" if raw is not None else None
        run = {
            "model_folder": model_folder,
            "fold": fold,
            "preprocessed_dataset": dataset_dir,
            "device": torch_device,
            "resume": resume,
            "raw_labels_folder": raw_labels if raw_labels is not None and raw_labels.is_dir() else None,
            "distributed": dist,
        }
        results = [Trainer(config=trainer_config, **run).run()]
        for member in range(1, results[0].members):  # members decided by the first (ensemble_members)
            member_config = dataclasses.replace(trainer_config, seed=trainer_config.seed + member)
            results.append(
                Trainer(config=member_config, member=member, members=results[0].members, **run).run()
            )
        return _ensemble_result(results)
    except BaseException as error:
        trained = guard is not None and guard.trained()
        if guard is not None and not trained:
            guard.restore()  # a run that failed before its first checkpoint leaves the folder as it was
        if isinstance(error, OSError) and error.errno in _WRITE_ERRORS:
            where = error.filename or folder_path
            again = "run the same command with --resume" if trained else "run the same command again"
            raise AutoPromptError(
                f"{where}: cannot write ({error.strerror}); free disk space or make {results} writable, then {again}"
            ) from error
        raise
    finally:
        if dist.world_size > 1 and torch.distributed.is_initialized():  # the trainer leaves it after training
            torch.distributed.destroy_process_group()


_WRITE_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EEXIST,
}
"""OSErrors of a results folder that cannot be written (read-only, full, or a file where a folder belongs)."""


def _ensemble_result(results: Sequence[TrainingResult]) -> TrainingResult:
    """One result for a fold's ensemble members: epochs, steps and timings summed, the last member's final
    validation, the rest member 0's."""
    if len(results) == 1:
        return results[0]
    return dataclasses.replace(
        results[0],
        epochs=sum(result.epochs for result in results),
        steps=sum(result.steps for result in results),
        validation=results[-1].validation,
        timings={key: sum(result.timings.get(key, 0.0) for result in results) for key in results[0].timings},
    )


def _asks_for_epochs(epochs: int | None, overrides: Sequence[str]) -> bool:
    return epochs is not None or any(item.split("=", 1)[0].strip() == "epochs" for item in overrides)


def _check_resumed_epochs(fold_dir: Path, epochs: int) -> None:
    """Refuse ``--resume`` with an ``--epochs`` other than the run's: the saved plan would win silently.

    Raises:
        AutoPromptError: naming the checkpoint, both numbers and the fix.
    """
    latest = checkpoint_path(fold_dir, "latest")
    if not latest.is_file():
        return
    saved = load_checkpoint(latest)["metadata"].get("trainer_config", {}).get("epochs")
    if saved is not None and saved != epochs:
        raise AutoPromptError(
            f"{latest}: this run was planned for {saved} epochs and --resume continues that plan, so --epochs "
            f"{epochs} would be ignored; resume without --epochs, or delete {fold_dir} to train {epochs} epochs "
            "from the start"
        )


class _ModelFolderGuard:
    """What a model folder held before a training run, to put it back if the run fails before its first
    checkpoint (a wrong fold, a bad setting, a full disk): no rewritten trainer_config.yaml, no empty skeleton.

    Args:
        folder: the model folder.
        fold_dir: the fold's folder in it.
    """

    def __init__(self, folder: Path, fold_dir: Path) -> None:
        self.folder = folder
        self.fold_dir = fold_dir
        self.files = {
            name: (folder / name).read_bytes() if (folder / name).is_file() else None
            for name in REQUIRED_FILES
        }
        self.new_folders = []  # folders this run may create, innermost first
        path = fold_dir
        while not path.exists() and path != path.parent:
            self.new_folders.append(path)
            path = path.parent
        self.latest = self._latest_stamp()

    def _latest_stamp(self) -> int | None:
        latest = checkpoint_path(self.fold_dir, "latest")
        return latest.stat().st_mtime_ns if latest.is_file() else None

    def trained(self) -> bool:
        """Whether the run wrote a checkpoint (it can be resumed; nothing is put back then)."""
        return self._latest_stamp() != self.latest

    def restore(self) -> None:
        """Put the model folder's files back and remove the folders the run created (best effort)."""
        other_folds = any(self.folder.glob("fold_*/checkpoint_*.pt"))  # e.g. trained at the same time
        with contextlib.suppress(OSError):
            for name, content in self.files.items():
                path = self.folder / name
                if content is None:
                    if not other_folds:
                        path.unlink(missing_ok=True)
                elif not path.is_file() or path.read_bytes() != content:
                    with atomic_path(path) as tmp:
                        tmp.write_bytes(content)
        for path in self.new_folders:
            if path == self.fold_dir:
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty
