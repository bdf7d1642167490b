"""The training loss: segmentation loss on the final output plus the prompt generator's auxiliary terms.

``total = ce_dice + w_coarse * coarse + w_box * box + w_presence * presence`` where

* ``ce_dice``: MONAI ``DiceCELoss`` (softmax, one-hot target, unweighted sum of cross-entropy and
  Dice) on the final ``(K+1)``-class logits; the Dice part leaves the background out and is computed
  over the whole batch (nnU-Net's batch Dice), so classes absent from one window do not dominate it;
* ``coarse``: Dice (MONAI ``DiceLoss``, sigmoid, batch) + binary cross-entropy of the coarse masks
  against each class's mask; with ``LossConfig.coarse_softmax`` the coarse masks are scored as one label
  map instead (softmax over a background logit 0 and the K coarse logits, as the model's coarse label map
  for boxes): cross-entropy + batch Dice without background, so classes compete for a pixel;
* ``box``: L1 + generalised IoU (``torchvision.ops.generalized_box_iou_loss``) of the regressed boxes
  against the ground-truth boxes (``boxes_from_masks``), for the classes present in a window only;
* ``presence``: binary cross-entropy of the presence logits against "class present in the window".

nnU-Net's ignore label (dataset.json's ``"ignore"``, its highest value, so ``K + 1`` in the target):
its voxels are left out of the cross-entropy and of both Dice terms, and a window that holds any gets no
box or presence term (what is under the unannotated part is unknown). Without ignore voxels the loss
is exactly the unmasked one.

With a decoder region (:attr:`AutoPromptOutput.decoder_region`, training on a square of each window) the
final logits cover the squares only: ``ce_dice`` scores them against the squares of the target, the
prompt terms still see the whole window.

Every term is returned separately for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from autoprompt.modeling.autoprompt_sam import AutoPromptOutput
from autoprompt.modeling.prompt_generators import boxes_from_masks
from pipeline.trainer_config import LossConfig

LOSS_TERMS = ("ce_dice", "coarse", "box", "presence")


class AutoPromptLoss(nn.Module):
    """Loss of an :class:`AutoPromptOutput` against a label map.

    Args:
        num_classes: ``K`` foreground classes.
        weights: weights of the auxiliary terms.
    """

    def __init__(self, num_classes: int, weights: LossConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weights = weights
        self.ce_dice = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )
        self.coarse_dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, output: AutoPromptOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute every term.

        Args:
            output: the model output; leading dims ``L`` = ``(B,)`` or ``(B, D)``.
            target: ``L x h x w`` int64 labels in ``0..K``; ``K + 1`` (the ignore label) is masked out.

        Returns:
            ``{"total", "ce_dice", "coarse", "box", "presence"}`` scalar tensors.
        """
        k = self.num_classes
        logits = output.logits.reshape(-1, k + 1, *output.logits.shape[-2:]).float()
        labels = target.reshape(-1, *target.shape[-2:])
        valid = labels <= k  # N x h x w; False on the ignore label
        if not bool(valid.all()):
            return self._masked(output, labels, valid)
        one_hot = torch.stack([labels == c for c in range(1, k + 1)], dim=1)  # N x K x h x w
        coarse_logits = output.coarse_logits.reshape(-1, k, *output.coarse_logits.shape[-2:]).float()
        coarse_target = one_hot.float()
        if coarse_target.shape[-2:] != coarse_logits.shape[-2:]:
            coarse_target = F.interpolate(coarse_target, size=coarse_logits.shape[-2:], mode="nearest")

        box, presence = self._prompt_terms(
            output, one_hot, complete=labels.new_ones(labels.shape[0], dtype=torch.bool)
        )
        decoded_labels = labels if output.decoder_region is None else output.decoder_region.crop(labels)
        if self.weights.coarse_softmax:
            coarse = _softmax_coarse(coarse_logits, coarse_target, torch.ones_like(coarse_target[:, :1]))
        else:
            coarse = self.coarse_dice(coarse_logits, coarse_target) + F.binary_cross_entropy_with_logits(
                coarse_logits, coarse_target
            )
        terms = {
            "ce_dice": self.ce_dice(logits, decoded_labels[:, None]),
            "coarse": coarse,
            "box": box,
            "presence": presence,
        }
        return self._with_total(terms)

    def _prompt_terms(
        self, output: AutoPromptOutput, one_hot: torch.Tensor, *, complete: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Box and presence terms over the windows whose labels are ``complete`` (``N`` bool).

        Args:
            one_hot: ``N x K x h x w`` class masks.
        """
        k = self.num_classes
        present = one_hot.flatten(2).any(dim=2)  # N x K
        boxes = output.boxes.reshape(-1, k, 4).float()
        presence_logits = output.presence_logits.reshape(-1, k).float()
        scored = present & complete[:, None]
        if scored.any():
            target_boxes = boxes_from_masks(one_hot)[scored].to(boxes.dtype)
            predicted = boxes[scored]
            box = F.l1_loss(predicted, target_boxes) + generalized_box_iou_loss(
                predicted, target_boxes, reduction="mean"
            )
        else:
            box = boxes.sum() * 0.0
        if complete.any():
            presence = F.binary_cross_entropy_with_logits(
                presence_logits[complete], present[complete].float()
            )
        else:
            presence = presence_logits.sum() * 0.0
        return box, presence

    def _with_total(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms["total"] = (
            terms["ce_dice"]
            + self.weights.coarse * terms["coarse"]
            + self.weights.box * terms["box"]
            + self.weights.presence * terms["presence"]
        )
        return terms

    def _masked(
        self, output: AutoPromptOutput, labels: torch.Tensor, valid: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The terms with the ignore label's voxels (``~valid``, ``N x h x w``) left out."""
        k = self.num_classes
        mask = valid[:, None].float()  # N x 1 x h x w
        known = torch.where(valid, labels, 0)
        one_hot = torch.stack([known == c for c in range(1, k + 1)], dim=1)  # N x K x h x w
        ce_dice = self._masked_ce_dice(output, known, valid)

        coarse_logits = output.coarse_logits.reshape(-1, k, *output.coarse_logits.shape[-2:]).float()
        coarse_target, coarse_mask = one_hot.float(), mask
        if coarse_target.shape[-2:] != coarse_logits.shape[-2:]:
            coarse_target = F.interpolate(coarse_target, size=coarse_logits.shape[-2:], mode="nearest")
            coarse_mask = F.interpolate(mask, size=coarse_logits.shape[-2:], mode="nearest")
        if self.weights.coarse_softmax:
            coarse = _softmax_coarse(coarse_logits, coarse_target, coarse_mask)
        else:
            bce = (
                F.binary_cross_entropy_with_logits(coarse_logits, coarse_target, reduction="none")
                * coarse_mask
            )
            coarse = _masked_dice(coarse_logits.sigmoid(), coarse_target, coarse_mask) + bce.sum() / (
                coarse_mask.sum() * k
            ).clamp(min=1)

        # windows with ignore voxels: which classes they hold, and where, is unknown
        complete = valid.flatten(1).all(dim=1)  # N
        box, presence = self._prompt_terms(output, one_hot, complete=complete)
        terms = {"ce_dice": ce_dice, "coarse": coarse, "box": box, "presence": presence}
        return self._with_total(terms)

    def _masked_ce_dice(
        self, output: AutoPromptOutput, known: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy + batch Dice without background of the final logits over the annotated voxels (as
        ``DiceCELoss``), on the decoder's squares when it has any.

        Args:
            known: ``N x h x w`` labels, 0 where unannotated.
            valid: ``N x h x w`` bool, False on the ignore label.
        """
        k = self.num_classes
        logits = output.logits.reshape(-1, k + 1, *output.logits.shape[-2:]).float()
        if output.decoder_region is not None:
            known, valid = output.decoder_region.crop(known), output.decoder_region.crop(valid)
        one_hot = torch.stack([known == c for c in range(1, k + 1)], dim=1).float()
        cross_entropy = (F.cross_entropy(logits, known, reduction="none") * valid).sum() / valid.sum().clamp(
            min=1
        )
        return cross_entropy + _masked_dice(logits.softmax(dim=1)[:, 1:], one_hot, valid[:, None].float())


def _softmax_coarse(coarse_logits: torch.Tensor, one_hot: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + batch Dice (no background) of the coarse label map, over voxels where ``mask`` is 1.

    Args:
        coarse_logits: ``N x K x h x w``; the background logit is 0.
        one_hot: ``N x K x h x w`` class masks (float).
        mask: ``N x 1 x h x w``, 1 where the label is known.
    """
    log_probabilities = torch.cat([torch.zeros_like(coarse_logits[:, :1]), coarse_logits], dim=1).log_softmax(
        1
    )
    target = torch.cat([1.0 - one_hot.sum(dim=1, keepdim=True), one_hot], dim=1)
    cross_entropy = -(target * log_probabilities).sum(dim=1, keepdim=True) * mask
    dice = _masked_dice(log_probabilities[:, 1:].exp(), one_hot, mask)
    return cross_entropy.sum() / mask.sum().clamp(min=1) + dice


def _masked_dice(probabilities: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MONAI's batch Dice loss (smooth 1e-5, mean over channels) of ``N x C x h x w`` probabilities against
    a one-hot target, counting only voxels where ``mask`` (``N x 1 x h x w``) is 1."""
    probabilities, target = probabilities * mask, target * mask
    axes = (0, 2, 3)
    intersection = (probabilities * target).sum(dim=axes)
    denominator = probabilities.sum(dim=axes) + target.sum(dim=axes)
    return (1.0 - (2.0 * intersection + 1e-5) / (denominator + 1e-5)).mean()
