"""``train``: the Python API of ``autoprompt train`` (exported as :func:`autoprompt.api.train`).

from autoprompt import api
result = api.train(27, 0, preprocessed="autoprompt_data/preprocessed", results="autoprompt_data/results",
                   configuration="2d", epochs=4, iterations_per_epoch=25)
result.model_folder      # RESULTS/Dataset027_ACDC/autoprompt__2d_frozen__2d
result.validation        # fold_0/validation/summary.json content
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from autoprompt.devices import resolve_device
from autoprompt.errors import AutoPromptError
from autoprompt.paths import dataset_folder_name
from pipeline.model_folder import ModelFolder, model_folder_path, parse_fold
from pipeline.training.config import DEFAULT_PRESETS, load_trainer_config, preset_name, preset_path
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
    """Train one fold of a planned and preprocessed dataset.

    Args:
        dataset: id (``27``) or folder name (``Dataset027_ACDC``) under ``preprocessed``.
        fold: 0-4 (the folds of ``splits_final.json``) or ``"all"``.
        preprocessed: the preprocessed root (holding ``DatasetXXX_Name/plans.json``).
        results: the results root; the model folder is
            ``results/DatasetXXX_Name/autoprompt__<preset>__<configuration>``.
        configuration: ``"2d"`` or ``"3d"``; None -> the preset's own (``"2d"`` without a preset).
        config: a preset name (``configs/NAME.yaml``) or a YAML path; None -> ``2d_frozen`` for 2d,
            ``3d_adapter`` for 3d.
        overrides: ``"key=value"`` settings on top of the preset (``"model.adapter_dim=16"``).
        epochs, iterations_per_epoch, time_budget_minutes, seed: shortcuts for those overrides.
        device: ``auto``, ``cpu``, ``cuda`` or a ``torch.device``.
        resume: continue from ``fold_K/checkpoint_latest.pt``.
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
    if config is None:
        config = DEFAULT_PRESETS.get(configuration or "2d")
        if config is None:
            raise AutoPromptError(
                f"no default preset for configuration '{configuration}'; pass --config NAME"
            )
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
    if dist.world_size > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        torch_device = (
            torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
    else:
        torch_device = device if isinstance(device, torch.device) else resolve_device(device)

    folder_path = model_folder_path(results, name, preset_name(preset_path(config)), configuration)
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
    try:
        return Trainer(
            model_folder=model_folder,
            fold=fold,
            config=trainer_config,
            preprocessed_dataset=dataset_dir,
            device=torch_device,
            resume=resume,
            raw_labels_folder=raw_labels if raw_labels is not None and raw_labels.is_dir() else None,
            distributed=dist,
        ).run()
    finally:
        if dist.world_size > 1:
            torch.distributed.destroy_process_group()
