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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from autoprompt.allocator import retain_freed_memory
from autoprompt.modeling.config import ModelConfig
from autoprompt.serve import ServeSettings, create_app
from pipeline.checkpoint import save_checkpoint
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.files import atomic_path, save_json
from pipeline.model_folder import ModelFolder
from pipeline.trainer_config import TrainerConfig

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"
DATASETS = {  # name -> (dataset folder, case uploaded)
    "acdc": ("Dataset027_ACDC", "patient002_frame01"),
    "hippocampus": ("Dataset004_Hippocampus", "hippocampus_001"),
}
POLL_S = 0.1


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


class Server:
    """uvicorn running an app on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, settings: ServeSettings) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
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


def health_load(client: httpx.Client, *, requests: int, seconds: float) -> dict:
    """Send up to ``requests`` sequential ``GET /api/health`` (at most ``seconds``); rate and latencies."""
    latencies = []
    start = time.perf_counter()
    while len(latencies) < requests and time.perf_counter() - start < seconds:
        sent = time.perf_counter()
        client.get("/api/health").raise_for_status()
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms_median": round(1000 * statistics.median(ordered), 2),
        "latency_ms_p95": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 2),
        "latency_ms_max": round(1000 * ordered[-1], 2),
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
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_latency.json")
    args = parser.parse_args()
    retain_freed_memory()  # as the autoprompt command does

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


if __name__ == "__main__":
    main()
