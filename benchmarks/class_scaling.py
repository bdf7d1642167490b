"""How AutoPromptSAM's training and prediction time grow with the number of classes K (issue #17).

SAM's mask decoder runs once per class and window, so its work grows with K. For each K (3, 4 and 15 by
default), with the real backbone and the model settings of a trainer preset (``2d_frozen``), the median
over ``--repeats`` (after one warm-up) of:

- ``train_step_ms``: one training step from cached embeddings: forward, the training loss and backward
  (no optimiser step), for ``--batch`` random embeddings ``B x 256 x 64 x 64`` and random label maps;
  its memory grows with ``B * K`` (every prompt keeps its decoder activations for backward): lower
  ``--batch`` where memory is short;
- ``predict_window_ms``: prediction of one window from its embedding in eval mode: the prompt generator
  and every decoder pass (1 + ``model.box_refinement``), every class decoded;
- ``predict_window_skipping_ms``: the same with ``model.skip_presence_below`` on, the presence head forced
  so that ``--present`` of the K classes are present (decoded) and the others absent (skipped);

and once, for scale, ``encoder``: the image encoder's milliseconds on one window (the preset's encoder
runtime, or ``--encoder-runtime``). Everything runs in fp32 on untrained heads (weights change no cost).

    .venv/bin/python -m benchmarks.class_scaling                # CPU, writes benchmarks/results/class_scaling_cpu.json
    .venv/bin/python -m benchmarks.class_scaling --classes 3 4 15 --repeats 5 --present 3
    .venv/bin/python -m benchmarks.class_scaling --device cuda -o benchmarks/results/class_scaling_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from autoprompt.allocator import retain_freed_memory
from autoprompt.benchmarking.measurement import (
    load_average,
    machine_info,
    markdown_table,
    median_seconds,
    peak_memory_mib,
)
from autoprompt.devices import resolve_device
from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.config import ENCODER_RUNTIMES, ModelConfig
from autoprompt.precision import Precision
from pipeline.files import check_output_file, save_json
from pipeline.trainer_config import TrainerConfig, load_trainer_config
from pipeline.training.losses import AutoPromptLoss

REPO = Path(__file__).resolve().parents[1]
FORCED_PRESENCE_LOGIT = 8.0
"""The presence logit forced on present classes (its negative on absent ones) for the skipping timings."""
COLUMNS = [
    "classes",
    "train_step_ms",
    "predict_window_ms",
    "predict_window_skipping_ms",
    "decoded_classes_skipping",
    "peak_memory_mib",
]


def forced_presence_logits(classes: int, present: int) -> torch.Tensor:
    """``K`` presence logits: the first ``present`` classes present, the others absent (confidently)."""
    logits = torch.full((classes,), -FORCED_PRESENCE_LOGIT)
    logits[:present] = FORCED_PRESENCE_LOGIT
    return logits


@contextlib.contextmanager
def forced_presence(model: AutoPromptSAM, logits: torch.Tensor) -> Iterator[None]:
    """Make the ``encoder_head`` generator's presence head return ``K`` ``logits`` in every window."""
    head = model.prompt_generator.heads.presence
    handle = head.register_forward_hook(
        lambda _module, _args, out: logits.to(out).expand(out.shape[:-1])[..., None]
    )
    try:
        yield
    finally:
        handle.remove()


def _random_embeddings(model: AutoPromptSAM, count: int, *, seed: int) -> torch.Tensor:
    """``count x 256 x 64 x 64`` random image embeddings (the backbone's sizes) on the model's device."""
    size = (count, model.backbone.embed_dim, *model.backbone.embedding_size)
    return torch.randn(size, generator=torch.Generator().manual_seed(seed)).to(
        model.backbone.pixel_mean.device
    )


def _train_step_seconds(
    model: AutoPromptSAM, trainer_config: TrainerConfig, *, batch: int, device: torch.device, repeats: int
) -> float:
    """Median seconds of forward + training loss + backward for ``batch`` random embeddings."""
    embeddings = _random_embeddings(model, batch, seed=0)
    size = model.window_size
    target = torch.randint(
        0, model.num_classes + 1, (batch, size, size), generator=torch.Generator().manual_seed(1)
    )
    target = target.to(device)
    loss = AutoPromptLoss(model.num_classes, trainer_config.loss)

    def step() -> None:
        loss(model(embeddings=embeddings), target)["total"].backward()
        model.zero_grad(set_to_none=True)

    model.train()
    return median_seconds(step, device=device, repeats=repeats)


def _predict_seconds(model: AutoPromptSAM, *, device: torch.device, repeats: int) -> float:
    """Median seconds of predicting one window from a random embedding ``1 x 256 x 64 x 64`` in eval mode."""
    embedding = _random_embeddings(model, 1, seed=2)
    model.eval()
    with torch.inference_mode():
        return median_seconds(lambda: model(embeddings=embedding), device=device, repeats=repeats)


def _class_row(
    backbone: SamBackbone, trainer_config: TrainerConfig, *, classes: int, args: argparse.Namespace
) -> dict[str, object]:
    """The timings of one K (see the module docstring), in milliseconds."""
    device = args.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_autoprompt_sam(trainer_config.model, num_classes=classes, in_channels=1, backbone=backbone)
    train = _train_step_seconds(model, trainer_config, batch=args.batch, device=device, repeats=args.repeats)
    with forced_presence(model, forced_presence_logits(classes, args.present)):
        model.skip_presence_below = 0.0
        predict = _predict_seconds(model, device=device, repeats=args.repeats)
        model.skip_presence_below = args.skip_presence_below
        skipping = _predict_seconds(model, device=device, repeats=args.repeats)
    row = {
        "classes": classes,
        "train_step_ms": round(1000 * train, 1),
        "predict_window_ms": round(1000 * predict, 1),
        "predict_window_skipping_ms": round(1000 * skipping, 1),
        "decoded_classes_skipping": min(args.present, classes),
        "peak_memory_mib": round(peak_memory_mib(device), 1),
    }
    print(f"  K={classes}: {row}", file=sys.stderr)
    return row


def _encoder(backbone: SamBackbone, config: ModelConfig, *, args: argparse.Namespace) -> dict[str, object]:
    """The image encoder's runtime and median milliseconds on one random window."""
    model = build_autoprompt_sam(config, num_classes=1, in_channels=1, backbone=backbone).eval()
    image = torch.rand(1, 1, model.window_size, model.window_size, generator=torch.Generator().manual_seed(3))
    image = image.to(args.device)
    with torch.inference_mode():
        seconds = median_seconds(lambda: model.encode(image), device=args.device, repeats=args.repeats)
    runtime = model.backbone.resolved_encoder_runtime(Precision.FP32)
    return {"runtime": runtime, "ms_per_window": round(1000 * seconds, 1)}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--backbone", default="litemedsam", help="backbone name (default: litemedsam)")
    parser.add_argument(
        "--preset", default="2d_frozen", help="2d trainer preset of the model settings (default: 2d_frozen)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a preset setting, e.g. --set model.box_refinement=0 (repeatable)",
    )
    parser.add_argument(
        "--encoder-runtime", choices=ENCODER_RUNTIMES, help="encoder runtime (default: the preset's)"
    )
    parser.add_argument(
        "--classes", type=int, nargs="+", default=[3, 4, 15], help="the values of K (default: 3 4 15)"
    )
    parser.add_argument("--batch", type=int, default=8, help="windows per training step (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (default: 3)")
    parser.add_argument(
        "--present", type=int, default=3, help="classes present in the window when skipping (default: 3)"
    )
    parser.add_argument(
        "--skip-presence-below",
        type=float,
        default=0.5,
        help="model.skip_presence_below of the skipping timings, in (0, 1) (default: 0.5)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=REPO / "benchmarks" / "results" / "class_scaling_cpu.json",
        help="JSON result (default: benchmarks/results/class_scaling_cpu.json)",
    )
    args = parser.parse_args(argv)
    if min(args.classes) < 1 or args.batch < 1 or args.repeats < 1 or args.present < 0:
        parser.error("--classes, --batch and --repeats must be at least 1, --present at least 0")
    if not 0.0 < args.skip_presence_below < 1.0:
        parser.error(f"--skip-presence-below {args.skip_presence_below} must be in (0, 1), e.g. 0.5")
    args.device = resolve_device(args.device)
    return args


def _trainer_config(args: argparse.Namespace) -> TrainerConfig:
    """The preset with the ``--set`` overrides, ``--backbone``, ``--encoder-runtime`` and skipping off."""
    trainer_config = load_trainer_config(args.preset, args.overrides)
    if trainer_config.model.prompt_generator != "encoder_head":
        raise SystemExit(
            f"class_scaling: error: --preset {args.preset} has no encoder_head generator; give a 2d one"
        )
    changes = {"backbone": args.backbone, "skip_presence_below": 0.0}
    if args.encoder_runtime is not None:
        changes["encoder_runtime"] = args.encoder_runtime
    trainer_config.model = dataclasses.replace(trainer_config.model, **changes)
    return trainer_config


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    check_output_file(args.output, option="--output")
    retain_freed_memory()  # as the autoprompt command does
    trainer_config = _trainer_config(args)
    backbone = load_backbone(args.backbone).to(args.device)
    load_before = load_average()
    rows = [_class_row(backbone, trainer_config, classes=k, args=args) for k in args.classes]
    encoder = _encoder(backbone, trainer_config.model, args=args)
    result = {
        "machine": machine_info(args.device, load_average_before=load_before),
        "backbone": args.backbone,
        "preset": args.preset,
        "overrides": args.overrides,
        "model": trainer_config.model.to_dict(),
        "precision": "fp32",
        "repeats": args.repeats,
        "train_batch": args.batch,
        "decoder_passes_per_prediction": 1 + trainer_config.model.box_refinement,
        "skipping": {
            "skip_presence_below": args.skip_presence_below,
            "present_classes": args.present,
            "how": (
                f"the presence head's output forced by a forward hook: the first {args.present} classes at "
                f"logit +{FORCED_PRESENCE_LOGIT:g}, the others at -{FORCED_PRESENCE_LOGIT:g}, in both "
                "prediction timings"
            ),
        },
        "encoder": encoder,
        "rows": rows,
    }
    save_json(result, args.output)
    print(f"Machine: {result['machine']}\nEncoder: {encoder}\n")
    print(markdown_table(rows, COLUMNS))
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
