"""Loss terms and the learning-rate schedule, on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from autoprompt.modeling.autoprompt_sam import AutoPromptOutput
from pipeline.trainer_config import LossConfig
from pipeline.training.losses import AutoPromptLoss
from pipeline.training.optim import (
    WarmupPolySchedule,
    ensemble_size,
    epochs_for_training_windows,
    epochs_in_budget,
    recent_epoch_seconds,
)

K, SIZE = 2, 16


def target_map(*, with_class_2: bool = False) -> torch.Tensor:
    """``1 x 16 x 16``: class 1 in rows 2-5 / cols 3-8; class 2 in rows 10-13 / cols 1-2 or absent."""
    target = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    target[0, 2:6, 3:9] = 1
    if with_class_2:
        target[0, 10:14, 1:3] = 2
    return target


def output_for(target: torch.Tensor, *, correct: bool, strength: float = 20.0) -> AutoPromptOutput:
    """A confident output that is right (or wrong: class 1 predicted in the wrong place) everywhere."""
    labels = target if correct else torch.roll(target, shifts=8, dims=-1)
    one_hot = torch.stack([labels == c for c in range(K + 1)], dim=1).float()  # 1 x K+1 x h x w
    logits = (one_hot * 2 - 1) * strength
    present = one_hot[:, 1:].flatten(2).amax(dim=2)  # 1 x K
    if not correct:
        present = 1 - present  # and says the present class is absent, the absent one present
    box = torch.tensor(
        [[[3 / SIZE, 2 / SIZE, 9 / SIZE, 6 / SIZE], [1 / SIZE, 10 / SIZE, 3 / SIZE, 14 / SIZE]]]
    )
    if not correct:
        box = torch.tensor([[[0.7, 0.7, 0.9, 0.9], [0.2, 0.2, 0.4, 0.4]]])
    return AutoPromptOutput(
        logits=logits,
        class_mask_logits=logits[:, 1:],
        coarse_logits=logits[:, 1:],
        boxes=box,
        presence_logits=(present * 2 - 1) * strength,
    )


def test_a_correct_output_has_near_zero_loss_and_a_wrong_one_does_not() -> None:
    loss = AutoPromptLoss(K, LossConfig())
    target = target_map()
    good = loss(output_for(target, correct=True), target)
    bad = loss(output_for(target, correct=False), target)
    for name in ("ce_dice", "coarse", "box", "presence", "total"):
        assert good[name] < 0.05, name
        assert bad[name] > 0.5, name
    weighted = bad["ce_dice"] + 2.0 * bad["coarse"] + 0.5 * bad["box"] + 0.0 * bad["presence"]
    reweighted = AutoPromptLoss(K, LossConfig(coarse=2.0, box=0.5, presence=0.0))(
        output_for(target, correct=False), target
    )
    assert torch.isclose(reweighted["total"], weighted)


def test_softmax_coarse_term_is_monais_dice_ce_on_the_coarse_label_map() -> None:
    from monai.losses import DiceCELoss

    torch.manual_seed(2)
    target = torch.randint(0, K + 1, (2, SIZE, SIZE))
    coarse = torch.randn(2, K, SIZE, SIZE) * 3
    output = AutoPromptOutput(
        logits=torch.randn(2, K + 1, SIZE, SIZE),
        class_mask_logits=coarse,
        coarse_logits=coarse,
        boxes=torch.tensor([[0.1, 0.1, 0.6, 0.6]]).repeat(2, K, 1),
        presence_logits=torch.zeros(2, K),
    )
    label_map = torch.cat([torch.zeros_like(coarse[:, :1]), coarse], dim=1)
    expected = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(
        label_map, target[:, None]
    )
    coarse_term = AutoPromptLoss(K, LossConfig(coarse_softmax=True))(output, target)["coarse"]
    assert float(coarse_term) == pytest.approx(float(expected), rel=1e-4)
    # two classes claiming one pixel cost more as a label map than as independent masks
    assert float(coarse_term) != pytest.approx(
        float(AutoPromptLoss(K, LossConfig())(output, target)["coarse"])
    )


def test_boxes_of_absent_classes_are_not_penalised() -> None:
    loss = AutoPromptLoss(K, LossConfig())
    target = target_map()
    output = output_for(target, correct=True)
    moved = AutoPromptOutput(**{**output.__dict__, "boxes": output.boxes.clone()})
    moved.boxes[0, 1] = torch.tensor([0.5, 0.5, 0.6, 0.6])  # class 2 is absent: its box is free
    assert torch.isclose(loss(moved, target)["box"], loss(output, target)["box"])
    empty = torch.zeros_like(target)
    assert loss(output_for(empty, correct=True), empty)["box"] == 0


def test_3d_leading_dims_are_flattened() -> None:
    loss = AutoPromptLoss(K, LossConfig())
    target = target_map(with_class_2=True)  # both present: Dice smoothing does not depend on the batch
    flat = output_for(target, correct=False)
    stacked = AutoPromptOutput(
        **{
            name: value[:, None].repeat(1, 3, *[1] * (value.ndim - 1))
            for name, value in flat.__dict__.items()
            if value is not None
        }
    )
    terms_3d = loss(stacked, target[:, None].repeat(1, 3, 1, 1))
    terms_2d = loss(flat, target)
    for name in terms_2d:
        assert torch.isclose(terms_3d[name], terms_2d[name], atol=1e-5), name


@pytest.mark.parametrize(
    ("total", "warmup", "step", "expected"),
    [
        (40, 3, 0, 1 / 4),  # warm-up: (t + 1) / (warmup + 1)
        (40, 3, 2, 3 / 4),
        (40, 3, 3, 1.0),  # warm-up over: start of the decay
        (40, 3, 23, (1 - 20 / 37) ** 0.9),
        (40, 3, 40, 0.0),  # the end
        (20, 5, 1, 2 / 3),  # warm-up capped at a tenth of the run: 2 steps
        (20, 5, 2, 1.0),
        (20, 5, 11, (1 - 9 / 18) ** 0.9),
    ],
)
def test_warmup_then_poly(total: int, warmup: int, step: int, expected: float) -> None:
    schedule = WarmupPolySchedule(total_steps=total, warmup_steps=warmup, exponent=0.9)
    assert math.isclose(schedule(step), expected, abs_tol=1e-12)


def test_a_shortened_run_decays_to_zero_at_its_new_end() -> None:
    schedule = WarmupPolySchedule(total_steps=100, warmup_steps=5, exponent=0.9)
    schedule.total_steps = 30  # a time budget fits fewer epochs
    assert schedule(30) == 0.0 and 0.0 < schedule(29) < schedule(10)


@pytest.mark.parametrize(
    ("remaining", "seconds_per_epoch", "finished", "cap", "expected"),
    [
        (3450.0, 150.0, 1, 1000, 24),  # 1 done + 3450 s // 150 s
        (3380.0, 151.0, 1, 1000, 23),  # 22.4 more: the nearest whole number
        (3450.0, 151.0, 1, 1000, 24),  # 22.8 more: the last one ends 27 s after the budget
        (-1400.0, 5000.0, 1, 1000, 1),  # one epoch longer than the budget: keep the one already done
        (-10.0, 400.0, 12, 1000, 12),  # the budget is spent: never fewer than the finished ones
        (3599.0, 1.0, 1, 50, 50),  # a fast device stops at the configured epochs
        (200.0, 246.8, 5.5, 1000, 6),  # half-way through the 6th epoch: it is the last one
        (500.0, 200.0, 5.5, 1000, 8),  # ... or two more follow it
        (1800.0, 1318.0, 0.08, 1000, 1),  # a slow first probe plans the epoch under way only
    ],
)
def test_epochs_in_budget(
    remaining: float, seconds_per_epoch: float, finished: float, cap: int, expected: int
) -> None:
    assert epochs_in_budget(remaining, seconds_per_epoch, finished=finished, cap=cap) == expected


@pytest.mark.parametrize(
    ("windows", "limit", "expected"),
    [
        (54, None, 50),  # no limit: the configured epochs
        (54, 10.0, 11),  # 540 steps: 10.8 epochs of 50, rounded up
        (400, 10.0, 50),  # a larger set: the configured epochs come first
        (2, 1.0, 1),  # never less than one epoch
    ],
)
def test_epochs_for_training_windows(windows: int, limit: float | None, expected: int) -> None:
    epochs = epochs_for_training_windows(
        50, iterations_per_epoch=50, training_windows=windows, max_steps_per_window=limit
    )
    assert epochs == expected


@pytest.mark.parametrize(
    ("trained", "budget", "seconds", "expected"),
    [
        (50, None, 0.0, 1),  # the step limit did not end the run: one model
        (11, None, 0.0, 3),  # 50 epochs pay for 4 runs of 11: at most 3 members
        (28, None, 0.0, 1),  # 50 epochs do not pay for a second run of 28
        (11, 1800.0, 500.0, 3),  # 3 runs of 500 s fit 30 minutes
        (11, 1800.0, 700.0, 2),  # 2 runs of 700 s fit
        (11, 1800.0, 2000.0, 1),  # the budget ended the first run: no more
    ],
)
def test_ensemble_size(trained: int, budget: float | None, seconds: float, expected: int) -> None:
    size = ensemble_size(
        configured_epochs=50,
        trained_epochs=trained,
        max_members=3,
        budget_seconds=budget,
        seconds_per_member=seconds,
    )
    assert size == expected


def test_a_plan_after_slow_first_epochs_follows_the_recent_ones() -> None:
    seconds = [548.0, 298.0, 261.0, 232.0, 227.0]  # a cold disk cache, then a faster machine
    assert recent_epoch_seconds(seconds) == 232.0 and recent_epoch_seconds(seconds[:1]) == 548.0
    # 1800 s budget: 234 s are left, one more epoch at the recent speed
    left = 1800.0 - sum(seconds)
    assert epochs_in_budget(left, recent_epoch_seconds(seconds), finished=5, cap=1000) == 6


def test_long_epochs_do_not_leave_most_of_one_unused() -> None:
    seconds = [635.2, 616.2]  # 3d on a CPU: 549 s of 1800 left, 0.88 of an epoch
    left = 1800.0 - sum(seconds)
    assert epochs_in_budget(left, recent_epoch_seconds(seconds), finished=2, cap=1000) == 3


def test_amp_modes() -> None:
    from autoprompt.errors import AutoPromptError
    from pipeline.training.trainer import amp_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # "auto": tests/runtime/test_precision.py
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("none", cuda) is None
    assert amp_dtype("fp16", cuda) is torch.float16
    with pytest.raises(AutoPromptError, match="amp=fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)
