"""Prompts from the ground truth during training (teacher forcing of SAM's box prompts).

With probability ``p`` per sample, SAM's prompt encoder gets the sample's ground-truth boxes instead of
the generated ones, each corner moved by up to :data:`BOX_JITTER` of the window (MedSAM trains with
such perturbed boxes), so the mask decoder keeps learning from good prompts while the prompt generator
is still poor. The generated boxes are still trained by their own loss.
"""

from __future__ import annotations

import torch

from autoprompt.modeling.prompt_generators import boxes_from_masks

BOX_JITTER = 0.02  # a corner moves by up to this fraction of the window (5 pixels of 256)


def jittered_truth_boxes(
    target: torch.Tensor, num_classes: int, *, probability: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jittered ground-truth boxes and which samples use them.

    Args:
        target: ``L x h x w`` int labels in ``0..K``.
        num_classes: K.
        probability: chance that a sample uses the boxes.
        generator: a CPU generator (draws the jitter and the choice).

    Returns:
        ``L x K x 4`` boxes ``xyxy`` in [0, 1] (an absent class gets the whole window) and an ``L`` bool
        mask, both on ``target``'s device.
    """
    one_hot = torch.stack([target == c for c in range(1, num_classes + 1)], dim=-3)  # L x K x h x w
    boxes = boxes_from_masks(one_hot).cpu()
    jitter = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * BOX_JITTER
    low = (boxes[..., :2] + jitter[..., :2]).clamp(0, 1)
    high = torch.maximum((boxes[..., 2:] + jitter[..., 2:]).clamp(0, 1), low)
    use = torch.rand(target.shape[:-2], generator=generator) < probability
    return torch.cat([low, high], dim=-1).to(target.device), use.to(target.device)
