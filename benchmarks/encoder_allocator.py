"""LiteMedSAM encoder seconds per slice with glibc's default malloc thresholds and with autoprompt's.

``autoprompt.allocator.retain_freed_memory`` (called by the ``autoprompt`` command) raises glibc's mmap
and trim thresholds so that freed tensor buffers are reused instead of unmapped. mallopt cannot be
undone in a process, so every setting runs in its own child process: fp32 and bf16 autocast, the
batch sizes given, default and raised thresholds. Each child times ``--repeats`` encoder calls after
one warm-up on random 256 x 256 windows and reports seconds per slice, user and system CPU seconds and
minor page faults of the timed calls.

    .venv/bin/python -m benchmarks.encoder_allocator                  # CPU, prints a table, writes JSON
    .venv/bin/python -m benchmarks.encoder_allocator --batch-sizes 1 --repeats 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.files import save_json

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import torch
from autoprompt.allocator import retain_freed_memory
from autoprompt.cli import silence_dependency_warnings
from autoprompt.modeling.backbone import load_backbone
tuned, precision, batch, repeats = sys.argv[1] == "raised", sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
applied = retain_freed_memory() if tuned else False
silence_dependency_warnings()
backbone = load_backbone("litemedsam")
windows = torch.rand(batch, 3, 256, 256)
def encode():
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        backbone.encode(windows)
encode()
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(repeats):
    encode()
seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"thresholds": "raised" if applied else "glibc default", "precision": precision, "batch": batch,
                  "seconds_per_slice": seconds / repeats / batch, "user_s": after.ru_utime - before.ru_utime,
                  "system_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}))
"""


def measure(thresholds: str, precision: str, batch: int, repeats: int) -> dict:
    """One child process's row (see :data:`CHILD`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", CHILD, thresholds, precision, str(batch), str(repeats)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=4, help="timed calls after one warm-up (default: 4)")
    parser.add_argument(
        "-o", "--output", type=Path, default=REPO / "benchmarks" / "results" / "encoder_allocator.json"
    )
    args = parser.parse_args(argv)

    rows = []
    print("| precision | batch | malloc thresholds | s / slice | user s | system s | minor faults |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        for batch in args.batch_sizes:
            for thresholds in ("default", "raised"):
                row = measure(thresholds, precision, batch, args.repeats)
                rows.append(row)
                print(
                    f"| {precision} | {batch} | {row['thresholds']} | {row['seconds_per_slice']:.2f} | "
                    f"{row['user_s']:.1f} | {row['system_s']:.1f} | {row['minor_faults']:,} |",
                    flush=True,
                )
    save_json({"cpu_count": os.cpu_count(), "repeats": args.repeats, "rows": rows}, args.output)
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
