"""Speed on this machine in one run: the encoder per runtime, the decoder per precision, predict next to nnU-Net,
the ACDC cache, the demo.

Parts (each printed and written to one JSON file, ``benchmarks/results/speed_cpu.json`` by default):

- ``encoder``: the LiteMedSAM image encoder on random 256 x 256 windows, batches of 1 and 4, PyTorch eager
  in fp32 and bf16, the OpenVINO runtime (:mod:`autoprompt.modeling.encoder_runtime`) at the same
  precisions and the int8 encoder training writes (:mod:`autoprompt.modeling.encoder_quantization`, here
  calibrated on random windows; its float layers in bf16, and in fp32 as CPUs without bf16 run them):
  seconds per window (median over rounds; the variants are timed in turn within each round, so
  other jobs on a shared machine load them alike), process CPU seconds per window (the work itself, which
  other jobs change less than the wall time), the relative L2 error against eager at the same precision and
  against eager fp32, and the first call's seconds (OpenVINO: export, when not cached yet, and compilation).
- ``decoder``: SAM's mask decoder (LiteMedSAM's, with the prompt encoder, as
  :func:`autoprompt.modeling.class_decoder.decode_classes` runs it) decoding 3 class prompts per window,
  for inference (no autograd, one window) and for training (forward and backward, a batch of 8 windows):
  fp32, bf16 autocast (the decoder's fp32 weights) and the bf16 path that bf16 on a CPU takes (:mod:`autoprompt.modeling.low_precision`: the
  bf16 copy for inference, the weights cast in the graph for training); seconds per window (one decoder pass;
  prediction runs ``1 + box_refinement`` passes per window and TTA flip) and the relative L2 error of the
  logits against fp32 (of the first window).
- ``predict``: seconds per volume of ``autoprompt predict`` (one fold, the precision and runtime ``auto``)
  and, with an nnU-Net model folder, of nnU-Net's predictor (``nnUNetv2_predict_from_modelfolder``, the
  code behind ``nnUNetv2_predict``), same volumes, same TTA setting, each a child process timed with its
  start-up and model loading (:func:`autoprompt.benchmarking.nnunet_baseline.run_logged`). Needs trained
  models: ``--acdc-model`` / ``--hippocampus-model`` (and ``--acdc-nnunet-model`` /
  ``--hippocampus-nnunet-model``); a dataset without one is skipped with the reason printed.
- ``cache``: minutes to build the embedding cache of the preprocessed ACDC cases (``--acdc-preprocessed``,
  a ``PREPROCESSED/Dataset027_ACDC`` folder), the frozen LiteMedSAM encoder at precision ``auto``, written
  into a scratch folder so nothing cached before is reused. Where int8 pays (``int8_encoder_pays``),
  ``cache_int8`` times, beside it, the cache that ``TrainerConfig.int8_cache`` (the default) builds there:
  through the int8 encoder, quantised first on windows of the cases (its minutes apart).
- ``demo``: the wall time of ``make demo`` without the install (``python -m autoprompt.demo``), from
  scratch (``--demo``).

    .venv/bin/python -m benchmarks.speed                                   # the encoder only
    ONEDNN_MAX_CPU_ISA=AVX2_VNNI .venv/bin/python -m benchmarks.speed      # as if the CPU had only AVX2 + VNNI
    .venv/bin/python -m benchmarks.speed --demo \\
        --acdc-model RESULTS/Dataset027_ACDC/autoprompt__2d_frozen__2d \\
        --acdc-nnunet-model NNUNET_RESULTS/Dataset027_ACDC/nnUNetTrainer__nnUNetPlans__2d \\
        --hippocampus-model RESULTS/Dataset004_Hippocampus/autoprompt__2d_frozen__2d \\
        --hippocampus-nnunet-model NNUNET_RESULTS/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__2d \\
        --acdc-preprocessed PREPROCESSED/Dataset027_ACDC

The volumes: ``--cases`` validation cases of ``--fold`` in ``splits_patient_70_10.json`` for ACDC (of fold 0 for
``--fold all``, the fold that ``autoprompt benchmark`` trains on a case list; every case where the file is
missing), the first ``--cases`` cases for Hippocampus.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from autoprompt.allocator import retain_freed_memory
from autoprompt.benchmarking.measurement import load_average, machine_info
from autoprompt.benchmarking.nnunet_baseline import run_logged
from autoprompt.devices import Precision, autocast
from autoprompt.modeling import class_decoder
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.build import build_autoprompt_sam, load_configured_backbone
from autoprompt.modeling.class_decoder import decode_classes
from autoprompt.modeling.config import ModelConfig
from autoprompt.modeling.encoder_quantization import (
    int8_encoder_digest,
    quantize_encoder,
)
from autoprompt.precision import int8_encoder_pays, resolve_precision
from benchmarks.inference_speed import candidate_cases, console_script, link_inputs
from pipeline.files import save_json
from pipeline.training.data import load_training_cases
from pipeline.training.embedding_cache import EmbeddingCache, cache_key_parts
from pipeline.training.encoder_calibration import quantize_on_cases
from pipeline.training.trainer import encoder_batch_size
from planners.plans import Plans

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CPU = torch.device("cpu")
INT8 = "openvino int8"
VARIANTS = (
    ("eager", Precision.FP32),
    ("eager", Precision.BF16),
    ("openvino", Precision.FP32),
    ("openvino", Precision.BF16),
    (INT8, Precision.BF16),
    (INT8, Precision.FP32),
)
"""(runtime, precision) of the encoder rows; OpenVINO is compared with eager at the same precision."""


def _encode(
    backbone: SamBackbone, images: torch.Tensor, runtime: str, precision: Precision, int8: Path | None
) -> torch.Tensor:
    backbone.encoder_runtime = "openvino" if runtime == INT8 else runtime
    backbone.int8_encoder = int8 if runtime == INT8 else None
    with torch.inference_mode(), autocast(CPU, precision):
        return backbone.encode(images).float()


def _int8_encoder(backbone: SamBackbone, scratch: Path) -> Path:
    """The encoder quantised as training does it, calibrated on 8 random windows (its error on random windows
    says little about real images; docs/results.md has that)."""
    windows = torch.rand(8, 3, 256, 256, generator=torch.Generator().manual_seed(1000))
    return quantize_encoder(
        backbone.image_encoder, backbone.encoder_input(windows).numpy(), scratch / "encoder_int8"
    )


def encoder_rows(
    *, batch_sizes: list[int], rounds: int, cache_folder: Path | None, scratch: Path
) -> list[dict]:
    """One row per runtime, precision and batch size (see the module docstring)."""
    backbone = load_backbone("litemedsam")
    backbone.runtime_cache_folder = cache_folder
    int8 = _int8_encoder(backbone, scratch)
    rows = []
    for batch in batch_sizes:
        images = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch))
        outputs, first_call = {}, {}
        for runtime, precision in VARIANTS:
            started = time.perf_counter()
            outputs[runtime, precision] = _encode(backbone, images, runtime, precision, int8)
            first_call[runtime, precision] = time.perf_counter() - started
        backbone.encoder_runtime = "openvino"
        # per precision: OpenVINO may compile the fp32 export but refuse the bf16 hint (no bf16 on the CPU)
        openvino_runs = {
            p: backbone.resolved_encoder_runtime(p) == "openvino" for p in {p for _, p in VARIANTS}
        }
        wall: dict[tuple, list[float]] = {variant: [] for variant in VARIANTS}
        cpu: dict[tuple, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(rounds):
            for runtime, precision in VARIANTS:
                started, cpu_started = time.perf_counter(), time.process_time()
                _encode(backbone, images, runtime, precision, int8)
                wall[runtime, precision].append((time.perf_counter() - started) / batch)
                cpu[runtime, precision].append((time.process_time() - cpu_started) / batch)
        fp32 = outputs["eager", Precision.FP32]
        for runtime, precision in VARIANTS:
            output, reference = outputs[runtime, precision], outputs["eager", precision]
            error = float((output - reference).norm() / reference.norm())
            rows.append(
                {
                    "runtime": runtime
                    if runtime == "eager" or openvino_runs[precision]
                    else "eager (no openvino)",
                    "precision": precision.value,
                    "batch": batch,
                    "s_per_window": round(statistics.median(wall[runtime, precision]), 4),
                    "cpu_s_per_window": round(statistics.median(cpu[runtime, precision]), 4),
                    "relative_error_vs_eager": error,
                    "relative_error_vs_eager_fp32": float((output - fp32).norm() / fp32.norm()),
                    "first_call_s": round(first_call[runtime, precision], 2),
                }
            )
            print(
                f"  encoder {runtime:8s} {precision.value:4s} batch {batch}: {rows[-1]['s_per_window']:.3f} s/window "
                f"({rows[-1]['cpu_s_per_window']:.3f} CPU s), relative error {error:.1e} "
                f"({rows[-1]['relative_error_vs_eager_fp32']:.1e} against eager fp32)",
                flush=True,
            )
    return rows


def decoder_rows(*, rounds: int, classes: int = 3, training_windows: int = 8) -> list[dict]:
    """One row per decoder precision and mode (see the module docstring), timed in turn within each round:
    inference on one window, training on a batch of ``training_windows``."""
    backbone = load_backbone("litemedsam").requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    n = training_windows
    batch = {
        "boxes": torch.tensor([0.3, 0.3, 0.6, 0.7]).repeat(n, classes, 1),
        "coarse_logits": torch.randn(n, classes, 256, 256, generator=generator),
        "class_tokens": torch.randn(n, classes, 256, generator=generator),
        "embeddings": torch.randn(n, 256, 64, 64, generator=generator) * 0.3,
    }
    decoder = backbone.mask_decoder
    variants = (
        "fp32",
        "bf16 autocast",
        "bf16 copy",
        "train fp32",
        "train bf16 autocast",
        "train bf16 weights",
    )
    windows = {variant: n if variant.startswith("train") else 1 for variant in variants}

    def decode(variant: str) -> torch.Tensor:
        training = variant.startswith("train")
        prompts = {name: value[: windows[variant]] for name, value in batch.items()}
        decoder.requires_grad_(training)
        mode = torch.enable_grad() if training else torch.inference_mode()
        precision = Precision.FP32 if variant.endswith("fp32") else Precision.BF16
        in_bf16 = variant.endswith(("bf16 copy", "bf16 weights"))  # else the decoder itself, under autocast
        bf16 = (
            contextlib.nullcontext()
            if in_bf16
            else mock.patch.object(class_decoder, "low_precision_dtype", _no_bf16)
        )
        with mode, autocast(CPU, precision), bf16:
            logits = decode_classes(backbone.prompt_encoder, decoder, output_size=256, **prompts)
        if training:
            logits.float().square().mean().backward()
            decoder.zero_grad(set_to_none=True)
        return logits.detach().float()[:1]

    outputs = {variant: decode(variant) for variant in variants}
    wall: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            started = time.perf_counter()
            decode(variant)
            wall[variant].append(time.perf_counter() - started)
    reference = outputs["fp32"]
    rows = []
    for variant in variants:
        error = float((outputs[variant] - reference).norm() / reference.norm())
        rows.append(
            {
                "variant": variant,
                "classes": classes,
                "windows_per_call": windows[variant],
                "s_per_window_pass": round(statistics.median(wall[variant]) / windows[variant], 4),
                "relative_error_vs_fp32": error,
            }
        )
        print(f"  decoder {variant:19s}: {rows[-1]['s_per_window_pass']:.3f} s per window and pass "
              f"({classes} classes), relative error {error:.1e} against fp32", flush=True)  # fmt: skip
    return rows


def _no_bf16(device: torch.device) -> None:
    """Stands in for :func:`autoprompt.modeling.class_decoder.low_precision_dtype`: the decoder under autocast."""
    return None


def predict_rows(
    dataset: str, raw: Path, *, model: Path, nnunet_model: Path | None, cases: list[str], fold: str, tta: bool,
    work: Path,
) -> list[dict]:  # fmt: skip
    """Seconds per volume of autoprompt (and nnU-Net) predicting ``cases`` of ``raw``, one fold."""
    inputs = link_inputs(raw, cases, work / dataset / "input")
    log = work / dataset / "log.txt"
    tools = {"autoprompt": model, **({"nnU-Net": nnunet_model} if nnunet_model else {})}
    rows = []
    for tool, folder in tools.items():
        output = work / dataset / f"output_{tool}"
        shutil.rmtree(output, ignore_errors=True)
        if tool == "autoprompt":
            command = [sys.executable, "-m", "autoprompt", "predict", "-i", str(inputs), "-o", str(output),
                       "--model-dir", str(folder), "-f", fold, "--device", "cpu",
                       "--tta" if tta else "--no-tta"]  # fmt: skip
        else:
            nnunet_fold = fold if (folder / f"fold_{fold}").is_dir() else "all"
            command = [console_script("nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", str(output),
                       "-m", str(folder), "-f", nnunet_fold, "-device", "cpu", "-npp", "1", "-nps", "1",
                       "--disable_progress_bar"] + ([] if tta else ["--disable_tta"])  # fmt: skip
        usage = run_logged(command, env=dict(os.environ), log_file=log, what=f"{tool} prediction")
        rows.append(
            {
                "dataset": dataset,
                "tool": tool,
                "volumes": len(cases),
                "tta": tta,
                "s_per_volume": round(usage.seconds / len(cases), 2),
                "peak_rss_mib": round(usage.peak_rss_mib),
            }
        )
        print(f"  predict {dataset} {tool}: {rows[-1]['s_per_volume']:.2f} s/volume", flush=True)
    return rows


def cache_row(preprocessed: Path, work: Path, *, cases: int | None, int8: bool) -> dict:
    """Minutes to build the 2d embedding cache of the preprocessed cases (the first ``cases``, or all), at
    precision ``auto``; with ``int8`` through the int8 encoder as ``TrainerConfig.int8_cache`` builds it
    (quantised first on windows of the cases, as training does, its minutes a field of their own)."""
    plans = Plans.load(preprocessed / "plans.json")
    folder = preprocessed / plans.configuration("2d").data_identifier
    case_ids = sorted(p.name[: -len(".npy")] for p in folder.glob("*.npy") if not p.name.endswith("_seg.npy"))
    labels = sorted(plans.foreground_labels.values())
    loaded = load_training_cases(folder, case_ids[:cases], labels=labels, seed=0)
    window = plans.configuration("2d").window_size
    backbone = load_configured_backbone(ModelConfig(), window=window[0])
    model = build_autoprompt_sam(
        ModelConfig(), num_classes=len(labels), in_channels=len(plans.normalization), backbone=backbone
    )
    precision = resolve_precision("auto", CPU)
    runtime = model.backbone.resolved_encoder_runtime(precision)
    scratch = work / "cache"
    shutil.rmtree(scratch, ignore_errors=True)
    quantise_seconds = None
    if int8:
        started = time.perf_counter()
        model.backbone.int8_encoder, _ = quantize_on_cases(
            model.backbone, loaded, window, scratch / "encoder_int8"
        )
        quantise_seconds = time.perf_counter() - started
    parts = cache_key_parts(
        plans,
        "2d",
        backbone_checksum=model.backbone.checksum,
        precision=precision,
        encoder_runtime=runtime,
        int8_encoder=int8_encoder_digest(model.backbone.int8_encoder) if int8 else None,
    )
    cache = EmbeddingCache(scratch, parts, embedding_shape=(backbone.embed_dim, *backbone.embedding_size))
    windows = sum(int(np.prod(cache.expected_shape(case)[:2])) for case in loaded)
    started = time.perf_counter()
    cache.build(model, loaded, device=CPU, batch_size=encoder_batch_size(CPU))
    seconds = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    row = {
        "dataset": preprocessed.name,
        "cases": len(loaded),
        "windows": windows,
        "window": window[0],
        "precision": precision.value,
        "encoder_runtime": runtime,
        "encoder": "int8" if int8 else precision.value,
        "minutes": round(seconds / 60, 2),
        "s_per_window": round(seconds / windows, 4),
        "int8_quantise_minutes": None if quantise_seconds is None else round(quantise_seconds / 60, 2),
    }
    print(
        f"  cache {preprocessed.name} ({row['encoder']} encoder): {row['minutes']:.2f} min for {windows} windows"
        f" of {window[0]} x {window[0]}"
        + (f", after {row['int8_quantise_minutes']:.2f} min quantising" if int8 else ""),
        flush=True,
    )
    return row


def demo_row(work: Path, *, extra: list[str]) -> dict:
    """Wall time of the demo from scratch (``python -m autoprompt.demo``, what ``make demo`` runs)."""
    output = work / "demo"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "autoprompt.demo", "-o", str(output), *extra]
    usage = run_logged(command, env=dict(os.environ), log_file=work / "demo_log.txt", what="demo")
    print(f"  demo: {usage.seconds / 60:.1f} min", flush=True)
    return {
        "arguments": extra,
        "minutes": round(usage.seconds / 60, 2),
        "peak_rss_mib": round(usage.peak_rss_mib),
    }


def _machine() -> dict:
    import openvino

    return {
        **machine_info(CPU, load_average_before=load_average()),
        "auto_precision": resolve_precision("auto", CPU).value,
        "openvino": openvino.__version__,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def _fold(text: str) -> str:
    """``--fold``: a fold number or ``all``."""
    if text != "all" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold: give a number or 'all'")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 4], help="encoder batches (default: 1 4)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed encoder rounds after a warm-up (default: 3)"
    )
    parser.add_argument("--no-encoder", action="store_true", help="skip the encoder and decoder parts")
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder with Dataset027_ACDC, Dataset004_Hippocampus"
    )
    for name in ("acdc", "hippocampus"):
        parser.add_argument(f"--{name}-model", type=Path, help=f"trained autoprompt model folder for {name}")
        parser.add_argument(
            f"--{name}-nnunet-model", type=Path, help=f"trained nnU-Net 2d model folder for {name}"
        )
    parser.add_argument("--cases", type=int, default=20, help="volumes per dataset (default: 20)")
    parser.add_argument(
        "--fold", type=_fold, default="0", help="the one fold predicted: a number or 'all' (default: 0)"
    )
    parser.add_argument("--tta", action="store_true", help="mirroring on, for both tools (default: off)")
    parser.add_argument("--acdc-preprocessed", type=Path, help="PREPROCESSED/Dataset027_ACDC: time its cache")
    parser.add_argument("--cache-cases", type=int, help="cache only the first N cases (default: all)")
    parser.add_argument("--demo", action="store_true", help="time the demo from scratch")
    parser.add_argument(
        "--demo-args", nargs=argparse.REMAINDER, default=[], help="arguments for the demo (last)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoprompt_speed"), help="scratch folder")
    parser.add_argument(
        "--export-cache", type=Path, help="exported encoders (default: the user's cache folder)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=REPO / "benchmarks" / "results" / "speed_cpu.json",
        help="JSON result",
    )
    args = parser.parse_args(argv)
    retain_freed_memory()  # as the autoprompt command does
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": _machine(), "skipped": {}}
    print(f"machine: {result['machine']}", flush=True)
    if not args.no_encoder:
        result["encoder"] = encoder_rows(
            batch_sizes=args.batch_sizes,
            rounds=args.rounds,
            cache_folder=args.export_cache,
            scratch=args.work,
        )
        result["decoder"] = decoder_rows(rounds=args.rounds)
    result["predict"] = []
    datasets = {"acdc": "Dataset027_ACDC", "hippocampus": "Dataset004_Hippocampus"}
    for name, dataset in datasets.items():
        model, nnunet_model = getattr(args, f"{name}_model"), getattr(args, f"{name}_nnunet_model")
        if model is None:
            result["skipped"][f"predict {dataset}"] = (
                f"no --{name}-model given (a trained autoprompt model folder)"
            )
            print(f"  predict {dataset}: skipped, {result['skipped'][f'predict {dataset}']}", flush=True)
            continue
        if nnunet_model is None:
            result["skipped"][f"nnU-Net {dataset}"] = f"no --{name}-nnunet-model given: autoprompt alone"
            print(f"  predict {dataset}: {result['skipped'][f'nnU-Net {dataset}']}", flush=True)
        raw = args.data / dataset
        splits = raw / "splits_patient_70_10.json"
        split_fold = 0 if args.fold == "all" else int(args.fold)
        cases = candidate_cases(raw, splits=splits if splits.is_file() else None, fold=split_fold)[
            : args.cases
        ]
        result["predict"] += predict_rows(dataset, raw, model=model, nnunet_model=nnunet_model, cases=cases,
                                          fold=args.fold, tta=args.tta, work=args.work)  # fmt: skip
    if args.acdc_preprocessed:
        result["cache"] = cache_row(args.acdc_preprocessed, args.work, cases=args.cache_cases, int8=False)
        if int8_encoder_pays(resolve_precision("auto", CPU), CPU):  # the int8 cache, the default here
            result["cache_int8"] = cache_row(
                args.acdc_preprocessed, args.work, cases=args.cache_cases, int8=True
            )
    else:
        result["skipped"]["cache"] = "no --acdc-preprocessed given"
        print("  cache: skipped, no --acdc-preprocessed given", flush=True)
    if args.demo:
        result["demo"] = demo_row(args.work, extra=args.demo_args)
    else:
        result["skipped"]["demo"] = "no --demo"
    result["machine"]["load_average_after"] = load_average()
    save_json(result, args.output)
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
