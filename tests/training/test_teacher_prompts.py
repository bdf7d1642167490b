"""Ground-truth box prompts for training: jitter bounds, absent classes, share of samples."""

from __future__ import annotations

import torch

from pipeline.training.teacher_prompts import BOX_JITTER, jittered_truth_boxes


def test_jittered_truth_boxes_stay_near_the_truth_and_follow_the_probability():
    target = torch.zeros(400, 32, 32, dtype=torch.int64)
    target[:, 8:16, 4:20] = 1  # class 1: rows 8-15, columns 4-19; class 2 absent
    generator = torch.Generator().manual_seed(0)
    boxes, use = jittered_truth_boxes(target, 2, probability=0.3, generator=generator)
    assert boxes.shape == (400, 2, 4) and use.shape == (400,) and use.dtype == torch.bool
    truth = torch.tensor([4 / 32, 8 / 32, 20 / 32, 16 / 32])
    assert float((boxes[:, 0] - truth).abs().max()) <= BOX_JITTER + 1e-6
    assert float((boxes[:, 0] - truth).abs().max()) > 0  # jittered, not exact
    assert bool((boxes[..., :2] <= boxes[..., 2:]).all()) and bool(((boxes >= 0) & (boxes <= 1)).all())
    assert float((boxes[:, 1, 2:] - 1).abs().max()) <= BOX_JITTER + 1e-6  # absent: about the whole window
    assert 0.2 < float(use.float().mean()) < 0.4
    again, use_again = jittered_truth_boxes(
        target, 2, probability=0.3, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again, boxes) and torch.equal(use_again, use)
