"""Latency of ``autoprompt serve`` from upload to result, and ``/api/health`` throughput while a job runs.

For each dataset (ACDC, Hippocampus) the service is started with uvicorn on 127.0.0.1 (a free port, in
a background thread), one real volume is uploaded over HTTP and polled until its result is ready; while
the job segments, a local client sends a bounded series of ``GET /api/health`` requests (``--requests``,
at most ``--health-seconds``) and their rate and latency are recorded.

Models: pass trained model folders (``--acdc-model``, ``--hippocampus-model``); without one, an
UNTRAINED model folder is built from the dataset's first 5 cases (plans from those cases, freshly
initialised prompt generator and adapters on the real LiteMedSAM backbone). Its latency is that of a
trained model of the same plans (the same network runs), its segmentation is not meaningful.

    .venv/bin/python -m benchmarks.serve_latency
    .venv/bin/python -m benchmarks.serve_latency --no-tta --datasets hippocampus
    .venv/bin/python -m benchmarks.serve_latency --acdc-model RESULTS/Dataset027_ACDC/autoprompt__2d_frozen__2d \\
        --screenshot docs/serve_screenshot.png

Writes ``benchmarks/results/serve_latency.json`` (or ``--out``) and prints a table.

``--health-load`` measures issue #20's goal instead: the real server (``autoprompt serve`` in its own
process, the ACDC model as above) first gets two cost bombs at once (a ``.nii.gz`` decompression bomb of
1024 x 1024 x 600 zero voxels, and a valid volume sized just under the case limits, which is accepted and
so is the first job to run), then, as soon as both are answered, 20 simultaneous uploads of the ACDC
volume, while ``/api/health`` is polled every 20 ms for ``--load-seconds``. The same polling on the idle
server for ``--baseline-seconds`` before that is the machine's own reference. It records the health
latencies (median = p50, p95, max, against 100 ms), every upload's HTTP answer, what became of the bombs,
the peak memory of the server and its job worker process against their bound (their resident memory with
the model loaded plus ``--max-case-memory-gb`` per worker) and the wall time::

    nice -n 19 .venv/bin/python -m benchmarks.serve_latency --health-load --no-tta

Writes ``benchmarks/results/serve_health_load_cpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import nibabel
import numpy as np
import uvicorn

from autoprompt.allocator import retain_freed_memory
from autoprompt.modeling.config import ModelConfig
from autoprompt.serve import ServeSettings, create_app
from pipeline.checkpoint import save_checkpoint
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.files import atomic_path, save_json
from pipeline.inference.case_cost import CaseCost, estimate_case_cost
from pipeline.io import Geometry, ImageInfo, write_image
from pipeline.model_folder import ModelFolder
from pipeline.trainer_config import TrainerConfig

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"
DATASETS = {  # name -> (dataset folder, case uploaded)
    "acdc": ("Dataset027_ACDC", "patient002_frame01"),
    "hippocampus": ("Dataset004_Hippocampus", "hippocampus_001"),
}
POLL_S = 0.1
HEALTH_GOAL_MS = 100.0
"""Issue #20: ``/api/health`` answers within this (p95 and max) under hostile load."""
HEALTH_INTERVAL_S = 0.02
"""``--health-load``: time between the starts of two health requests."""
UPLOADS = 20


def untrained_model(dataset: Path, work: Path, *, backbone: str, cases: int = 5) -> Path:
    """A 2d model folder planned on the first ``cases`` cases of ``dataset``, fold 0 freshly initialised."""
    raw = work / "raw" / dataset.name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    case_ids = sorted(p.name.removesuffix(".nii.gz") for p in (dataset / "labelsTr").glob("*.nii.gz"))[:cases]
    for case in case_ids:
        shutil.copy(dataset / "imagesTr" / f"{case}_0000.nii.gz", raw / "imagesTr")
        shutil.copy(dataset / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr")
    dataset_json = json.loads((dataset / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**dataset_json, "numTraining": len(case_ids)}))
    preprocessed = plan_and_preprocess(raw, work / "preprocessed", configurations=("2d",), num_processes=1)
    folder = ModelFolder.create(
        work / "results" / dataset.name / "autoprompt__untrained__2d",
        plans_file=preprocessed / "plans.json",
        dataset_json_file=preprocessed / "dataset.json",
        fingerprint_file=preprocessed / "fingerprint.json",
        trainer_config=TrainerConfig(model=ModelConfig(backbone=backbone)),
        configuration="2d",
    )
    model = folder.build_model(device="cpu")
    metadata = {"backbone": backbone, "backbone_checksum": model.backbone.checksum}
    save_checkpoint(
        {"model": model.trainable_state_dict(), "metadata": metadata},
        folder.fold_dir(0) / "checkpoint_best.pt",
    )
    return folder.path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux ``/proc/PID/task/TID/children``)."""
    tree, index = [pid], 0
    while index < len(tree):
        for children in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            try:
                tree += [int(child) for child in children.read_text().split()]
            except FileNotFoundError:
                pass
        index += 1
    return tree


class Server:
    """uvicorn running an app on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, settings: ServeSettings) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def health_load(
    client: httpx.Client,
    *,
    requests: int | None = None,
    seconds: float,
    interval: float = 0.0,
    stop: threading.Event | None = None,
) -> dict:
    """Send ``GET /api/health`` one after another; rate, latencies, failures and the 10 slowest requests
    (``[seconds after the start, ms]``).

    Args:
        client: a client of the service.
        requests: stop after this many answers (None: no count limit).
        seconds: stop after this long.
        interval: time between the starts of two requests (0: back to back).
        stop: stop when this is set.
    """
    latencies, offsets, failures = [], [], 0
    start = time.perf_counter()
    while (
        (requests is None or len(latencies) < requests)
        and time.perf_counter() - start < seconds
        and not (stop is not None and stop.is_set())
    ):
        sent = time.perf_counter()
        offsets.append(sent - start)
        try:
            client.get("/api/health").raise_for_status()
        except httpx.HTTPError:  # a refused or timed-out request counts with the time it took
            failures += 1
        latencies.append(time.perf_counter() - sent)
        if interval:
            time.sleep(max(0.0, start + len(latencies) * interval - time.perf_counter()))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "failed": failures,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms_median": round(1000 * statistics.median(ordered), 2),
        "latency_ms_p95": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 2),
        "latency_ms_max": round(1000 * ordered[-1], 2),
        "slowest": [
            [round(offsets[i], 2), round(1000 * latencies[i], 1)]
            for i in sorted(range(len(latencies)), key=latencies.__getitem__)[-10:]
        ],
    }


def measure(name: str, model_dir: Path, scan: Path, work: Path, args: argparse.Namespace) -> dict:
    """Start the service, upload ``scan``, load ``/api/health`` while it runs, wait for the result."""
    settings = ServeSettings(
        model_dir=model_dir, data_dir=work / f"jobs_{name}", tta=False if args.no_tta else None, device="cpu"
    )
    with Server(settings) as server, httpx.Client(base_url=server.url, timeout=600) as client:
        started = time.perf_counter()
        while client.get("/api/health").json()["model"] == "loading":
            time.sleep(POLL_S)
        load_s = time.perf_counter() - started
        idle = health_load(client, requests=args.requests, seconds=args.health_seconds)

        sent = time.perf_counter()
        job = client.post("/api/jobs", files={"file": (scan.name, scan.read_bytes())})
        job.raise_for_status()
        job_id = job.json()["id"]
        upload_s = time.perf_counter() - sent
        status = client.get(f"/api/jobs/{job_id}").json()
        while status["stage"] != "segmenting" and status["state"] not in ("done", "failed"):
            time.sleep(POLL_S)
            status = client.get(f"/api/jobs/{job_id}").json()
        busy = health_load(client, requests=args.requests, seconds=args.health_seconds)
        busy["job_still_running_after"] = client.get(f"/api/jobs/{job_id}").json()["state"] == "running"
        while status["state"] not in ("done", "failed"):
            time.sleep(POLL_S)
            status = client.get(f"/api/jobs/{job_id}").json()
        latency_s = time.perf_counter() - sent
        if status["state"] != "done":
            raise RuntimeError(f"{name}: job failed: {status['error']}")
        if args.screenshot and name == args.screenshot_dataset:
            screenshot(server.url, job_id, status["result"], args.screenshot)
        info = client.get("/api/model").json()
    return {
        "dataset": info["dataset"],
        "model_folder": str(model_dir),
        "backbone": info["backbone"],
        "folds": info["folds"],
        "tta": info["tta"],
        "scan": scan.name,
        "scan_shape": status["result"]["shape"],
        "scan_mb": round(scan.stat().st_size / 2**20, 2),
        "model_load_s": round(load_s, 2),
        "upload_s": round(upload_s, 3),
        "upload_to_result_s": round(latency_s, 2),
        "job_seconds_server": status["result"]["seconds"],
        "health_idle": idle,
        "health_during_job": busy,
    }


def zero_bomb(path: Path, size_xyz: tuple[int, int, int] = (1024, 1024, 600)) -> Path:
    """A ``.nii.gz`` decompression bomb: ``size_xyz`` uint8 zero voxels (issue #20's), streamed, about 0.6 MB."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(size_xyz)
    header.set_data_dtype(np.uint8)
    header.set_zooms((1.0, 1.0, 1.0))
    header["magic"] = b"n+1"
    header["vox_offset"] = 352
    plane = bytes(size_xyz[0] * size_xyz[1])
    with atomic_path(path) as tmp, gzip.open(tmp, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4)
        for _ in range(size_xyz[2]):
            stream.write(plane)
    return path


def near_limit_volume(
    path: Path, model_dir: Path, *, tta: bool, max_memory_gb: float, max_windows: int, fill: float = 0.9
) -> dict:
    """A valid int16 volume of 512 x 512 slices at the plans' in-plane spacing, with as many slices as keep
    its estimated cost within ``fill`` of both case limits; returns that estimate."""
    plans = ModelFolder(model_dir).plans
    configuration = ModelFolder(model_dir).configuration
    rows_mm, cols_mm = plans.configuration(configuration).target_spacing[1:]

    def geometry(slices: int) -> Geometry:
        return Geometry(
            spacing=(cols_mm, rows_mm, 10.0),
            origin=(0.0, 0.0, 0.0),
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
            size=(512, 512, slices),
        )

    def cost(slices: int) -> CaseCost:
        info = ImageInfo(geometry=geometry(slices), components=1, itemsize=2)
        return estimate_case_cost([info], plans, configuration, tta=tta)

    def fits(estimate: CaseCost) -> bool:
        return estimate.memory_gb <= fill * max_memory_gb and estimate.windows <= fill * max_windows

    slices = 1
    while fits(cost(slices + 1)):
        slices += 1
    pattern = (np.add.outer(np.arange(512), np.arange(512)) % 256).astype(np.int16)
    volume = pattern[None] + (np.arange(slices, dtype=np.int16) % 50)[:, None, None]
    write_image(volume, geometry(slices), path)
    return cost(slices).to_dict()


class ServeProcess:
    """``autoprompt serve`` in a process of its own on 127.0.0.1 and a free port, until the model is loaded.

    Args:
        options: further ``autoprompt serve`` options (model folder, data folder, limits).
        log: the server's output.
    """

    def __init__(self, options: list[str], log: Path) -> None:
        self.port = free_port()
        self.command = [sys.executable, "-m", "autoprompt", "serve", "--port", str(self.port), *options]
        self.log_path = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServeProcess:
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_until_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_until_ready(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"autoprompt serve stopped: {self.log_path.read_text()[-2000:]}")
                try:
                    model = client.get("/api/health").json()["model"]
                except httpx.HTTPError:
                    model = "starting"
                if model == "failed":
                    raise RuntimeError(f"the model did not load: {self.log_path.read_text()[-2000:]}")
                if model == "ready":
                    return
                time.sleep(POLL_S)

    def memory_gb(self) -> dict:
        """Resident memory of the server and its job worker processes, in GiB: ``rss`` now (``VmRSS``
        summed) and ``peak_rss``, the sum of each process's peak so far (``VmHWM``), which bounds the
        peak of the sum from above."""
        total = {"VmRSS": 0, "VmHWM": 0}
        for pid in _process_tree(self.process.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
            except FileNotFoundError:  # ended meanwhile
                continue
            for line in status:
                if line.split(":")[0] in total:
                    total[line.split(":")[0]] += int(line.split()[1])
        return {"rss": round(total["VmRSS"] / 2**20, 3), "peak_rss": round(total["VmHWM"] / 2**20, 3)}

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGINT)  # uvicorn's graceful stop
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def post_scan(url: str, name: str, body: bytes, outcome: dict) -> None:
    """Upload ``body`` as ``name`` to ``POST /api/jobs`` and fill ``outcome`` with the answer."""
    sent = time.perf_counter()
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            response = client.post("/api/jobs", files={"file": (name, body)})
    except httpx.HTTPError as error:
        outcome.update(status=None, error=f"{type(error).__name__}: {error}")
        return
    try:
        answer = response.json()
    except ValueError:  # not JSON: keep the start of the text
        answer = {"detail": response.text[:200]}
    outcome.update(
        status=response.status_code,
        seconds=round(time.perf_counter() - sent, 3),
        job_id=answer.get("id"),
        detail=answer.get("detail"),
        retry_after=response.headers.get("retry-after"),
    )


def _poll_health_in_process(url: str, interval: float, stop, results) -> None:
    """The health polling of :func:`hostile_load`, in a process of its own: the 22 upload threads of the
    measuring process would otherwise delay its polls (one GIL) and count as the server's latency. The
    objects it inherits from the measuring process are frozen out of its garbage collector, whose full
    collections over them would pause the poller itself."""
    gc.freeze()
    with httpx.Client(base_url=url, timeout=10) as client:
        results.put(health_load(client, seconds=1e9, interval=interval, stop=stop))


def hostile_load(model_dir: Path, scan: Path, work: Path, args: argparse.Namespace) -> dict:
    """Issue #20's goal: health latency while 20 uploads and two cost bombs arrive at once (see the module)."""
    started = time.perf_counter()
    load_before = [round(value, 2) for value in os.getloadavg()]
    options = [
        "--model-dir", str(model_dir), "--data-dir", str(work / "jobs"), "--device", "cpu",
        "--max-case-memory-gb", str(args.max_case_memory_gb), "--max-case-windows", str(args.max_case_windows),
        "--workers", "1", *(["--no-tta"] if args.no_tta else []),
    ]  # fmt: skip
    with (
        ServeProcess(options, work / "serve.log") as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        info = client.get("/api/model").json()
        ready = server.memory_gb()
        bombs = {
            "decompression": {"path": zero_bomb(work / "zeros.nii.gz")},
            "near_limit": {"path": work / "near_limit.nii.gz"},
        }
        bombs["near_limit"]["estimated_cost"] = near_limit_volume(
            bombs["near_limit"]["path"],
            model_dir,
            tta=info["tta"],
            max_memory_gb=args.max_case_memory_gb,
            max_windows=args.max_case_windows,
        )
        for bomb in bombs.values():
            bomb["file_mb"] = round(bomb["path"].stat().st_size / 2**20, 3)
        uploads = [{"index": index} for index in range(UPLOADS)]
        idle = health_load(client, seconds=args.baseline_seconds, interval=HEALTH_INTERVAL_S)
        processes = multiprocessing.get_context("fork")
        stop, results = processes.Event(), processes.Queue()
        poller = processes.Process(
            target=_poll_health_in_process, args=(server.url, HEALTH_INTERVAL_S, stop, results)
        )
        poller.start()
        fired = time.perf_counter()
        senders = [
            threading.Thread(
                target=post_scan, args=(server.url, bomb["path"].name, bomb["path"].read_bytes(), bomb)
            )
            for bomb in bombs.values()
        ]
        for sender in senders:
            sender.start()
        for sender in senders:  # the near-limit bomb is then the first job in the queue
            sender.join()
        body = scan.read_bytes()
        uploaders = [
            threading.Thread(target=post_scan, args=(server.url, scan.name, body, outcome))
            for outcome in uploads
        ]
        for thread in uploaders:
            thread.start()
        for thread in uploaders:
            thread.join()
        answered_s = time.perf_counter() - fired
        time.sleep(max(0.0, args.load_seconds - answered_s))
        stop.set()
        health = results.get(timeout=60)
        poller.join()
        with httpx.Client(base_url=server.url, timeout=60) as jobs_client:
            for outcome in [*uploads, *bombs.values()]:
                if outcome.get("job_id"):
                    status = jobs_client.get(f"/api/jobs/{outcome['job_id']}").json()
                    outcome["job_at_end"] = {
                        key: status[key] for key in ("state", "stage", "progress", "error")
                    }
        memory = server.memory_gb()
    statuses: dict[str, int] = {}
    for outcome in uploads:
        statuses[str(outcome["status"])] = statuses.get(str(outcome["status"]), 0) + 1
    for bomb in bombs.values():
        bomb["path"] = bomb["path"].name
        if bomb.get("status") == 201:
            bomb["outcome"] = "accepted: its estimated cost is within the limits (bounded)"
        elif bomb.get("status") == 422:
            bomb["outcome"] = "rejected at upload from its header (422)"
        else:
            bomb["outcome"] = f"answered {bomb.get('status')}"
    bound = ready["rss"] + args.max_case_memory_gb  # one worker process
    health["goal_ms"] = HEALTH_GOAL_MS
    health["goal_met"] = (
        health["latency_ms_p95"] < HEALTH_GOAL_MS and health["latency_ms_max"] < HEALTH_GOAL_MS
    )
    return {
        "cpus": os.cpu_count(),
        "nice": os.nice(0),
        "load_average_before": load_before,
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "model": {key: info[key] for key in ("dataset", "model_folder", "backbone", "folds", "tta")},
        "limits": {
            key: info[key]
            for key in (
                "max_upload_mb",
                "max_case_memory_gb",
                "max_case_windows",
                "max_queued_jobs",
                "max_jobs_disk_gb",
            )
        },
        "scan": {"name": scan.name, "mb": round(scan.stat().st_size / 2**20, 3)},
        "load_seconds": args.load_seconds,
        "all_answered_after_s": round(answered_s, 3),
        "health_idle_before": idle,
        "health": health,
        "uploads_by_status": statuses,
        "uploads": uploads,
        "bombs": bombs,
        "memory_gb": {
            "rss_model_loaded": ready["rss"],
            "peak_rss": memory["peak_rss"],
            "bound": round(bound, 3),
            "bound_rule": "resident memory of the server and its worker process with the model loaded + max_case_memory_gb (one worker)",
            "within_bound": memory["peak_rss"] <= bound,
        },
        "wall_s": round(time.perf_counter() - started, 2),
    }


def screenshot(url: str, job_id: str, result: dict, path: Path) -> None:
    """The result page of ``job_id`` in headless Chromium, at the middle slice."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.goto(f"{url}/?job={job_id}")
        page.wait_for_selector("#result-panel:not([hidden])", timeout=120_000)
        page.fill("#slice-slider", str(result["shape"][0] // 2))
        page.wait_for_function(
            "() => { const i = document.getElementById('slice-image'); return i.complete && i.naturalWidth > 0; }"
        )
        with atomic_path(path) as tmp:
            page.screenshot(path=str(tmp), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--acdc-model", type=Path, help="trained ACDC model folder (default: build an untrained one)"
    )
    parser.add_argument("--hippocampus-model", type=Path, help="trained Hippocampus model folder")
    parser.add_argument(
        "--backbone", default="litemedsam", help="backbone of untrained models (default: litemedsam)"
    )
    parser.add_argument("--no-tta", action="store_true", help="serve without mirroring TTA")
    parser.add_argument(
        "--requests", type=int, default=200, help="health requests per load phase (default: 200)"
    )
    parser.add_argument(
        "--health-seconds", type=float, default=20.0, help="time limit of a load phase (default: 20)"
    )
    parser.add_argument(
        "--screenshot", type=Path, help="write the result page of one dataset's job here (PNG)"
    )
    parser.add_argument("--screenshot-dataset", default="acdc", choices=list(DATASETS))
    parser.add_argument(
        "--health-load",
        action="store_true",
        help="measure /api/health under 20 simultaneous uploads and two cost bombs (issue #20) instead",
    )
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=120.0,
        help="--health-load: poll this long from the first upload (default: 120)",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=30.0,
        help="--health-load: poll the idle server this long first, as the machine's reference (default: 30)",
    )
    parser.add_argument(
        "--max-case-memory-gb",
        type=float,
        default=2.0,
        help="--health-load: the server's case memory limit, which sizes the near-limit bomb (default: 2)",
    )
    parser.add_argument(
        "--max-case-windows",
        type=int,
        default=2000,
        help="--health-load: the server's case window limit (default: 2000)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON to write (default: benchmarks/results/serve_latency.json, with --health-load "
        "serve_health_load_cpu.json)",
    )
    args = parser.parse_args()
    retain_freed_memory()  # as the autoprompt command does
    if args.health_load:
        run_health_load(args)
        return
    args.out = args.out or REPO / "benchmarks" / "results" / "serve_latency.json"

    rows = []
    with tempfile.TemporaryDirectory(prefix="autoprompt_serve_bench_") as tmp:
        work = Path(tmp)
        for name in args.datasets:
            folder_name, case = DATASETS[name]
            dataset = SHARED / folder_name
            model_dir = getattr(args, f"{name}_model") or untrained_model(
                dataset, work / name, backbone=args.backbone
            )
            row = measure(name, Path(model_dir), dataset / "imagesTr" / f"{case}_0000.nii.gz", work, args)
            row["trained"] = bool(getattr(args, f"{name}_model"))
            row["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
            rows.append(row)
            save_json({"cpus": os.cpu_count(), "runs": rows}, args.out)  # after each dataset
    header = f"{'dataset':<24}{'shape':>14}{'tta':>6}{'load s':>8}{'upload->result s':>18}{'health rps idle':>17}{'health rps busy':>17}{'busy p95 ms':>12}"
    print(header)
    for row in rows:
        print(
            f"{row['dataset']:<24}{'x'.join(map(str, row['scan_shape'])):>14}{str(row['tta']):>6}"
            f"{row['model_load_s']:>8}{row['upload_to_result_s']:>18}{row['health_idle']['requests_per_second']:>17}"
            f"{row['health_during_job']['requests_per_second']:>17}{row['health_during_job']['latency_ms_p95']:>12}"
        )
    print(f"written: {args.out}")


def run_health_load(args: argparse.Namespace) -> None:
    """``--health-load``: build (or take) the ACDC model, run :func:`hostile_load`, write and print the result."""
    out = args.out or REPO / "benchmarks" / "results" / "serve_health_load_cpu.json"
    folder_name, case = DATASETS["acdc"]
    dataset = SHARED / folder_name
    with tempfile.TemporaryDirectory(prefix="autoprompt_serve_health_") as tmp:
        work = Path(tmp)
        model_dir = args.acdc_model or untrained_model(dataset, work / "acdc", backbone=args.backbone)
        result = hostile_load(Path(model_dir), dataset / "imagesTr" / f"{case}_0000.nii.gz", work, args)
    result["trained"] = bool(args.acdc_model)
    result["command"] = " ".join(["python -m benchmarks.serve_latency", *sys.argv[1:]])
    save_json(result, out)
    health = result["health"]
    print(
        f"/api/health: {health['requests']} polls, median {health['latency_ms_median']} ms, "
        f"p95 {health['latency_ms_p95']} ms, max {health['latency_ms_max']} ms "
        f"(goal < {HEALTH_GOAL_MS:g} ms: {'met' if health['goal_met'] else 'MISSED'})"
    )
    print(f"uploads by HTTP status: {result['uploads_by_status']}")
    for name, bomb in result["bombs"].items():
        print(f"bomb {name} ({bomb['file_mb']} MB): {bomb['outcome']}")
    memory = result["memory_gb"]
    print(
        f"server + worker peak RSS {memory['peak_rss']} GiB, bound {memory['bound']} GiB; wall {result['wall_s']} s"
    )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
