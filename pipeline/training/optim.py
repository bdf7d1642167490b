"""Optimiser and learning-rate schedule: AdamW, linear warm-up, then polynomial decay to zero."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch


class WarmupPolySchedule:
    """Learning-rate factor for step ``t`` of ``total_steps``.

    ``(t + 1) / (warmup + 1)`` during the warm-up, then ``(1 - (t - warmup) / (total - warmup)) ** exponent``,
    where ``warmup`` is ``warmup_steps`` but at most a tenth of the run. ``total_steps`` may be changed
    while training (a time budget shortens the run); the steps still to come follow the new total.
    """

    def __init__(self, *, total_steps: int, warmup_steps: int, exponent: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.exponent = exponent

    def __call__(self, step: int) -> float:
        warmup = min(self.warmup_steps, self.total_steps // 10)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        decay_steps = max(self.total_steps - warmup, 1)
        progress = min((step - warmup) / decay_steps, 1.0)
        return (1.0 - progress) ** self.exponent


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    *,
    learning_rate: float,
    weight_decay: float,
    pretrained: Iterable[torch.nn.Parameter] = (),
    pretrained_scale: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW over the trainable ``parameters``; those also in ``pretrained`` (the backbone's weights being
    fine-tuned) at ``learning_rate * pretrained_scale``, the others at ``learning_rate``.

    With a scale of 1 there is one parameter group, else two (new, then pretrained; an empty one is left
    out); the schedule scales every group alike. On a GPU the update is PyTorch's fused kernel (a few
    launches per step instead of several per weight).
    """
    trainable = [p for p in parameters if p.requires_grad]
    options = {"lr": learning_rate, "weight_decay": weight_decay}
    if trainable and all(p.is_cuda for p in trainable):
        options["fused"] = True
    if pretrained_scale == 1.0:
        return torch.optim.AdamW(trainable, **options)
    pretrained_ids = {id(p) for p in pretrained}
    groups = [
        {"params": [p for p in trainable if id(p) not in pretrained_ids]},
        {"params": [p for p in trainable if id(p) in pretrained_ids], "lr": learning_rate * pretrained_scale},
    ]
    return torch.optim.AdamW([group for group in groups if group["params"]], **options)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: WarmupPolySchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step along ``schedule``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)


RECENT_EPOCHS = 3  # epochs whose median time predicts the next ones under a time budget


def recent_epoch_seconds(epoch_seconds: list[float]) -> float:
    """The median time of the last ``RECENT_EPOCHS`` epochs: robust to one slow epoch, and following a
    machine that speeds up (a cold disk cache, load that ends) or slows down."""
    return float(np.median(epoch_seconds[-RECENT_EPOCHS:]))


def epochs_for_training_windows(
    epochs: int, *, iterations_per_epoch: int, training_windows: int, max_steps_per_window: float | None
) -> int:
    """``epochs``, limited to ``max_steps_per_window`` optimiser steps per training window (rounded up to
    whole epochs, at least one); None: ``epochs``.
    ``epochs_for_training_windows(50, iterations_per_epoch=50, training_windows=54, max_steps_per_window=10) == 11``.
    """
    if max_steps_per_window is None:
        return epochs
    limit = math.ceil(max_steps_per_window * training_windows / iterations_per_epoch)
    return min(epochs, max(1, limit))


def epochs_in_budget(remaining_seconds: float, seconds_per_epoch: float, *, finished: float, cap: int) -> int:
    """Epochs to plan when ``remaining_seconds`` of a wall-clock budget are left after ``finished``
    epochs (a fraction while one is running) and the next take ``seconds_per_epoch`` each.

    The rule of both trainers under a budget (autoprompt's and the benchmark's nnU-Net), re-applied
    while training: planned against the time left, so that epochs run slower or faster before do not
    bias the plan, and rounded to the nearest epoch, so that a run ends within half an epoch of its
    budget, before or after it (long epochs do not leave most of one unused); never fewer than the
    epochs begun, never more than ``cap``. ``epochs_in_budget(3450, 150, finished=1, cap=1000) == 24``.
    """
    return min(cap, max(math.ceil(finished), round(finished + remaining_seconds / seconds_per_epoch)))


def ensemble_size(
    *,
    configured_epochs: int,
    trained_epochs: int,
    max_members: int,
    budget_seconds: float | None = None,
    seconds_per_member: float = 0.0,
) -> int:
    """Models a fold trains (:attr:`~pipeline.trainer_config.TrainerConfig.ensemble_members`), decided when
    the first has trained ``trained_epochs``: 1 unless the step limit ended it before ``configured_epochs``;
    then as many runs of ``trained_epochs`` as ``configured_epochs`` pay for, at most ``max_members``, and
    under a time budget only as many as fit it at ``seconds_per_member`` each.
    ``ensemble_size(configured_epochs=50, trained_epochs=11, max_members=3) == 3``.
    """
    if trained_epochs >= configured_epochs:
        return 1
    count = min(max_members, configured_epochs // trained_epochs)
    if budget_seconds is not None and seconds_per_member > 0:
        count = min(count, int(budget_seconds // seconds_per_member))
    return max(1, count)
