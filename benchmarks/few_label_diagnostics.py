"""Why do classes vanish on unseen cases? Per-term diagnostics of a trained fold on its validation cases.

For every validation window (the fixed inference windows, cached embeddings of view 0) and every class
present in it (at least ``--min-pixels`` ground-truth pixels), the terms of the prompt generator and the
decoder are scored against the ground truth:

- ``presence``: sigmoid of the presence logit (1 = "present");
- ``box_iou``: IoU of SAM's first box (the regressed box, or the coarse label map's box with
  ``box_source: coarse_mask``) with the ground-truth box;
- ``coarse_dice``: Dice of the coarse mask (logit > 0);
- ``decoder_dice``: Dice of SAM's mask for the class (logit > 0) before presence;
- ``teacher_dice``: the same with the ground-truth box given to SAM instead of the generated one (one
  decoder pass: no box refinement);
- ``final_dice``: Dice of the final label map (argmax) for the class;
- ``pretrained_box_dice``: the backbone's own, untrained mask decoder given only the ground-truth box (SAM
  as MedSAM is used interactively): what SAM's prior alone makes of the window.

A window's class is "lost" when its final Dice is below 0.1; each lost one is attributed to the first
failing term in the chain presence (< 0.5) -> box (IoU < 0.3) -> coarse mask (Dice < 0.1) -> decoder.
Writes JSON (means per class, the lost windows and their causes)::

    python -m benchmarks.few_label_diagnostics MODEL_FOLDER --fold 0 --preprocessed PRE/Dataset227_ACDCcv -o diag.json

``--cases`` diagnoses other cases preprocessed and cached in ``--preprocessed`` (a test case that another
fold trained on), e.g. a fold-``all`` model: ``--fold all --checkpoint final --cases chaos_015``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from autoprompt.allocator import retain_freed_memory
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.prompt_generators import boxes_from_masks
from pipeline.checkpoint import load_checkpoint
from pipeline.files import load_json, save_json
from pipeline.model_folder import ModelFolder
from pipeline.training.data import crop_window, fixed_windows, load_training_cases
from pipeline.training.embedding_cache import EmbeddingCache

ROOT = Path(__file__).resolve().parents[1]

TERMS = (
    "presence",
    "box_iou",
    "coarse_dice",
    "decoder_dice",
    "teacher_dice",
    "final_dice",
    "pretrained_box_dice",
)


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = int(a.sum() + b.sum())
    return 2 * int((a & b).sum()) / total if total else 1.0


def box_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    x0, y0 = torch.maximum(a[:2], b[:2])
    x1, y1 = torch.minimum(a[2:], b[2:])
    inter = float((x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0))
    area = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / area if area > 0 else 0.0


def cause(record: dict) -> str:
    if record["presence"] < 0.5:
        return "presence"
    if record["box_iou"] < 0.3:
        return "box"
    if record["coarse_dice"] < 0.1:
        return "coarse_mask"
    return "decoder"


def pretrained_box_logits(
    backbone: SamBackbone, embeddings: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """``W x K x S x S`` mask logits of the untrained ``backbone`` decoder for ``W x 256 x 64 x 64``
    ``embeddings`` and ``W x K x 4`` ``boxes`` (xyxy in [0, 1] of the window), one box per prompt, no mask prompt."""
    prompt_encoder, decoder = backbone.prompt_encoder, backbone.mask_decoder
    size = prompt_encoder.input_image_size[0]
    w, k = boxes.shape[:2]
    sparse, dense = prompt_encoder(points=None, boxes=boxes.reshape(-1, 4) * size, masks=None)
    logits, _ = decoder(
        image_embeddings=embeddings.repeat_interleave(k, dim=0),
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return torch.nn.functional.interpolate(logits, size=backbone.model_input_size, mode="bilinear").reshape(
        w, k, backbone.model_input_size, backbone.model_input_size
    )


def class_names(folder: ModelFolder) -> list[str]:
    """The foreground class names in label order."""
    return [n for n, v in sorted(folder.plans.labels.items(), key=lambda kv: kv[1]) if v]


def validation_windows(
    folder: ModelFolder,
    fold: int | str,
    checkpoint: str,
    preprocessed: Path,
    cases: list[str] | None = None,
) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """Every slice of the fold's validation cases (or of ``cases``, preprocessed and cached in
    ``preprocessed``) in the fixed inference windows, from the embedding cache.

    Yields:
        ``(case, slice, embeddings W x 256 x 64 x 64 float32, labels W x S x S int64)``, W windows per slice
        (view 0 of the cache the fold was trained with, found by its backbone checksum).
    """
    state = load_checkpoint(folder.fold_dir(fold) / f"checkpoint_{checkpoint}.pt")
    val_ids = cases or load_json(preprocessed / "splits_final.json")[int(fold)]["val"]
    plan = folder.plans.configuration(folder.configuration)
    k = folder.plans.num_foreground_classes
    cases = load_training_cases(preprocessed / plan.data_identifier, val_ids, labels=range(1, k + 1), seed=0)
    cache_dirs = [p.parent for p in (preprocessed / "embeddings").glob("*/cache.json")]
    parts = next(
        load_json(d / "cache.json")
        for d in cache_dirs
        if load_json(d / "cache.json")["backbone_checksum"] == state["metadata"]["backbone_checksum"]
    )
    parts.pop("key")
    cache = EmbeddingCache(preprocessed, parts)
    window = tuple(plan.window_size)
    for case in cases:
        embeddings = np.load(cache.path(case.name), mmap_mode="r")
        corners = fixed_windows(case.data.shape[-2:], window)
        for s in range(case.num_slices):
            labels = np.stack([crop_window(np.asarray(case.seg[s]), *corner, window) for corner in corners])
            yield (
                case.name,
                s,
                torch.from_numpy(np.asarray(embeddings[s]).astype(np.float32)),
                torch.from_numpy(labels.astype(np.int64)),
            )


def fold_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the arguments naming a trained fold: MODEL_FOLDER, --fold, --checkpoint, --preprocessed."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_folder")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--preprocessed", required=True, help="PREPROCESSED/DatasetXXX_Name of the training")
    return parser


def main() -> None:
    parser = fold_parser(__doc__)
    parser.add_argument("--min-pixels", type=int, default=50)
    parser.add_argument(
        "--cases",
        nargs="+",
        help="diagnose these cases of --preprocessed (cached there) instead of the fold's validation cases, "
        "e.g. test cases another fold trained on",
    )
    parser.add_argument(
        "--presence-floor", type=float, help="evaluate with this presence floor instead of the trained one"
    )
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument(
        "--box-source",
        choices=("head", "coarse_mask"),
        help="evaluate with this box source instead of the trained one",
    )
    parser.add_argument(
        "--box-refinement",
        type=int,
        help="evaluate with this many refinement passes instead of the trained one",
    )
    args = parser.parse_args()
    retain_freed_memory()  # as the autoprompt command: no page faults on every layer's buffers

    folder = ModelFolder(args.model_folder)
    fold = int(args.fold) if args.fold.isdigit() else args.fold
    model = folder.load_model(fold, checkpoint=args.checkpoint, device="cpu")
    if args.presence_floor is not None:
        model.presence_floor = args.presence_floor
    if args.box_source is not None:
        model.box_source = args.box_source
    if args.box_refinement is not None:
        model.box_refinement = args.box_refinement
    refinement = model.box_refinement
    pretrained = load_backbone(folder.trainer_config.model.backbone).eval()
    k = folder.plans.num_foreground_classes
    names = class_names(folder)
    records: list[dict] = []
    for case_name, s, emb, labels in validation_windows(
        folder, fold, args.checkpoint, Path(args.preprocessed), args.cases
    ):
        one_hot = torch.stack([labels == c for c in range(1, k + 1)], dim=1)  # W x K x h x w
        if not one_hot.flatten(2).sum(-1).ge(args.min_pixels).any():
            continue
        truth_boxes = boxes_from_masks(one_hot)
        with torch.inference_mode():
            out = model(embeddings=emb)
            model.box_refinement = 0
            teacher = model(
                embeddings=emb,
                teacher_boxes=truth_boxes,
                teacher_mask=torch.ones(len(labels), dtype=torch.bool),
            )
            model.box_refinement = refinement
            untrained = pretrained_box_logits(pretrained, emb, truth_boxes)
        final = out.logits.argmax(dim=1)
        first_boxes = model.first_boxes(boxes=out.boxes, coarse_logits=out.coarse_logits)
        for w in range(len(labels)):
            for c in range(k):
                if int(one_hot[w, c].sum()) < args.min_pixels:
                    continue
                truth = one_hot[w, c]
                record = {
                    "case": case_name,
                    "slice": s,
                    "window": w,
                    "class": names[c],
                    "pixels": int(truth.sum()),
                    "presence": float(torch.sigmoid(out.presence_logits[w, c])),
                    "box_iou": box_iou(first_boxes[w, c], truth_boxes[w, c]),
                    "coarse_dice": dice(out.coarse_logits[w, c] > 0, truth),
                    "decoder_dice": dice(out.class_mask_logits[w, c] > 0, truth),
                    "teacher_dice": dice(teacher.class_mask_logits[w, c] > 0, truth),
                    "final_dice": dice(final[w] == c + 1, truth),
                    "pretrained_box_dice": dice(untrained[w, c] > 0, truth),
                }
                records.append(record)
    summary: dict = {
        "model_folder": str(folder.path),
        "fold": fold,
        "cases": args.cases,
        "presence_floor": model.presence_floor,
        "box_source": model.box_source,
        "box_refinement": refinement,
        "windows": len(records),
        "classes": {},
    }
    for name in names:
        mine = [r for r in records if r["class"] == name]
        lost = [r for r in mine if r["final_dice"] < 0.1]
        summary["classes"][name] = {
            "windows": len(mine),
            **{term: float(np.mean([r[term] for r in mine])) if mine else None for term in TERMS},
            "lost": len(lost),
            "lost_causes": {
                c: sum(cause(r) == c for r in lost) for c in ("presence", "box", "coarse_mask", "decoder")
            },
            "lost_with_teacher_box_ok": sum(r["teacher_dice"] >= 0.5 for r in lost),
        }
    summary["lost_windows"] = [r for r in records if r["final_dice"] < 0.1]
    save_json(summary, args.output)
    print(json.dumps(summary["classes"], indent=1))


if __name__ == "__main__":
    main()
