"""Image-encoder precision study for the promptable model: speed, box-prompt Dice and embedding error.

For each precision (fp32, bf16; fp16 too on CUDA) and each case (a synthetic bright ellipse in noise,
the largest left ventricle slice of ACDC patient002_frame01 from its ground-truth box + 3 px) it
reports the median encoder seconds per slice, the box-prompt Dice and the relative L2 error of the
embedding against fp32. The ``auto`` rule of ``autoprompt.precision`` follows this table.

    .venv/bin/python -m benchmarks.precision                       # CPU, prints a table
    .venv/bin/python -m benchmarks.precision --device cuda -o precision_cuda.json
    # a CPU without bf16 instructions (a typical laptop), emulated by limiting the kernels to AVX2:
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python -m benchmarks.precision --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprompt.allocator import retain_freed_memory
from autoprompt.devices import Precision, resolve_device
from autoprompt.interactive.images import LoadedImage
from autoprompt.interactive.predictor import InteractivePredictor, SliceFrame
from autoprompt.modeling.backbone import load_backbone
from pipeline.files import save_json
from tests.interactive.cases import ACDC_CASE, PromptCase, acdc_lv_case, dice, ellipse_case

REPO = Path(__file__).resolve().parents[1]


def _cases(data_root: Path) -> list[tuple[PromptCase, tuple[float, float] | None]]:
    """``(case, intensity range)``: the ellipse clipped at its own percentiles, ACDC at its volume's."""
    ellipse = ellipse_case()
    acdc, _ = acdc_lv_case(data_root)
    volume = LoadedImage.of(data_root / "Dataset027_ACDC" / "imagesTr" / f"{ACDC_CASE}_0000.nii.gz")
    return [
        (ellipse, LoadedImage.of(ellipse.image).intensity_range),
        (acdc, volume.intensity_range),
    ]


def _timed_encode(predictor: InteractivePredictor, inputs: torch.Tensor) -> tuple[float, torch.Tensor]:
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    embedding = predictor.encode(inputs)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, embedding


def measure(*, data_root: Path, device: str, precisions: list[str], repeats: int) -> list[dict]:
    """One row per precision and case.

    The precisions are timed in turn within each repeat, so a machine shared with other jobs loads them
    alike; ``speedup`` is the median over repeats of fp32's time over this precision's in the same round.
    """
    backbone = load_backbone("litemedsam")
    predictors = {name: InteractivePredictor(backbone, device=device, precision=name) for name in precisions}
    rows = []
    for case, clip in _cases(data_root):
        inputs = SliceFrame(*case.image.shape).to_input(case.image, intensity_range=clip)
        seconds: dict[str, list[float]] = {name: [] for name in precisions}
        embeddings = {name: predictor.encode(inputs) for name, predictor in predictors.items()}  # warm-up
        for _ in range(repeats):
            for name, predictor in predictors.items():
                seconds[name].append(_timed_encode(predictor, inputs)[0])
        reference = embeddings[precisions[0]]
        for name, predictor in predictors.items():
            predictor.set_image(case.image, intensity_range=clip)
            mask = predictor.predict(box=case.box).mask
            error = torch.linalg.vector_norm(embeddings[name] - reference) / torch.linalg.vector_norm(
                reference
            )
            ratios = [base / own for base, own in zip(seconds[precisions[0]], seconds[name], strict=True)]
            rows.append(
                {
                    "precision": name,
                    "case": case.name,
                    "encoder_s_per_slice": statistics.median(seconds[name]),
                    "speedup_vs_fp32": statistics.median(ratios),
                    "dice": dice(mask, case.truth),
                    "embedding_rel_error": float(error),
                }
            )
            print(_format(rows[-1]), flush=True)
    return rows


def _format(row: dict) -> str:
    return (
        f"| {row['precision']:9} | {row['case']:9} | {row['encoder_s_per_slice']:13.3f} "
        f"| {row['speedup_vs_fp32']:7.2f} | {row['dice']:6.4f} | {row['embedding_rel_error']:15.4f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="folder with Dataset027_ACDC"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed encoder calls per case (default: 3)")
    parser.add_argument("-o", "--output", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    retain_freed_memory()  # as the autoprompt command does
    device = resolve_device(args.device)
    precisions = [Precision.FP32.value, Precision.BF16.value]
    if device.type == "cuda":
        precisions.append(Precision.FP16.value)
    torch.manual_seed(0)
    np.random.seed(0)
    header = f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}"
    print(header)
    print("| precision | case      | encoder s/img | speedup | Dice   | rel. emb. error |")
    print("|-----------|-----------|---------------|---------|--------|-----------------|")
    rows = measure(data_root=args.data, device=str(device), precisions=precisions, repeats=args.repeats)
    if args.output:
        save_json({"environment": header, "rows": rows}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
