"""Seconds per training step of a real preset on a real dataset, by batch workers and batch size.

Plans and preprocesses a raw nnU-Net dataset (or the first ``--cases`` of it), builds its embedding cache
and augmented views once (a short warm-up run), then trains a few epochs per setting (fold ``all``, no
final validation) and reports each setting's epoch times as milliseconds per step (validation batches
included) and, on CUDA, the GPU's mean utilisation while it trained (``nvidia-smi`` every 250 ms). Issue
#16 asks whether the step from cached embeddings is bound by the host.

    .venv/bin/python -m benchmarks.training_step --raw ../shared/data/Dataset027_ACDC --cases 14 \
        --device cuda --workers 0 4 --batch-sizes 8 16 32 -o training_step_cuda.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autoprompt.benchmarking.measurement import load_average, machine_info, markdown_table
from autoprompt.benchmarking.nnunet_baseline import link_raw_subset
from autoprompt.devices import resolve_device
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.files import load_json, save_json
from pipeline.training.run import train

UTILISATION_PERIOD_MS = 250


@dataclass(frozen=True)
class Setting:
    workers: int
    batch_size: int | None  # None: the plans' batch size

    @property
    def overrides(self) -> list[str]:
        size = [] if self.batch_size is None else [f"batch_size={self.batch_size}"]
        return [f"num_workers={self.workers}", *size]


def subset_dataset(raw: Path, cases: int | None, work: Path) -> Path:
    """``raw`` itself, or ``work/raw`` holding links to its first ``cases`` labelled cases (sorted by name)."""
    if cases is None:
        return raw
    ending = load_json(raw / "dataset.json")["file_ending"]
    case_ids = [label.name[: -len(ending)] for label in sorted((raw / "labelsTr").iterdir())[:cases]]
    return link_raw_subset(raw, case_ids, work / "raw", raw.name)


class UtilisationLog:
    """``nvidia-smi``'s GPU utilisation every :data:`UTILISATION_PERIOD_MS` ms, averaged over time spans."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             f"-lms={UTILISATION_PERIOD_MS}"],
            stdout=path.open("w"),
        )  # fmt: skip

    def lines(self) -> int:
        """Samples written so far (a mark for :meth:`mean_between`)."""
        return len(self.path.read_text().splitlines())

    def mean_between(self, first: int, last: int) -> float | None:
        """Mean utilisation (%) of samples ``first:last``; None without samples."""
        values = [int(v) for v in self.path.read_text().splitlines()[first:last] if v.strip().isdigit()]
        return sum(values) / len(values) if values else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def time_setting(
    setting: Setting, *, preprocessed: Path, dataset: str, results: Path, device: str, epochs: int, steps: int,
    preset: str, overrides: list[str],
) -> dict[str, object]:  # fmt: skip
    """Train ``epochs`` x ``steps`` with ``setting``; milliseconds per step of each epoch."""
    result = train(
        dataset, "all", preprocessed=preprocessed, results=results, config=preset,
        overrides=["final_validation=false", *overrides, *setting.overrides], epochs=epochs, iterations_per_epoch=steps,
        device=device,
    )  # fmt: skip
    per_step = [1000 * record["seconds"] / steps for record in result.history]
    return {
        "workers": setting.workers,
        "batch_size": setting.batch_size,
        "ms_per_step_by_epoch": [round(ms, 1) for ms in per_step],
        "ms_per_step": round(min(per_step), 1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--raw", type=Path, required=True, help="a raw nnU-Net dataset folder (DatasetXXX_Name)"
    )
    parser.add_argument(
        "--cases", type=int, default=None, help="only the first N labelled cases (default: all)"
    )
    parser.add_argument("--preset", default="2d_frozen", help="trainer preset (default: 2d_frozen)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset setting for every run (repeatable), e.g. views.count=3")  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="num_workers values (default: 0)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[0],
                        help="batch sizes, 0 = the plans' (default: 0); each is run with the first --workers")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting (default: 3)")
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch (default: 50)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("-o", "--output", type=Path, default=Path("training_step.json"), help="JSON to write")
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> list[Setting]:
    """Every ``--workers`` value at the plans' batch size, then every other batch size with the first."""
    plans_batch = [Setting(w, None) for w in args.workers]
    sized = [Setting(args.workers[0], b) for b in args.batch_sizes if b > 0]
    return plans_batch + sized


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        raw = subset_dataset(args.raw, args.cases, work)
        preprocessed = work / "preprocessed"
        plan_and_preprocess(raw, preprocessed, configurations=("2d",))
        common = {
            "preprocessed": preprocessed,
            "dataset": raw.name,
            "device": str(device),
            "preset": args.preset,
            "overrides": args.overrides,
        }
        started = time.perf_counter()
        time_setting(Setting(0, None), results=work / "warm-up", epochs=1, steps=2, **common)
        print(f"cache and views: {time.perf_counter() - started:.0f} s", flush=True)
        utilisation = UtilisationLog(work / "utilisation.txt") if device.type == "cuda" else None
        rows = []
        for index, setting in enumerate(settings_of(args)):
            first = utilisation.lines() if utilisation else 0
            row = time_setting(
                setting, results=work / f"run{index}", epochs=args.epochs, steps=args.steps, **common
            )
            if utilisation:
                row["gpu_utilisation_percent"] = utilisation.mean_between(first, utilisation.lines())
            print(json.dumps(row), flush=True)
            rows.append(row)
        if utilisation:
            utilisation.stop()
    columns = ["workers", "batch_size", "ms_per_step", "ms_per_step_by_epoch"]
    print(markdown_table(rows, columns + (["gpu_utilisation_percent"] if device.type == "cuda" else [])))
    save_json(
        {
            "command": "python -m benchmarks.training_step "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_info(device, load_average_before=load_before),
            "dataset": raw.name,
            "cases": args.cases,
            "preset": args.preset,
            "overrides": args.overrides,
            "rows": rows,
        },
        args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
