"""Which boxes should SAM get at inference? Box variants of one trained fold, scored on its validation cases.

The same trained network (no retraining) decodes every validation slice in the fixed inference windows
(cached embeddings of view 0, no TTA) with SAM's boxes taken from:

- ``coarse_union``: the bounding box of each class's coarse mask above 0.5, classes independent;
- ``head``: the regressed boxes;
- ``label_map_R<n>``: the bounding box of each class in the coarse label map (a pixel belongs to the
  class with the largest positive coarse logit), then n refinement passes (each from the previous label
  map): ``model.box_source=coarse_mask`` with ``model.box_refinement=n``;
- ``label_map_largest_component``: the label map's largest connected component per class;
- ``label_map_expanded_10``: the label-map boxes widened by 10 % of their size on every side;
- ``heart``: one box for every class, around all classes of the label map together (the organ group is
  easier to find than each class; the class tokens and coarse masks then tell the classes apart);
- ``truth``: each class's ground-truth box (an upper bound: how good the decoder is given the right box).

Per case, the Dice of each class is pooled over all its windows (the absent-class windows count, so false
positives cost); reported are per-class means over cases, the mean, the worst case and the number of
(case, class) pairs below 0.1 ("lost"). Writes JSON::

    python -m benchmarks.box_prompts MODEL_FOLDER --fold 0 --preprocessed PRE/Dataset227_ACDCcv -o boxes.json
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
from autoprompt.modeling.prompt_generators import boxes_from_masks, exclusive_masks
from benchmarks.few_label_diagnostics import class_names, fold_parser, validation_windows
from pipeline.files import save_json
from pipeline.model_folder import ModelFolder

LOST_DICE = 0.1


def largest_components(masks: torch.Tensor) -> torch.Tensor:
    """``N x K x H x W`` boolean -> the same with only the largest 8-connected component of each mask."""
    kept = np.zeros(masks.shape, dtype=bool)
    array = masks.numpy()
    for index in np.ndindex(array.shape[:2]):
        labelled, count = ndimage.label(array[index], structure=np.ones((3, 3)))
        if count:
            sizes = ndimage.sum(array[index], labelled, range(1, count + 1))
            kept[index] = labelled == 1 + int(np.argmax(sizes))
    return torch.from_numpy(kept)


def expanded(boxes: torch.Tensor, fraction: float) -> torch.Tensor:
    """``... x 4`` ``xyxy`` boxes widened by ``fraction`` of their width/height on each side, clipped to [0, 1]."""
    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    delta = torch.stack([-width, -height, width, height], dim=-1) * fraction
    return (boxes + delta).clamp(0.0, 1.0)


def labels_with_boxes(model: AutoPromptSAM, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``W x S x S`` label maps with ``W x K x 4`` boxes given to SAM (one decoder pass)."""
    refinement, model.box_refinement = model.box_refinement, 0
    try:
        out = model(
            embeddings=embeddings, teacher_boxes=boxes, teacher_mask=torch.ones(len(boxes), dtype=torch.bool)
        )
    finally:
        model.box_refinement = refinement
    return out.logits.argmax(dim=1)


def variant_labels(
    model: AutoPromptSAM, embeddings: torch.Tensor, labels: torch.Tensor, passes: int
) -> dict[str, torch.Tensor]:
    """Every variant's ``W x S x S`` label maps for one slice's windows (``labels``: ``W x S x S`` truth)."""
    model.box_source, model.box_refinement = "coarse_mask", 0
    first = model(embeddings=embeddings)
    label_map = exclusive_masks(first.coarse_logits)
    boxes: dict[str, Callable[[], torch.Tensor]] = {
        "coarse_union": lambda: boxes_from_masks(first.coarse_logits > 0),
        "head": lambda: first.boxes,
        "label_map_largest_component": lambda: boxes_from_masks(largest_components(label_map)),
        "label_map_expanded_10": lambda: expanded(boxes_from_masks(label_map), 0.1),
        "heart": lambda: boxes_from_masks(label_map.any(dim=1))[:, None].expand(-1, label_map.shape[1], -1),
        "truth": lambda: boxes_from_masks(
            labels[:, None] == torch.arange(1, label_map.shape[1] + 1)[None, :, None, None]
        ),
    }
    results = {name: labels_with_boxes(model, embeddings, make()) for name, make in boxes.items()}
    for refinement in range(passes + 1):
        model.box_refinement = refinement
        results[f"label_map_R{refinement}"] = model(embeddings=embeddings).logits.argmax(dim=1)
    return results


def main() -> None:
    parser = fold_parser(__doc__)
    parser.add_argument("--passes", type=int, default=3, help="refinement passes to score (0..passes)")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()

    folder = ModelFolder(args.model_folder)
    fold = int(args.fold) if args.fold.isdigit() else args.fold
    model = folder.load_model(fold, checkpoint=args.checkpoint, device="cpu")
    k = folder.plans.num_foreground_classes
    names = class_names(folder)
    counts: dict[str, dict[str, np.ndarray]] = {}  # variant -> case -> K x (intersection, size sum)
    for case, _, embeddings, labels in validation_windows(
        folder, fold, args.checkpoint, Path(args.preprocessed)
    ):
        with torch.inference_mode():
            predictions = variant_labels(model, embeddings, labels, args.passes)
        for variant, predicted in predictions.items():
            tally = counts.setdefault(variant, {}).setdefault(case, np.zeros((k, 2)))
            for c in range(k):
                mine, truth = predicted == c + 1, labels == c + 1
                tally[c] += (int((mine & truth).sum()), int(mine.sum() + truth.sum()))
    summary: dict = {"model_folder": str(folder.path), "fold": fold, "variants": {}}
    for variant, per_case in counts.items():
        dice = np.array([[2 * i / s if s else 1.0 for i, s in tally] for tally in per_case.values()])
        case_means = dice.mean(axis=1)
        summary["variants"][variant] = {
            "dice": dict(zip(names, dice.mean(axis=0).round(4).tolist(), strict=True)),
            "mean_dice": round(float(dice.mean()), 4),
            "worst_case": list(per_case)[int(case_means.argmin())],
            "worst_case_dice": round(float(case_means.min()), 4),
            "lost_case_classes": int((dice < LOST_DICE).sum()),
        }
    save_json(summary, args.output)
    print(json.dumps(summary["variants"], indent=1))


if __name__ == "__main__":
    main()
