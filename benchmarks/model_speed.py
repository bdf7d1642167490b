"""AutoPromptSAM speed, memory and parameter counts on this machine.

Times (median over repeats, in milliseconds per 256x256 slice) for the LiteMedSAM image encoder, each
prompt generator, the class-labelled decoder (all K classes of a slice as one batch, decoder adapters
on), the whole default model from images, and one training step (forward + backward) of the default
model from cached embeddings; for batch sizes 1 and 8. Peak memory is ``torch.cuda.max_memory_allocated``
on a GPU, else the process's peak resident set size (``resource.getrusage``, which only grows: read it as
"the process peaked at ... after this row"). Parameter counts are given for the four reference setups.

    .venv/bin/python -m benchmarks.model_speed                      # CPU, prints tables, writes JSON
    .venv/bin/python -m benchmarks.model_speed --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
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
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.class_decoder import decode_classes
from autoprompt.modeling.config import ModelConfig
from pipeline.files import save_json

REPO = Path(__file__).resolve().parents[1]

SETUPS: dict[str, tuple[ModelConfig, int]] = {
    "2d encoder_head, frozen encoder": (ModelConfig(prompt_generator="encoder_head"), 1),
    "2d coarse_unet": (ModelConfig(prompt_generator="coarse_unet"), 1),
    "3d (D=5) embedding depth adapter": (ModelConfig(depth_adapter="embedding"), 5),
    "3d (D=5) encoder + depth adapters": (ModelConfig(encoder_adapters=True, depth_adapter="encoder"), 5),
}


def _timings(
    backbone: SamBackbone, *, device: torch.device, batch: int, classes: int, repeats: int
) -> list[dict[str, object]]:
    images = torch.rand(batch, 1, 256, 256, device=device)
    head_model = build_autoprompt_sam(
        ModelConfig(backbone=backbone.name), num_classes=classes, in_channels=1, backbone=backbone
    )
    unet_model = build_autoprompt_sam(
        ModelConfig(backbone=backbone.name, prompt_generator="coarse_unet"),
        num_classes=classes,
        in_channels=1,
        backbone=backbone,
    )
    head_model.eval()
    unet_model.eval()
    with torch.no_grad():
        embeddings = head_model.encode(images)
        prompts = head_model.prompt_generator(embeddings=embeddings)

    def decode() -> torch.Tensor:
        return decode_classes(
            head_model.backbone.prompt_encoder,
            head_model.backbone.mask_decoder,
            embeddings,
            boxes=prompts.boxes,
            coarse_logits=prompts.coarse_logits,
            class_tokens=prompts.class_tokens,
            output_size=256,
        )

    def train_step() -> None:
        head_model.train()
        out = head_model(embeddings=embeddings)
        (
            out.logits.logsumexp(dim=-3).mean() + out.coarse_logits.mean() + out.presence_logits.mean()
        ).backward()
        head_model.zero_grad(set_to_none=True)

    parts: list[tuple[str, Callable[[], object], bool]] = [
        ("image encoder", lambda: head_model.encode(images), False),
        ("prompt generator: encoder_head", lambda: head_model.prompt_generator(embeddings=embeddings), False),
        ("prompt generator: coarse_unet", lambda: unet_model.prompt_generator(images=images), False),
        (f"class decoder (K={classes})", decode, False),
        ("whole model from images", lambda: head_model(images), False),
        ("train step from cached embeddings", train_step, True),
    ]
    rows = []
    for name, run, needs_grad in parts:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.set_grad_enabled(needs_grad):
            seconds = median_seconds(run, device=device, repeats=repeats)
        rows.append(
            {
                "part": name,
                "batch": batch,
                "ms_per_slice": round(1000 * seconds / batch, 1),
                "peak_memory_mib": round(peak_memory_mib(device), 1),
            }
        )
        print(f"  {name:<36} batch {batch}: {rows[-1]['ms_per_slice']} ms/slice", file=sys.stderr)
    return rows


def _parameter_rows(backbone: SamBackbone, *, classes: int) -> list[dict[str, object]]:
    rows = []
    for name, (config, depth) in SETUPS.items():
        config = dataclasses.replace(config, backbone=backbone.name)
        model = build_autoprompt_sam(
            config, num_classes=classes, in_channels=1, stack_depth=depth, backbone=backbone
        )
        counts = model.parameter_counts()
        rows.append({"setup": name, "frozen_encoder": model.uses_frozen_encoder, **counts})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--backbone", default="litemedsam", help="backbone name (default: litemedsam)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 8], help="slices per call (default: 1 8)"
    )
    parser.add_argument("--classes", type=int, default=3, help="foreground classes K (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (default: 3)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=REPO / "benchmarks" / "results" / "model_speed.json",
        help="JSON result",
    )
    args = parser.parse_args(argv)
    retain_freed_memory()  # as the autoprompt command does

    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone).to(device)
    load_before = load_average()
    timings = [
        row
        for batch in args.batch_sizes
        for row in _timings(backbone, device=device, batch=batch, classes=args.classes, repeats=args.repeats)
    ]
    parameters = _parameter_rows(backbone, classes=args.classes)
    machine = machine_info(device, load_average_before=load_before)
    save_json(
        {"machine": machine, "backbone": args.backbone, "timings": timings, "parameters": parameters},
        args.output,
    )
    print(f"Machine: {machine}\n")
    print(markdown_table(timings, ["part", "batch", "ms_per_slice", "peak_memory_mib"]) + "\n")
    columns = ["setup", "frozen_encoder", "total", "trainable", "prompt_generator", "decoder_adapters"]
    columns += ["encoder_adapters", "depth_adapters"]
    print(markdown_table(parameters, columns))
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
