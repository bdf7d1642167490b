"""Time and peak memory of ``autoprompt plan-and-preprocess`` on the real datasets, and the plans chosen.

Each dataset is planned and preprocessed from scratch into a temporary folder by the real command (a
subprocess). Memory: the largest single process (``ru_maxrss`` from ``wait4``) and the peak
sum over the command's process tree (sampled from /proc every 0.1 s, so it may miss short spikes).

    .venv/bin/python -m benchmarks.plan_and_preprocess                    # ACDC and Hippocampus, -np 2
    .venv/bin/python -m benchmarks.plan_and_preprocess -d Dataset004_Hippocampus -o plan_bench.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline.dataset import ACDC_GROUP_REGEX
from pipeline.files import save_json
from planners.plans import Plans

REPO = Path(__file__).resolve().parents[1]

DATASETS = {"Dataset027_ACDC": ACDC_GROUP_REGEX, "Dataset004_Hippocampus": None}


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (Linux /proc)."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        frontier = [pid for pid in children if pid not in tree]
        tree.update(frontier)
    return sum(rss.get(pid, 0) for pid in tree)


def run_one(name: str, group_regex: str | None, *, data_root: Path, num_processes: int) -> dict:
    """Plan and preprocess one dataset from scratch; return timings, memory and the chosen plans."""
    with tempfile.TemporaryDirectory(prefix="autoprompt_bench_") as tmp:
        command = [
            sys.executable,
            "-m",
            "autoprompt",
            "plan-and-preprocess",
            "-d",
            name,
            "-np",
            str(num_processes),
        ]
        command += ["--raw", str(data_root), "--preprocessed", tmp]
        command += ["--group-regex", group_regex] if group_regex else []
        start = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss_bytes(process.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # rusage of this command's process tree alone
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        if process.returncode != 0:
            raise SystemExit(f"{name}: plan-and-preprocess exited {process.returncode}\n{output}")
        folder = Path(tmp) / name
        plans = Plans.load(folder / "plans.json")
        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    plan = plans.configuration("2d")
    return {
        "dataset": name,
        "seconds": round(seconds, 1),
        "max_process_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_tree_rss_mib": round(peak[0] / 2**20, 1),
        "preprocessed_mib": round(disk / 2**20, 1),
        "slice_axis": plan.slice_axis,
        "target_spacing": [round(s, 4) for s in plan.target_spacing],
        "inplane_rule": plan.inplane_rule,
        "median_shape": plan.median_shape,
        "stack_depth": {k: c.stack_depth for k, c in plans.configurations.items()},
        "batch_size": {k: c.batch_size for k, c in plans.configurations.items()},
        "cache_embeddings": plan.cache_embeddings,
        "estimated_cache_gib": plan.estimated_cache_gib,
        "normalization": [f"{n.scheme} {n.lower:g}..{n.upper:g}" for n in plans.normalization],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-d", "--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    rows = [
        run_one(name, DATASETS[name], data_root=args.data_root, num_processes=args.num_processes)
        for name in args.datasets
    ]
    columns = ["dataset", "seconds", "max_process_rss_mib", "peak_tree_rss_mib", "preprocessed_mib"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    for row in rows:
        print(f"{row['dataset']}: " + ", ".join(f"{k}={row[k]}" for k in list(row)[len(columns) :]))
    if args.output:
        save_json(rows, args.output)


if __name__ == "__main__":
    main()
