"""The trainer of one fold: a short ``run`` made of named steps (nnU-Net's ``run_training``, without its size).

    trainer = Trainer(model_folder=..., fold=0, config=..., preprocessed_dataset=..., device=...)
    result = trainer.run()      # setup -> (train_epoch, validate_epoch, on_epoch_end)* -> on_train_end

Per epoch: ``iterations_per_epoch`` AdamW steps (linear warm-up, polynomial decay, gradient clipping,
AMP in :mod:`autoprompt.precision`'s ``auto`` precision), then ``val_iterations`` batches of validation
windows (always the same windows) for the per-class pseudo-Dice (true/false positives summed over all
windows, as nnU-Net); its exponential moving average (0.9 / 0.1, as nnU-Net) picks ``checkpoint_best.pt``.
``checkpoint_latest.pt`` is written after every epoch and a run resumes from it exactly (weights,
optimiser, schedule, RNG states, history; batches depend only on seed, epoch and iteration). At the end:
``checkpoint_final.pt`` and the full validation of the fold (:mod:`pipeline.training.validation`) with the
best weights.

Multi-GPU (or several CPU processes): started by ``torchrun --nproc_per_node=N -m autoprompt.cli train ...``,
every process trains a DDP replica on ``batch_size / N`` windows per step, drawn with its own seed; process
``r`` encodes cases ``r, r + N, ...`` of the embedding cache and its views. Process 0 alone validates, logs
(the losses averaged over the processes) and writes every file. Processes wait for each other only at
:meth:`Trainer._barrier` (a gloo group with a :data:`WAIT_TIMEOUT`, so a long step of one process never
times out the others), and the final validation runs on process 0 after the others have left the group.
"""

from __future__ import annotations

import datetime
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprompt.devices import Precision
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.autoprompt_sam import AutoPromptOutput
from autoprompt.modeling.class_decoder import DecoderRegion
from autoprompt.modeling.config import ModelConfig
from autoprompt.modeling.encoder_quantization import MAX_WINDOW as MAX_INT8_WINDOW
from autoprompt.modeling.encoder_quantization import int8_encoder_digest
from autoprompt.modeling.prompt_generators import channel_argmax
from autoprompt.precision import AUTO, int8_encoder_pays, resolve_precision
from autoprompt.progress import progress
from pipeline.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pipeline.files import save_json
from pipeline.inference.postprocessing import postprocessing_from_labels
from pipeline.inference.predictor import use_int8_encoder
from pipeline.model_folder import ModelFolder
from pipeline.trainer_config import TrainerConfig
from pipeline.training.augmented_views import ViewCache, choose_view_count, view_key_parts
from pipeline.training.data import (
    TRAIN_STREAM,
    VAL_STREAM,
    Batch,
    BatchDataset,
    WindowSampler,
    batch_loader,
    build_augmentation,
    load_training_cases,
)
from pipeline.training.decoder_regions import decoder_regions
from pipeline.training.embedding_cache import EmbeddingCache, cache_key_parts
from pipeline.training.encoder_calibration import quantize_on_cases
from pipeline.training.losses import LOSS_TERMS, AutoPromptLoss
from pipeline.training.optim import (
    WarmupPolySchedule,
    build_optimizer,
    build_scheduler,
    ensemble_size,
    epochs_for_training_windows,
    epochs_in_budget,
    recent_epoch_seconds,
)
from pipeline.training.progress import TrainingLog, epoch_line, plot_progress
from pipeline.training.teacher_prompts import jittered_truth_boxes
from pipeline.training.weight_average import WeightAverage
from planners.planner import MAX_BATCH_SIZE
from planners.plans import ConfigurationPlan

EMA_MOMENTUM = 0.9  # nnU-Net's smoothing of the pseudo-Dice that selects checkpoint_best
# the autocast dtype of each precision in training (None: no autocast)
AMP_DTYPES = {Precision.FP32: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}
BUDGET_PROBE_STEPS = 3  # steps timed at the start of a run (after a warm-up step) to plan a time budget early
BUDGET_REPLANS_PER_EPOCH = 10  # a time budget is planned again this often in a run's first epoch
WAIT_TIMEOUT = datetime.timedelta(hours=24)
"""How long a DDP process waits for the others at a barrier (a cache shard, an epoch's checkpoints)."""
LOSS_SHOWN_EVERY = 10  # steps between the loss shown on the progress bar (each read waits for the GPU)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a ``torchrun`` job (world size 1: a single process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainingPrompts:
    """What a training step adds to the model's inputs (all None: nothing, as in validation).

    Attributes:
        teacher_boxes: ``L x K x 4`` jittered ground-truth boxes, or None.
        teacher_mask: ``L`` bool, which samples use them, or None.
        decoder_region: each window's square for SAM's decoder, or None (whole windows).
    """

    teacher_boxes: torch.Tensor | None = None
    teacher_mask: torch.Tensor | None = None
    decoder_region: DecoderRegion | None = None


@dataclass
class TrainingResult:
    """What a finished training run reports.

    Attributes:
        model_folder: the model folder.
        fold_dir: ``model_folder/fold_K`` (of an ensemble member: ``fold_K/member_M``).
        epochs: epochs trained in total (of a whole ensemble: summed over its members).
        steps: optimiser steps in total (summed likewise).
        best_ema_dice: the best smoothed pseudo-Dice (selects checkpoint_best; of an ensemble: member 0's).
        validation: the final validation summary (None when skipped).
        history: one record per epoch (losses, pseudo-Dice, learning rate, seconds; member 0's).
        timings: seconds spent on ``cache`` (building the embedding cache in this run), ``training``
            (all epochs, including those before a resume) and ``validation`` (the final validation);
            of an ensemble summed over its members.
        members: the models the fold trained (``TrainerConfig.ensemble_members``).
    """

    model_folder: Path
    fold_dir: Path
    epochs: int
    steps: int
    best_ema_dice: float
    validation: dict | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    members: int = 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``TrainerConfig.amp`` on ``device`` (None: full fp32); ``auto`` as
    :func:`autoprompt.precision.resolve_precision` decides (bf16 or fp16 on CUDA, bf16 on CPUs with bf16
    instructions, else none).

    Raises:
        AutoPromptError: fp16 asked for on the CPU.
    """
    if mode == "auto":
        return AMP_DTYPES[resolve_precision(AUTO, device)]
    if mode == "fp16" and device.type != "cuda":
        raise AutoPromptError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=none on the CPU")
    return {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mode]


def encoder_batch_size(device: torch.device) -> int:
    """Windows per PyTorch encoder pass when building the cache (and per network call in the final
    validation; OpenVINO is handed several windows at once either way).

    On the CPU one window at a time is fastest for PyTorch (attention working sets outgrow the caches at
    larger batches; measured by ``benchmarks/model_speed.py``). GPUs want large batches.
    """
    return 1 if device.type == "cpu" else 16


def planned_batch_size(plan: ConfigurationPlan, model: ModelConfig) -> int:
    """Samples per step when the config leaves it to the plans: the plan's batch, except for a model that
    decodes only centre slices, whose decoder memory goes to one window per stack instead of ``D``, so
    it takes ``D`` times as many stacks (at most the planner's largest batch)."""
    if model.decoded_slices == "centre" and plan.stack_depth > 1:
        return min(MAX_BATCH_SIZE, plan.batch_size * plan.stack_depth)
    return plan.batch_size


def describe_views(count: int) -> str:
    """``"3 views per training window (the window, its mirror image, 1 random view)"``."""
    if count == 1:
        return "1 view per training window (the window itself: no augmentation)"
    parts = ["the window", "its mirror image"] + ([f"{count - 2} random view(s)"] if count > 2 else [])
    return f"{count} views per training window ({', '.join(parts)})"


class Trainer:
    """Trains one fold of a model folder.

    Args:
        model_folder: the model folder (created by :meth:`ModelFolder.create`).
        fold: 0-4 or ``"all"`` (all cases train; the pseudo-Dice is then measured on training windows
            and the final validation is skipped).
        config: the trainer config (its ``configuration`` names the plans configuration).
        preprocessed_dataset: ``PREPROCESSED/DatasetXXX_Name`` (plans, splits, cases, embedding cache).
        device: where to train.
        resume: continue from ``fold_K/checkpoint_latest.pt``.
        raw_labels_folder: the raw dataset's ``labelsTr`` (references of the final validation), if any.
        distributed: the torchrun context (default: a single process).
        member: which ensemble member of the fold this run trains (0: the fold's own folder, else
            ``fold_K/member_M``; ``config.seed`` is the member's own).
        members: the fold's ensemble size when ``member`` > 0 (member 0 decides it at its end,
            :func:`~pipeline.training.optim.ensemble_size`); the last member runs the final validation.
    """

    def __init__(
        self,
        *,
        model_folder: ModelFolder,
        fold: int | str,
        config: TrainerConfig,
        preprocessed_dataset: Path,
        device: torch.device,
        resume: bool = False,
        raw_labels_folder: Path | None = None,
        distributed: DistributedContext | None = None,
        member: int = 0,
        members: int = 1,
    ) -> None:
        self.model_folder = model_folder
        self.fold = fold
        self.config = config
        self.preprocessed_dataset = Path(preprocessed_dataset)
        self.device = device
        self.resume = resume
        self.raw_labels_folder = raw_labels_folder
        self.dist = distributed or DistributedContext()
        self.member = member
        self.members = members
        self.fold_dir = model_folder.member_dir(fold, member)
        self.plans = model_folder.plans
        self.plan = self.plans.configuration(config.configuration)
        self.class_names = [
            name for name, _ in sorted(self.plans.foreground_labels.items(), key=lambda kv: kv[1])
        ]
        self.batch_size = max(
            1, (config.batch_size or planned_batch_size(self.plan, config.model)) // self.dist.world_size
        )
        self.amp_dtype = amp_dtype(config.amp, device)
        self.use_scaler = self.amp_dtype is torch.float16
        self.log = TrainingLog(self.fold_dir / "training_log.txt", enabled=self.dist.is_main)
        self._wait_group = (
            torch.distributed.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
            if self.dist.world_size > 1
            else None
        )
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.step = 0
        self.best_ema = -math.inf
        self.planned_epochs = config.epochs
        self.timings = {"cache": 0.0, "training": 0.0, "validation": 0.0}

    # ----------------------------------------------------------------------------------------- run
    def run(self) -> TrainingResult:
        """Train (or resume) to the end and validate."""
        self.setup()
        epoch = self.start_epoch
        while epoch < self.planned_epochs:
            record = self.train_epoch(epoch)
            record.update(self.validate_epoch(epoch))
            self.on_epoch_end(epoch, record)
            epoch += 1
        return self.on_train_end()

    # --------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Check the fold, load cases, build model, cache, data, optimiser; resume if asked."""
        self._check_existing_run()
        seed_everything(self.config.seed)
        train_ids, val_ids = self._split()
        if self.dist.is_main:  # the log exists from the start, before the (long) embedding cache
            self.log(
                f"training fold {self.fold} of {self.plans.dataset_name} ({self.config.configuration})"
                + (
                    f", ensemble member {self.member + 1} of {self.members} (seed {self.config.seed})"
                    if self.member
                    else ""
                )
                + " starts: "
                f"{len(train_ids)} training / {len(val_ids)} validation cases; loading cases, model"
                + (", embedding cache" if self.config.cache_embeddings is not False else "")
            )
        labels = sorted(self.plans.foreground_labels.values())  # never the ignore label
        folder = self.preprocessed_dataset / self.plan.data_identifier
        self.train_cases = load_training_cases(folder, train_ids, labels=labels, seed=self.config.seed)
        self.val_cases = load_training_cases(
            folder, val_ids, labels=labels, seed=self.config.seed + 1, desc="loading validation cases"
        )
        self.val_ids = val_ids
        # its backbone built for the plans' window
        self.model = self.model_folder.build_model(device=self.device)
        self.cache = self._prepare_cache()
        window = self.plan.window_size
        fixed = self.cache is not None
        stride = self.cache.slice_stride if fixed else 1
        self.train_sampler = WindowSampler(
            self.train_cases,
            window=window,
            oversample_foreground=self.config.oversample_foreground,
            fixed=fixed,
            slice_stride=stride,
        )
        self.val_sampler = WindowSampler(
            self.val_cases,
            window=window,
            oversample_foreground=self.config.oversample_foreground,
            fixed=True,
            slice_stride=stride,
        )
        self.views = self._prepare_views()
        self.augmentation = None if fixed else build_augmentation(self.config.augmentation, window)
        self.loss = AutoPromptLoss(self.plans.num_foreground_classes, self.config.loss)
        self.trainable_parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            self.trainable_parameters,
            learning_rate=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
            pretrained=self.model.pretrained_parameters(),
            pretrained_scale=self.config.pretrained_learning_rate_scale,
        )
        iterations = self.config.iterations_per_epoch
        self.epoch_limit = epochs_for_training_windows(
            self.config.epochs,
            iterations_per_epoch=iterations,
            training_windows=self.train_sampler.num_windows,
            max_steps_per_window=self.config.max_steps_per_window,
        )
        self.planned_epochs = self.epoch_limit
        self.schedule = WarmupPolySchedule(
            total_steps=self.planned_epochs * iterations,
            warmup_steps=self.config.warmup_epochs * iterations,
            exponent=self.config.poly_exponent,
        )
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.train_model = self._wrap_distributed(self.model)
        decay = self.config.weight_average_decay
        self.weight_average = WeightAverage(self.model, decay) if decay > 0 else None
        if self.resume:
            self._load_latest()
        self._log_setup()

    def _check_existing_run(self) -> None:
        latest = checkpoint_path(self.fold_dir, "latest")
        if latest.is_file() and not self.resume:
            raise AutoPromptError(
                f"{latest}: this fold has been trained before; pass --resume to continue it, or delete "
                f"{self.fold_dir} to start again"
            )

    def _split(self) -> tuple[list[str], list[str]]:
        splits_file = self.preprocessed_dataset / "splits_final.json"
        if not splits_file.is_file():
            raise AutoPromptError(
                f"{splits_file}: no folds; run 'autoprompt plan-and-preprocess' for this dataset first"
            )
        # fold "all" trains every case the file names; an entry with an empty "val" is not a fold, and
        # [{"train": [every case], "val": []}] (a dataset of a single case group) means "only fold all"
        from pipeline.dataset import describe_folds, fold_indices, read_splits

        splits = read_splits(splits_file, "fix it, or delete it and plan the dataset again")
        if self.fold == "all":
            cases = sorted({case for split in splits for case in split["train"] + split["val"]})
            return cases, cases
        folds = fold_indices(splits)
        fold = int(self.fold)
        if not folds:
            raise AutoPromptError(
                f"{splits_file}: has no cross-validation folds (one case group cannot be split), there is no "
                f"fold {fold}; train fold all: 'autoprompt train {self.plans.dataset_name} all'"
            )
        if fold not in folds:
            problem = (
                f"fold {fold} has no training or no validation cases"
                if 0 <= fold < len(splits)
                else f"there is no fold {fold}"
            )
            raise AutoPromptError(
                f"{splits_file}: has folds {describe_folds(folds)}, {problem}; choose "
                f"{describe_folds(folds)} or all"
            )
        split = splits[fold]
        return list(split["train"]), list(split["val"])

    def _prepare_cache(self) -> EmbeddingCache | None:
        """Build (or reuse) the embedding cache when the encoder is frozen and caching is on."""
        wanted = self.config.cache_embeddings
        if wanted and not self.model.uses_frozen_encoder:
            raise AutoPromptError(
                "cache_embeddings=true needs a frozen image encoder, but this model config trains encoder "
                "adapters; set cache_embeddings to null or turn model.encoder_adapters off"
            )
        use = self.model.uses_frozen_encoder and (self.plan.cache_embeddings if wanted is None else wanted)
        if not use:
            return None
        stride = self.config.cache_slice_stride
        if stride > 1 and self.plan.stack_depth > 1:
            raise AutoPromptError(
                f"cache_slice_stride={stride} cannot be used with '{self.config.configuration}' (stacks of "
                f"{self.plan.stack_depth} neighbouring slices need every slice); set cache_slice_stride=1"
            )
        precision = resolve_precision(self.config.encoder_precision, self.device)
        int8 = self._int8_cache_encoder(precision)
        parts = cache_key_parts(
            self.plans,
            self.config.configuration,
            backbone_checksum=self.model.backbone.checksum,
            precision=precision,
            slice_stride=stride,
            encoder_runtime=self.model.backbone.resolved_encoder_runtime(precision),
            int8_encoder=None if int8 is None else int8_encoder_digest(int8),
        )
        backbone = self.model.backbone
        cache = EmbeddingCache(
            self.preprocessed_dataset, parts, embedding_shape=(backbone.embed_dim, *backbone.embedding_size)
        )
        cases = self.train_cases + [
            c for c in self.val_cases if c.name not in {t.name for t in self.train_cases}
        ]
        started = time.perf_counter()
        built = cache.build(
            self.model, self._shard(cases), device=self.device, batch_size=encoder_batch_size(self.device)
        )
        built = self._sum_over_processes(built)  # waits for every shard
        self.timings["cache"] = time.perf_counter() - started
        if built:
            self.log(
                f"embedding cache {cache.folder}: encoded {built} case(s) in {self.timings['cache']:.0f} s"
            )
        return cache

    def _int8_cache_encoder(self, precision: Precision) -> Path | None:
        """The int8 encoder the embedding cache is built with (``config.int8_cache`` and ``int8_encoder``), or
        None: only where prediction on this machine runs it too (:func:`int8_encoder_pays`), so training sees the
        embeddings prediction will give. Process 0 quantises it (or finds the model folder's), the others wait
        for it. A resumed fold keeps the embeddings it began with (none for a checkpoint from before int8
        caches)."""
        if not (
            self.config.int8_cache and self.config.int8_encoder and int8_encoder_pays(precision, self.device)
        ):
            return None
        latest = checkpoint_path(self.fold_dir, "latest")
        if (
            self.resume
            and latest.is_file()
            and not load_checkpoint(latest)["metadata"].get("int8_embeddings")
        ):
            return None
        if self.dist.is_main:
            self._int8_encoder()
        self._barrier()
        xml = self.model_folder.int8_encoder(self.model.backbone)
        self.model.backbone.int8_encoder = xml
        return xml

    def _prepare_views(self) -> ViewCache | None:
        """Build (or reuse) the augmented views of the training cases next to the embedding cache."""
        if self.cache is None:
            return None
        count = choose_view_count(
            self.config.views, self.train_sampler.num_windows, bytes_per_embedding=self.cache.embedding_bytes
        )
        parts = view_key_parts(
            self.cache,
            count=count,
            augmentation=self.config.augmentation,
            p_spatial=self.config.views.p_spatial,
            seed=self.config.seed,
            zoom=self.config.zoom,
        )
        views = ViewCache(self.cache, parts)
        started = time.perf_counter()
        built = views.build(
            self.model,
            self._shard(self.train_cases),
            device=self.device,
            batch_size=encoder_batch_size(self.device),
        )
        built = self._sum_over_processes(built)  # waits for every shard
        seconds = time.perf_counter() - started
        self.timings["cache"] += seconds
        if built:
            self.log(
                f"augmented views {views.folder}: {count - 1} view(s) of {built} case(s) in {seconds:.0f} s"
            )
        return views

    def _wrap_distributed(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.dist.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _log_setup(self) -> None:
        counts = self.model.parameter_counts()
        self.log(
            f"fold {self.fold} of {self.plans.dataset_name} ({self.config.configuration}): "
            f"{len(self.train_cases)} training / {len(self.val_cases)} validation cases; device {self.device}"
            + (f" x {self.dist.world_size} processes" if self.dist.world_size > 1 else "")
        )
        self.log(
            f"model: {counts['trainable']:,} trainable of {counts['total']:,} parameters; "
            + (
                f"frozen-encoder embeddings cached in {self.cache.folder} ("
                + ("int8 encoder" if "int8_encoder" in self.cache.parts else self.cache.precision.value)
                + "); "
                + describe_views(self.views.count)
                if self.cache is not None
                else "encoder run every step, batchgenerators augmentation"
            )
        )
        self.log(
            f"{self.planned_epochs} epochs x {self.config.iterations_per_epoch} iterations, batch {self.batch_size}, "
            f"lr {self.config.learning_rate:g}"
            + (
                f", at most {self.epoch_limit} epochs (max_steps_per_window {self.config.max_steps_per_window:g} "
                f"x {self.train_sampler.num_windows} training windows)"
                if self.epoch_limit < self.config.epochs
                else ""
            )
            + (
                f", time budget {self.config.time_budget_minutes:g} min"
                if self.config.time_budget_minutes
                else ""
            )
            + (f"; resuming after epoch {self.start_epoch}" if self.start_epoch else "")
        )

    # -------------------------------------------------------------------------------------- epochs
    def _dataset(
        self, sampler: WindowSampler, *, stream: int, epoch: int, length: int, augment: bool
    ) -> BatchDataset:
        return BatchDataset(
            sampler,
            batch_size=self.batch_size,
            stack_depth=self.plan.stack_depth,
            seed=self.config.seed + 1_000_003 * self.dist.rank,
            stream=stream,
            epoch=epoch,
            length=length,
            augmentation=self.augmentation if augment else None,
            embedding_files=None if self.cache is None else [self.cache.path(c.name) for c in sampler.cases],
            views=self.views if augment else None,
            zoom=self.config.zoom if augment and self.config.zoom.views > 0 else None,
            centre_target_only=self.model.centre_slice_only,
        )

    def _training_prompts(self, target: torch.Tensor) -> TrainingPrompts:
        """This step's ground-truth boxes for some samples and each window's decoder region, as the config
        asks for them, drawn from ``target`` (``L x h x w`` labels, on the host) and moved to the device."""
        boxes, mask = self._teacher_boxes(target)
        return TrainingPrompts(
            teacher_boxes=None if boxes is None else boxes.to(self.device, non_blocking=True),
            teacher_mask=None if mask is None else mask.to(self.device, non_blocking=True),
            decoder_region=self._decoder_region(target),
        )

    def _forward(
        self, model: torch.nn.Module, batch: Batch, *, prompts: TrainingPrompts | None = None
    ) -> tuple[AutoPromptOutput, dict[str, torch.Tensor]]:
        """Model output and loss terms; ``prompts`` (training) give some samples ground-truth boxes and
        decode each window on its decoder region."""
        prompts = prompts or TrainingPrompts()
        with torch.autocast(
            device_type=self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            output = model(
                batch.images,
                embeddings=batch.embeddings,
                teacher_boxes=prompts.teacher_boxes,
                teacher_mask=prompts.teacher_mask,
                decoder_region=prompts.decoder_region,
            )
        return output, self.loss(output, batch.target)

    def _decoder_region(self, target: torch.Tensor) -> DecoderRegion | None:
        """Each window's square for the decoder (``decoder_region_tokens``), seeded by step; None: off, or a
        square no smaller than the embedding (a small window's grid), i.e. the whole window."""
        tokens = self.config.decoder_region_tokens
        if tokens is None or tokens >= self._embedding_grid():
            return None
        return decoder_regions(
            target.reshape(-1, *target.shape[-2:]),
            num_classes=self.plans.num_foreground_classes,
            tokens=tokens,
            grid=self._embedding_grid(),
            generator=torch.Generator().manual_seed(self.config.seed * 1_000_033 + self.step),
        )

    def _embedding_grid(self) -> int:
        """G, the side of the image embedding in tokens."""
        return int(self.model.backbone.prompt_encoder.image_embedding_size[0])

    def _teacher_boxes(self, target: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Ground-truth prompts for a ``prompt_teacher_forcing`` share of the samples, seeded by step."""
        probability = self.config.prompt_teacher_forcing
        if probability <= 0:
            return None, None
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        return jittered_truth_boxes(
            target, self.plans.num_foreground_classes, probability=probability, generator=generator
        )

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of optimiser steps; returns the mean of every loss term and the time."""
        started = time.perf_counter()
        self.train_model.train()
        dataset = self._dataset(
            self.train_sampler,
            stream=TRAIN_STREAM,
            epoch=epoch,
            length=self.config.iterations_per_epoch,
            augment=True,
        )
        loader = batch_loader(
            dataset,
            num_workers=self.config.num_workers or 0,
            pin_memory=self.device.type == "cuda",
        )
        # summed on the device: reading a loss each step would make the host wait for the GPU
        sums = {
            name: torch.zeros((), dtype=torch.float64, device=self.device) for name in ("total", *LOSS_TERMS)
        }
        bar = progress(
            loader,
            total=len(dataset),
            desc=f"epoch {epoch + 1}/{self.planned_epochs}",
            unit="it",
            leave=False,
            enabled=self.dist.is_main,
        )
        first_timed = 1 if epoch == self.start_epoch else 0  # a run's step 0 warms up (allocations, kernels)
        for index, batch in enumerate(bar):
            if index == first_timed:
                timed_from = time.perf_counter()
            elif self._replans_at(epoch, index - first_timed, index):
                seconds_per_step = (time.perf_counter() - timed_from) / (index - first_timed)
                self._plan_within_epoch(epoch, index, seconds_per_step, time.perf_counter() - started)
            prompts = self._training_prompts(batch.target)  # from the labels still on the host: no GPU sync
            batch = batch.to(self.device)
            _, terms = self._forward(self.train_model, batch, prompts=prompts)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["total"]).backward()
            if self.config.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trainable_parameters, self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.weight_average is not None:
                self.weight_average.update()
            self.step += 1
            for name in sums:
                sums[name] += terms[name].detach()
            if index % LOSS_SHOWN_EVERY == 0:
                bar.set_postfix(loss=f"{float(terms['total'].detach()):.3f}")
        count = len(dataset)
        totals = torch.stack(list(sums.values()))
        if self.dist.world_size > 1:  # the mean over every process's steps, for the log and the history
            torch.distributed.all_reduce(totals)
            totals /= self.dist.world_size
        sums = dict(zip(sums, totals.tolist(), strict=True))
        return {
            "epoch": epoch,
            "train_loss": sums["total"] / count,
            "train_terms": {name: sums[name] / count for name in LOSS_TERMS},
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": time.perf_counter() - started,
        }

    def _replans_at(self, epoch: int, timed_steps: int, index: int) -> bool:
        """Whether a time budget is planned again before step ``index`` of the run's first epoch (later
        ones are planned at their end): after the first ``BUDGET_PROBE_STEPS`` timed steps, then
        ``BUDGET_REPLANS_PER_EPOCH`` times in the epoch, as a cold start speeds up."""
        budgeted = self.config.time_budget_minutes is not None and epoch == self.start_epoch
        if not budgeted or timed_steps < BUDGET_PROBE_STEPS:
            return False
        interval = max(1, self.config.iterations_per_epoch // BUDGET_REPLANS_PER_EPOCH)
        return timed_steps == BUDGET_PROBE_STEPS or index % interval == 0

    def _plan_within_epoch(
        self, epoch: int, index: int, seconds_per_step: float, epoch_seconds: float
    ) -> None:
        """Plan the time budget at step ``index`` of ``epoch`` from this epoch's speed so far
        (validation batches count a third of a step)."""
        steps = self.config.iterations_per_epoch + self.config.val_iterations / 3
        self._apply_time_budget(
            finished=epoch + index / self.config.iterations_per_epoch,
            seconds_per_epoch=seconds_per_step * steps,
            spent_seconds=sum(r["seconds"] for r in self.history) + epoch_seconds,
        )

    def validate_epoch(self, epoch: int) -> dict[str, Any]:
        """Validation loss and per-class pseudo-Dice on fixed validation windows (process 0 only)."""
        started = time.perf_counter()
        k = self.plans.num_foreground_classes
        if not self.dist.is_main or self.config.val_iterations == 0:
            return {"val_loss": math.nan, "val_dice": [math.nan] * k, "val_seconds": 0.0}
        model = self.evaluated_model
        model.eval()
        dataset = self._dataset(
            self.val_sampler, stream=VAL_STREAM, epoch=0, length=self.config.val_iterations, augment=False
        )
        tp, fp, fn = (torch.zeros(k, dtype=torch.float64) for _ in range(3))
        loss_sum = 0.0
        with torch.inference_mode():
            for batch in batch_loader(dataset, num_workers=0, pin_memory=False):
                batch = batch.to(self.device)
                output, terms = self._forward(model, batch)
                loss_sum += float(terms["total"])
                predicted = channel_argmax(output.logits, dim=-3)
                for c in range(1, k + 1):
                    pred_c, true_c = predicted == c, batch.target == c
                    pred_c &= batch.target <= k  # the ignore label's voxels count for nothing
                    tp[c - 1] += float((pred_c & true_c).sum())
                    fp[c - 1] += float((pred_c & ~true_c).sum())
                    fn[c - 1] += float((~pred_c & true_c).sum())
        denominator = 2 * tp + fp + fn
        dice = [float(2 * tp[i] / denominator[i]) if denominator[i] > 0 else math.nan for i in range(k)]
        return {
            "val_loss": loss_sum / len(dataset),
            "val_dice": dice,
            "val_seconds": time.perf_counter() - started,
        }

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """Log, update the EMA and checkpoints, plot, and shorten the run to the time budget."""
        record["seconds"] = record.pop("train_seconds") + record.pop("val_seconds")
        finite = [d for d in record["val_dice"] if not math.isnan(d)]
        record["mean_dice"] = float(np.mean(finite)) if finite else math.nan
        previous = self.history[-1]["ema_dice"] if self.history else math.nan
        record["ema_dice"] = (
            record["mean_dice"]
            if math.isnan(previous)
            else EMA_MOMENTUM * previous + (1 - EMA_MOMENTUM) * (record["mean_dice"] if finite else previous)
        )
        self.history.append(record)
        seconds = [r["seconds"] for r in self.history]
        self._apply_time_budget(
            finished=epoch + 1, seconds_per_epoch=recent_epoch_seconds(seconds), spent_seconds=sum(seconds)
        )
        if self.dist.is_main:
            self.log(epoch_line(epoch, self.planned_epochs, record, self.class_names))
            improved = not math.isnan(record["ema_dice"]) and record["ema_dice"] > self.best_ema
            if improved or self.config.val_iterations == 0:
                self.best_ema = record["ema_dice"] if improved else self.best_ema
                save_checkpoint(self._state(epoch + 1), checkpoint_path(self.fold_dir, "best"))
                if improved:
                    self.log(f"new best EMA pseudo-Dice {self.best_ema:.4f}: checkpoint_best.pt")
            save_checkpoint(self._state(epoch + 1), checkpoint_path(self.fold_dir, "latest"))
            plot_progress(self.history, self.class_names, self.fold_dir / "progress.png")
        self._barrier()

    def _apply_time_budget(self, *, finished: float, seconds_per_epoch: float, spent_seconds: float) -> None:
        """With a time budget, plan as many epochs as the time left holds at ``seconds_per_epoch`` each
        (never more than the epoch limit, never fewer than begun), and end the learning-rate schedule with the
        last one.

        Called during a run's first epoch and after every epoch, so an estimate that was too long or too
        short is corrected (the plan may grow again up to ``config.epochs``)."""
        budget = self.config.time_budget_minutes
        if budget is None:
            return
        planned = epochs_in_budget(
            budget * 60.0 - spent_seconds, seconds_per_epoch, finished=finished, cap=self.epoch_limit
        )
        if self.dist.world_size > 1:
            shared = [planned]
            torch.distributed.broadcast_object_list(shared, src=0)
            planned = shared[0]
        if planned != self.planned_epochs:
            self.planned_epochs = planned
            self.schedule.total_steps = planned * self.config.iterations_per_epoch
            self.log(
                f"time budget {budget:g} min: {planned} epochs fit ({seconds_per_epoch:.1f} s per epoch)"
            )

    def on_train_end(self) -> TrainingResult:
        """Write checkpoint_final, then validate the fold with the best weights."""
        summary = None
        if self.dist.is_main:
            save_checkpoint(self._state(self.planned_epochs), checkpoint_path(self.fold_dir, "final"))
            self.timings["training"] = sum(record["seconds"] for record in self.history)
            self.log(
                f"training finished: {self.planned_epochs} epochs, {self.step} steps, "
                f"{self.timings['training'] / 60:.1f} min"
            )
        self._leave_process_group()
        if self.member == 0 and self.dist.world_size == 1:
            self._decide_ensemble_size()
        if self.dist.is_main:
            if self._int8_encoder() is not None:  # validated as 'autoprompt predict' will run it here
                use_int8_encoder(self.model_folder, [self.model], self.trained_precision, self.device)
            if self.member + 1 < self.members:
                self.log(f"ensemble member {self.member + 1} of {self.members} trained; the next one follows")
            elif self.config.final_validation and self.fold != "all":
                summary = self._final_validation()
            elif self.fold != "all":
                self.log("final_validation=false: final validation and postprocessing choice skipped")
            if self.fold == "all" and self.member == 0:
                self._postprocessing_from_training_labels()
        return TrainingResult(
            model_folder=self.model_folder.path,
            fold_dir=self.fold_dir,
            epochs=self.planned_epochs,
            steps=self.step,
            best_ema_dice=self.best_ema,
            validation=summary,
            history=self.history,
            timings=self.timings,
            members=self.members,
        )

    def _int8_encoder(self) -> Path | None:
        """The model folder's int8 encoder (``config.int8_encoder``), quantised now on windows of this
        fold's training cases if the folder has none for this encoder yet; None without one."""
        backbone = self.model.backbone
        if not (self.config.int8_encoder and self.model.uses_frozen_encoder):
            return None
        if backbone.model_input_size > MAX_INT8_WINDOW:
            return None
        existing = self.model_folder.int8_encoder(backbone)
        if existing is not None:
            return existing
        started = time.perf_counter()
        folder = self.model_folder.int8_encoder_folder
        try:
            xml, calibrated = quantize_on_cases(backbone, self.train_cases, self.plan.window_size, folder)
        except Exception as error:  # noqa: BLE001 - the trained model stays usable in bf16/fp32
            self.log(
                f"int8 image encoder not written ({error.__class__.__name__}: {str(error)[:200]}); prediction "
                "runs the encoder in bf16/fp32 (pip install nncf openvino, then run the same train command with "
                "--resume: a finished fold then only writes the int8 encoder and validates again)"
            )
            return None
        self.timings["int8_encoder"] = time.perf_counter() - started
        self.log(
            f"int8 image encoder written to {folder} ({calibrated} calibration windows of the training cases, "
            f"{self.timings['int8_encoder']:.0f} s); 'autoprompt predict' runs it on CPUs with AVX-512 VNNI "
            "but no AMX"
        )
        return xml

    def _decide_ensemble_size(self) -> None:
        """Member 0, at its end: how many models the fold trains (``config.ensemble_members``)."""
        budget = self.config.time_budget_minutes
        self.members = ensemble_size(
            configured_epochs=self.config.epochs,
            trained_epochs=self.planned_epochs,
            max_members=self.config.ensemble_members,
            budget_seconds=None if budget is None else budget * 60.0,
            seconds_per_member=sum(record["seconds"] for record in self.history),
        )
        if self.members > 1:
            self.log(
                f"ensemble: {self.members} models for this fold (ensemble_members {self.config.ensemble_members}: "
                f"the step limit ended this one after {self.planned_epochs} of {self.config.epochs} epochs"
                + (f", time budget {budget:g} min" if budget else "")
                + f"); the others train into {self.fold_dir}/member_M with seeds {self.config.seed + 1}, ..."
            )

    def _postprocessing_from_training_labels(self) -> None:
        """Fold ``all`` has no held-out cases: decide postprocessing from the training labels instead."""
        rules = postprocessing_from_labels(
            [case.seg for case in self.train_cases], labels=sorted(self.plans.foreground_labels.values())
        )
        save_json(rules, self.fold_dir / "postprocessing.json")
        self.log(
            "fold 'all' has no held-out cases: final validation skipped; postprocessing decided from the "
            f"training labels (largest component of the foreground if it is one piece in all, else of each class "
            f"that is): steps {rules['steps']}"
        )

    def _final_validation(self) -> dict:
        from pipeline.inference.tta import mirror_axes_for
        from pipeline.training.validation import validate_fold

        best = load_checkpoint(checkpoint_path(self.fold_dir, "best"))
        self.model.load_trainable_state_dict(best["model"])
        self.model.eval()
        earlier_members = [  # this fold's ensemble members before this one, sharing its backbone
            self.model_folder.load_checkpoint_file(
                checkpoint_path(self.model_folder.member_dir(self.fold, member), "best"),
                device=self.device,
                backbone=self.model.backbone,
            )
            for member in range(self.member)
        ]
        models = [*earlier_members, self.model]
        tta = self.config.validation_tta if self.config.validation_tta is not None else self.mirror_augmented
        precision = self.trained_precision.value
        started = time.perf_counter()
        summary = validate_fold(
            models,
            self.plans,
            self.config.configuration,
            case_ids=self.val_ids,
            preprocessed_folder=self.preprocessed_dataset / self.plan.data_identifier,
            fold_dir=self.model_folder.fold_dir(self.fold),
            device=self.device,
            tta=tta,
            mirror_axes=mirror_axes_for(cached_views=self._views_record() is not None),
            precision=precision,
            batch_size=encoder_batch_size(self.device),
            raw_labels_folder=self.raw_labels_folder,
            zoom=self.config.zoom,
        )
        dice = summary["mean"]
        per_class = "  ".join(
            f"{name} {dice[str(value)]['Dice']:.4f}"
            if dice[str(value)]["Dice"] is not None
            else f"{name} n/a"
            for name, value in summary["labels"].items()
        )
        self.timings["validation"] = time.perf_counter() - started
        self.log(
            f"final validation ({len(self.val_ids)} cases"
            + (f", an ensemble of {len(models)} models" if len(models) > 1 else "")
            + f", TTA {'on' if tta else 'off'}, "
            f"zoomed pass {'on' if self.config.zoom.second_pass else 'off'}, {precision}, "
            f"{self.timings['validation']:.0f} s): Dice {per_class}  mean {summary['foreground_mean']['Dice']:.4f}; "
            f"postprocessing steps {summary['postprocessing']}"
        )
        return summary

    # --------------------------------------------------------------------------------- checkpoints
    def _state(self, epochs_done: int) -> dict[str, Any]:
        average = self.weight_average
        return {
            "model": self.evaluated_model.trainable_state_dict(),
            "weight_average": None
            if average is None
            else {"trained_model": self.model.trainable_state_dict(), "updates": average.updates},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.use_scaler else None,
            "epoch": epochs_done,
            "step": self.step,
            "planned_epochs": self.planned_epochs,
            "best_ema": self.best_ema,
            "rng": capture_rng_state(),
            "history": self.history,
            "metadata": {
                "backbone": self.model.backbone.name,
                "backbone_checksum": self.model.backbone.checksum,
                "configuration": self.config.configuration,
                "fold": self.fold,
                "dataset": self.plans.dataset_name,
                "trainer_config": self.config.to_dict(),
                "mirror_augmented": self.mirror_augmented,
                "views": self._views_record(),
                "encoder_precision": self.trained_precision.value,
                "int8_embeddings": self.cache is not None and "int8_encoder" in self.cache.parts,
                "amp_precision": self.amp_precision.value,
            },
        }

    def _views_record(self) -> dict | None:
        """The augmented views in a checkpoint's metadata (None without views: no cache, or 1 view)."""
        if self.views is None or self.views.count < 2:
            return None
        return {"count": self.views.count, "key": self.views.key}

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The network that is validated, checkpointed as ``model`` and predicts: the weight average when
        ``weight_average_decay`` is on, else the trained network itself."""
        return self.model if self.weight_average is None else self.weight_average.model

    @property
    def trained_precision(self) -> Precision:
        """The precision the network saw its embeddings in: the embedding cache's, else the autocast's
        (prediction uses it too, :meth:`pipeline.model_folder.ModelFolder.trained_precision`)."""
        return self.cache.precision if self.cache is not None else self.amp_precision

    @property
    def amp_precision(self) -> Precision:
        """The precision of the training steps' autocast (``TrainerConfig.amp`` resolved; fp32: none)."""
        return next(precision for precision, dtype in AMP_DTYPES.items() if dtype == self.amp_dtype)

    @property
    def mirror_augmented(self) -> bool:
        """True when training mirrored its inputs: only then does mirroring TTA help (a network that never
        saw mirrored anatomy mislabels it, e.g. left/right). With the cache, view 1 is the mirror image."""
        if self.cache is None:
            return self.config.augmentation.mirror
        return self.views is not None and self.views.count > 1

    def _load_latest(self) -> None:
        path = checkpoint_path(self.fold_dir, "latest")
        if not path.is_file():
            self.log(f"--resume: no {path.name} in {self.fold_dir} yet, starting from the beginning")
            return
        state = load_checkpoint(path)
        if state["metadata"]["backbone_checksum"] != self.model.backbone.checksum:
            raise AutoPromptError(
                f"{path}: was trained on another backbone (checksum {state['metadata']['backbone_checksum'][:12]}...); "
                "resume with the same backbone or delete the fold to start again"
            )
        saved_views = state["metadata"].get("views")
        views = self._views_record()
        if saved_views != views:
            raise AutoPromptError(
                f"{path}: was trained with other augmented views ({saved_views}); resume with the same "
                "settings (views, augmentation, seed) or delete the fold to start again"
            )
        if state["metadata"]["trainer_config"]["model"] != self.config.model.to_dict():
            raise AutoPromptError(
                f"{path}: was trained with another model config; resume with the same --config/--set options"
            )
        saved_average = state.get("weight_average")  # None: saved without weight averaging
        self.model.load_trainable_state_dict(
            saved_average["trained_model"] if saved_average else state["model"]
        )
        if self.weight_average is not None and saved_average:
            self.weight_average.restore(state["model"], saved_average["updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.planned_epochs = state["planned_epochs"]
        self.schedule.total_steps = self.planned_epochs * self.config.iterations_per_epoch
        self.scheduler.load_state_dict(state["scheduler"])
        if self.use_scaler and state["grad_scaler"] is not None:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.start_epoch = state["epoch"]
        self.step = state["step"]
        self.best_ema = state["best_ema"]
        self.history = list(state["history"])
        restore_rng_state(state["rng"])

    # --------------------------------------------------------------------------------- processes
    def _shard(self, cases: list) -> list:
        """This process's share of ``cases``: every ``world_size``-th one, from its rank on."""
        return cases[self.dist.rank :: self.dist.world_size]

    def _barrier(self) -> None:
        """Wait for every process (on the gloo group with :data:`WAIT_TIMEOUT`, never the training group's
        short default: one process may be building a cache shard or writing checkpoints)."""
        if self._wait_group is not None:
            torch.distributed.barrier(group=self._wait_group)

    def _sum_over_processes(self, value: int) -> int:
        """``value`` summed over the processes (waits for all of them, as :meth:`_barrier`)."""
        if self._wait_group is None:
            return value
        total = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(total, group=self._wait_group)
        return int(total)

    def _leave_process_group(self) -> None:
        """After training: wait until every process is done, then leave the process group, so that nothing
        waits (and times out) while process 0 validates the fold alone."""
        if self._wait_group is not None:
            self._barrier()
            self._wait_group = None
            torch.distributed.destroy_process_group()
